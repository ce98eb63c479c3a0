"""Train or evaluate CoLLM: ``python train_collm.py --cfg-path CONFIG`` (= ``collm-train``; see --help)."""
import sys

from collm_faissret.entry import train_main as main

if __name__ == "__main__":
    sys.exit(main())
