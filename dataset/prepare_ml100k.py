"""Prepare MovieLens-100K in the CoLLM interaction format.

A checkout's entry point for ``collm-prepare ml100k``: the code lives in
``collm_faissret/data_prep/ml100k.py``; ``--help`` lists the options.
"""
import sys
from pathlib import Path

# Run as `python dataset/prepare_ml100k.py`, sys.path holds dataset/, not the repo root.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from collm_faissret.data_prep.ml100k import main  # noqa: E402  (needs the path set above)

if __name__ == "__main__":
    sys.exit(main())
