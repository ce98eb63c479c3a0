"""Prepare MovieLens-1M (GroupLens release) in the CoLLM interaction format.

The result has CoLLM's file layout and columns, but it is a split of its own:
CoLLM's published ``ml-1m.zip`` covers a time window of the release that this
script approximates with ``--since``, without claiming to reproduce it. To
compare with the paper, use their published files.

A checkout's entry point for ``collm-prepare ml1m``: the code lives in
``collm_faissret/data_prep/ml1m.py``; ``--help`` lists the options.
"""
import sys
from pathlib import Path

# Run as `python dataset/prepare_ml1m.py`, sys.path holds dataset/, not the repo root.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from collm_faissret.data_prep.ml1m import main  # noqa: E402  (needs the path set above)

if __name__ == "__main__":
    sys.exit(main())
