"""Train a collaborative model (model.arch: MF, LightGCN, SASRec, DIN) on CoLLM data.

Writes the usual run directory plus ``cf_model.pth``: the best-validation
weights that stage 2 loads through ``model.rec_config.pretrained_path``.

  python baseline_train.py --cfg-path train_configs/baseline_mf_ml1m.yaml
"""
import os
import sys

from collm_faissret.cli import parse_args, run_main


def save_weights(runner, result):
    """Best-validation weights (the runner has loaded them) in the file stage 2 reads."""
    from collm_faissret import dist
    from collm_faissret.checkpoint import save_atomic
    from collm_faissret.config import to_yaml

    if runner.cfg.run.evaluate or not dist.is_main():
        return
    path = os.path.join(runner.out, "cf_model.pth")
    save_atomic(runner.model.weights_payload(to_yaml(runner.cfg)), path)


def main(argv=None) -> int:
    return run_main(parse_args(__doc__, argv), forced_options=["run.task=cf_rec"], after=save_weights)


if __name__ == "__main__":
    sys.exit(main())
