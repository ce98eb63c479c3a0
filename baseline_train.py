"""Train a CF baseline: ``python baseline_train.py --cfg-path CONFIG`` (= ``collm-baseline``; see --help)."""
import sys

from collm_faissret.entry import baseline_main as main

if __name__ == "__main__":
    sys.exit(main())
