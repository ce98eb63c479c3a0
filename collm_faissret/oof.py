"""Out-of-fold CF logits: ``baseline_train.py ... --options run.oof_folds=K``.

After the baseline itself (its ``cf_model.pth`` as usual), K more models of the same config,
each trained without one fold of the training split (``fold_of``: seeded by
``datasets.*.sample_seed``) and early-stopped on the same validation split, score the fold they
did not see. ``oof_logits.csv`` (datasets/cf_logits.py) then holds a logit for every training row
from a model that never trained on it, which ``datasets.*.cf_logits`` feeds to a hybrid score;
the log compares their AUC with the baseline's own (in-sample) AUC on the same rows. Each fold
model's run directory is ``<output_dir>/oof/fold<k>``.
"""
import copy
import json
import logging
import os

import numpy as np
from omegaconf import OmegaConf

from . import dist, registry
from .datasets.cf_logits import OOF_FILE, OOF_META, file_sha256, fold_of, oof_frame
from .metrics import auc
from .runners.run_files import json_safe, setup_logging, write_atomic

log = logging.getLogger("collm_faissret")


def fold_task(task, cfg, keep: np.ndarray):
    """A task of ``task``'s class on ``cfg`` whose training split is the rows ``keep`` [N] bool of
    the whole one (sizes, and the other splits, as loaded)."""
    class WithoutFold(type(task)):
        def load_data(self):
            data = super().load_data()
            data.splits = dict(data.splits, train=data.splits["train"][keep].reset_index(drop=True))
            return data

    return WithoutFold(cfg)


def fold_config(cfg, out: str):
    """``cfg`` for one fold model: its own output directory, no folds of its own, no resume, no test."""
    c = copy.deepcopy(cfg)
    OmegaConf.set_readonly(c, False)
    c.run.output_dir, c.run.oof_folds, c.run.resume_ckpt_path, c.run.test_splits = out, 0, None, []
    OmegaConf.set_readonly(c, True)
    return c


def score_rows(runner, df, name: str) -> np.ndarray:
    """[len(df)] logits of ``df``'s rows by the runner's model as it is now (its scoring view)."""
    runner.datasets[name] = runner.task.rows(df, name, runner.model)
    _, rows, scores = runner.evaluate(name)
    out = np.full(len(df), np.nan)
    out[rows] = scores
    return out


def write_out_of_fold(runner, result) -> None:
    """``after`` hook of baseline_train.py: with run.oof_folds K > 0, train the K fold models
    and write ``oof_logits.csv`` and ``oof_logits.json`` (AUC in and out of fold, the hash of the
    run's cf_model.pth) into the run."""
    cfg = runner.cfg
    folds = cfg.run.oof_folds
    if not folds:  # (validate.check_out_of_fold refuses it with run.evaluate)
        return
    train = runner.task.data.splits["train"]
    seed = next(iter(cfg.datasets.values())).sample_seed
    fold = fold_of(len(train), folds, seed)
    in_sample = score_rows(runner, train, "train (in sample)")
    logits, valid_auc = np.full(len(train), np.nan), []
    try:
        for k in range(folds):
            setup_logging(runner.out)  # each fold run logs into its own directory; this line into the run's
            out = os.path.join(runner.out, "oof", f"fold{k}")
            task = fold_task(runner.task, fold_config(cfg, out), fold != k)
            fold_runner = registry.get("runner", cfg.run.runner)(task.cfg, task, runner.device)
            log.info("out of fold %d/%d: training without %d of %d training rows, in %s", k + 1, folds,
                     int((fold == k).sum()), len(train), out)
            fold_result = fold_runner.run()
            valid_auc.append(fold_result.get("best_valid_auc"))
            logits[fold == k] = score_rows(fold_runner, train[fold == k].reset_index(drop=True), "held-out fold")
    finally:
        setup_logging(runner.out)
    labels = train["label"].to_numpy()
    summary = {"folds": folds, "seed": seed, "n_rows": len(train), "fold_best_valid_auc": valid_auc,
               "auc_out_of_fold": auc(labels, logits), "auc_in_sample": auc(labels, in_sample)}
    log.info("out-of-fold logits of %d training rows: AUC %.4f (the baseline's own, in sample: %.4f) -> %s",
             len(train), summary["auc_out_of_fold"], summary["auc_in_sample"], os.path.join(runner.out, OOF_FILE))
    if dist.is_main():  # the weight file save_cf_weights wrote just before: the one these logits go with
        summary["cf_model_sha256"] = file_sha256(os.path.join(runner.out, "cf_model.pth"))
        write_atomic(os.path.join(runner.out, OOF_FILE),
                     oof_frame(train, fold, logits).to_csv(index=False, float_format="%.9g"))
        write_atomic(os.path.join(runner.out, OOF_META), json.dumps(json_safe(summary), indent=2))
