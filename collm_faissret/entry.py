"""Entry points of the console scripts ``collm-train`` and ``collm-baseline``.

The repository's ``train_collm.py`` and ``baseline_train.py`` call these same
functions, so a checkout and an installed package run one implementation.
Each returns the process exit code.
"""
import os

from .cli import parse_args, run_main

TRAIN_DOC = """Train or evaluate CoLLM (stage 1: LoRA on a text prompt; stage 2: FECE projector
on a prompt with <UserID>/<TargetItemID>).

  collm-train --cfg-path train_configs/collm_stage1_ml1m.yaml      (or: python train_collm.py ...)
  torchrun --nproc-per-node 2 train_collm.py --cfg-path ... --options run.batch_size_train=4
"""

BASELINE_DOC = """Train a collaborative model (model.arch: MF, LightGCN, SASRec, DIN) on CoLLM data.

Writes the usual run directory plus ``cf_model.pth``: the best-validation
weights that stage 2 loads through ``model.rec_config.pretrained_path``. With
run.oof_folds=K also oof_logits.csv: every training row's logit from one of K
more models trained without it (for a hybrid score's datasets.*.cf_logits).

  collm-baseline --cfg-path train_configs/baseline_mf_ml1m.yaml    (or: python baseline_train.py ...)
"""


def save_cf_weights(runner, result):
    """Best-validation weights (the runner has loaded them) in the file stage 2 reads."""
    # Deferred: they load torch, and ``--help`` stays instant (see cli.py).
    from . import dist
    from .checkpoint import save_atomic
    from .config import to_yaml

    if runner.cfg.run.evaluate or not dist.is_main():
        return
    path = os.path.join(runner.out, "cf_model.pth")
    save_atomic(runner.model.weights_payload(to_yaml(runner.cfg)), path)


def after_baseline(runner, result):
    """The baseline's weight file, then its out-of-fold logits when run.oof_folds asks."""
    from .oof import write_out_of_fold  # deferred, as above

    save_cf_weights(runner, result)
    write_out_of_fold(runner, result)


def train_main(argv=None) -> int:
    """``collm-train`` / ``python train_collm.py``."""
    return run_main(parse_args(TRAIN_DOC, argv))


def baseline_main(argv=None) -> int:
    """``collm-baseline`` / ``python baseline_train.py``: the CF task, plus ``cf_model.pth``."""
    return run_main(parse_args(BASELINE_DOC, argv), forced_options=["run.task=cf_rec"], after=after_baseline)
