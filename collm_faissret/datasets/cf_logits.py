"""Out-of-fold CF logits of the training rows (``oof_logits.csv``), for a hybrid score.

A CF model scores the rows it was trained on better than new ones: its logit of a training row
carries that row's label. A hybrid score (``model.answer_score: hybrid``: the LLM's log-odds plus
a learned weight times the CF logit) trained on those logits learns to lean on the CF model more
than the CF model earns on validation and test rows, and the LLM's part learns little. Out of
fold, each training row's logit comes from a CF model trained without it.

``baseline_train.py`` with ``run.oof_folds`` writes the file (``oof_frame``; collm_faissret/oof.py
trains the fold models); ``datasets.*.cf_logits`` names it for a CoLLM run, and the training
split then carries a ``cf_logit`` column (``read_cf_logits``) that the hybrid score reads instead
of the CF model's own logit (models/collm.py). The file is the source of truth for the rows it
scores: its uid / iid / label must be the training split's, row for row.
"""
import hashlib
import json
import os

import numpy as np
import pandas as pd

from ..errors import DataError

OOF_FILE = "oof_logits.csv"
OOF_META = "oof_logits.json"  # beside it: folds, AUCs and the CF weight file's hash (``file_sha256``)
OOF_COLUMNS = ("row", "uid", "iid", "label", "fold", "cf_logit")


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes: which cf_model.pth the logits were made beside."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fold_of(n_rows: int, folds: int, seed: int) -> np.ndarray:
    """[n_rows] int64 fold of each row: a seeded permutation dealt out in turn, so fold sizes
    differ by at most one and every fold mixes users and times."""
    fold = np.empty(n_rows, dtype=np.int64)
    fold[np.random.RandomState(seed).permutation(n_rows)] = np.arange(n_rows) % folds
    return fold


def oof_frame(train: pd.DataFrame, fold: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """The file's rows: train [N] (the whole training split, in file order), fold [N], logits [N]."""
    return pd.DataFrame({"row": np.arange(len(train)), "uid": train["uid"].to_numpy(),
                         "iid": train["iid"].to_numpy(), "label": train["label"].to_numpy(),
                         "fold": fold, "cf_logit": logits})


def read_cf_logits(path: str, train: pd.DataFrame, cf_weights: str) -> np.ndarray:
    """[N] float32 logit of each row of ``train`` (the whole training split, as loaded) from an
    ``oof_logits.csv`` made beside the CF weight file ``cf_weights`` (its oof_logits.json says
    which); DataError naming the file and the first row or fact that does not match."""
    if not os.path.isfile(path):
        raise DataError(f"datasets.*.cf_logits: file not found: {path}")
    meta_path = os.path.join(os.path.dirname(path), OOF_META)
    try:
        with open(meta_path) as fh:
            made_beside = json.load(fh)["cf_model_sha256"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{meta_path}: cannot read which CF model made {os.path.basename(path)} ({err}); "
                        "baseline_train.py with run.oof_folds writes both files") from None
    if os.path.isfile(cf_weights) and made_beside != file_sha256(cf_weights):
        raise DataError(f"{path}: made beside another CF weight file than the hybrid score's {cf_weights} "
                        "(model.hybrid_cf_path, else model.rec_config.pretrained_path): training would read one "
                        "CF model's logits and scoring another's")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    missing = [c for c in OOF_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (an oof_logits.csv of baseline_train.py "
                        "with run.oof_folds has them)")
    if len(frame) != len(train):
        raise DataError(f"{path}: {len(frame)} rows, but the training split has {len(train)}: written for "
                        "another training split")
    for col, want in (("row", np.arange(len(train))), ("uid", train["uid"]), ("iid", train["iid"]),
                      ("label", train["label"])):
        bad = np.flatnonzero(frame[col].to_numpy() != np.asarray(want))
        if len(bad):
            r = int(bad[0])
            raise DataError(f"{path}: row {r}: {col} {frame[col].iloc[r]} is not the training split's "
                            f"({np.asarray(want)[r]}): written for another training split")
    logits = pd.to_numeric(frame["cf_logit"], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(logits))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"{path}: row {r}: cf_logit {frame['cf_logit'].iloc[r]!r} is not a finite number")
    return logits.astype(np.float32)
