"""What a retrieve-then-rank run's candidates are, against the held-out split's rated rows.

    python bench/rank_breakdown.py <rank run>/predictions_test.csv --data data/ml-1m [--split test_ood2]

A candidate is "liked" or "disliked" when the user rated it in the held-out split (label 1 / 0),
"unrated" otherwise. Prints the counts of each, the LLM's mean score on each, and two AUCs of the
run's scores: liked against disliked among the rated candidates (the pointwise question CoLLM
trains on) and rated against unrated (whether the user rates the item at all, which ranking
also asks). JSON on stdout.
"""
import argparse
import json
import os
import sys

import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def breakdown(candidates: pd.DataFrame, held_out: pd.DataFrame) -> dict:
    """candidates: uid, iid, score (one row per candidate); held_out: uid, iid, label (CoLLM rows)."""
    rated = held_out[["uid", "iid", "label"]].drop_duplicates(["uid", "iid"]).rename(columns={"label": "held"})
    m = candidates.merge(rated, on=["uid", "iid"], how="left")
    groups = {"liked": m["held"] == 1, "disliked": m["held"] == 0, "unrated": m["held"].isna()}
    out = {"candidates": len(m)}
    for name, mask in groups.items():
        out[name] = int(mask.sum())
        out[f"mean_score_{name}"] = float(m.loc[mask, "score"].mean()) if mask.any() else None
    r = m[~groups["unrated"]]
    out["auc_liked_vs_disliked"] = (float(roc_auc_score(r["held"], r["score"])) if r["held"].nunique() == 2
                                    else None)
    y = (~groups["unrated"]).astype(int)
    out["auc_rated_vs_unrated"] = float(roc_auc_score(y, m["score"])) if y.nunique() == 2 else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", help="a rank run's predictions_test.csv (uid, iid, label, score, ...)")
    ap.add_argument("--data", required=True, help="the CoLLM-format data directory of the run")
    ap.add_argument("--split", default="test_ood2", help="file stem of the held-out split the run ranked for")
    a = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from collm_faissret.datasets.collm_data import _read

    print(json.dumps(breakdown(pd.read_csv(a.predictions), _read(a.data, a.split)[0]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
