"""How much two scorers of the same rows can gain by being added together: an upper bound on
what a hybrid score (an LLM's answer plus a CF model's logit) could reach on those rows.

    python bench/blend_bound.py A.csv[.gz] B.csv[.gz] [--steps 20]

A and B are predictions files (uid, iid, label, score, not_cold: a run's predictions_test.csv,
or the study's docs/results/smollm2_ml1m_predictions/*.csv.gz) of the same rows. Each score is
standardised (zero mean, unit variance over the rows, so the weight does not depend on the two
scales), then w x A + (1 - w) x B is scored for w = 0, 1/steps, ..., 1. Prints, as JSON, each
file's AUC / UAUC, the Pearson correlation of the two scores and the blend with the best AUC.

The weight is picked on the very rows it is scored on, so the best blend is optimistic: a
hybrid that learns its weights on training rows can at best come near it. Where the best blend
is about the better file's own AUC, adding the two carries no signal the better one lacks.
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the package, from a checkout that has not installed it
    sys.path.insert(0, REPO)
from collm_faissret.metrics import auc, uauc  # noqa: E402

KEYS = ["uid", "iid", "label"]


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per (uid, iid, label) of both files, columns score_a and score_b; a row of one
    file that the other lacks is an error (the bound is about the same rows)."""
    for name, df in (("A", a), ("B", b)):
        missing = [c for c in KEYS + ["score"] if c not in df.columns]
        if missing:
            raise SystemExit(f"blend_bound: file {name} has no column {missing[0]} (needs uid, iid, label, score)")
    m = a[KEYS + ["score"]].merge(b[KEYS + ["score"]], on=KEYS, suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise SystemExit(f"blend_bound: the files do not hold the same rows (A {len(a)}, B {len(b)}, "
                         f"both {len(m)})")
    return m


def standardised(x: np.ndarray) -> np.ndarray:
    """x [N] -> zero mean, unit variance (a constant column stays 0)."""
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def bound(m: pd.DataFrame, steps: int = 20) -> dict:
    """m: paired rows (uid, label, score_a, score_b). The blend weights w in [0, 1] on a grid of
    steps + 1 points; returns AUC / UAUC of each file and of the best-AUC blend."""
    users, labels = m["uid"].to_numpy(), m["label"].to_numpy()
    za, zb = standardised(m["score_a"].to_numpy(float)), standardised(m["score_b"].to_numpy(float))
    blends = [(auc(labels, w * za + (1 - w) * zb), w) for w in np.linspace(0.0, 1.0, steps + 1)]
    best_auc, best_w = max(blends)  # ties: the larger w
    best = best_w * za + (1 - best_w) * zb
    return {
        "rows": len(m),
        "a": {"auc": auc(labels, za), "uauc": uauc(users, labels, za)},
        "b": {"auc": auc(labels, zb), "uauc": uauc(users, labels, zb)},
        "pearson": float(np.corrcoef(za, zb)[0, 1]),
        "best_blend": {"weight_a": float(best_w), "auc": best_auc, "uauc": uauc(users, labels, best)},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="predictions file A (uid, iid, label, score)")
    ap.add_argument("b", help="predictions file B, the same rows")
    ap.add_argument("--steps", type=int, default=20, help="weight grid: w = 0, 1/steps, ..., 1")
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"blend_bound: --steps must be at least 1, not {args.steps}")
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            raise SystemExit(f"blend_bound: no such file {path}")
    out = bound(paired(pd.read_csv(args.a), pd.read_csv(args.b)), args.steps)
    out.update(a_file=args.a, b_file=args.b)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
