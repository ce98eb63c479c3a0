"""What a retrieve-then-rank run's candidates are, against the held-out split's rated rows, and
how three orders of the same candidates rank.

    python bench/rank_breakdown.py <rank run>/predictions_test.csv --data data/ml-1m [--split test_ood2]

A candidate is "liked" or "disliked" when the user rated it in the held-out split (label 1 / 0),
"unrated" otherwise. Prints the counts of each, the LLM's mean score on each, and two AUCs of the
run's scores: liked against disliked among the rated candidates (the pointwise question CoLLM
trains on) and rated against unrated (whether the user rates the item at all, which ranking
also asks).

"orders" gives recall, NDCG and hit rate at 10 of each user's candidates in three orders: the
retriever's (the file's row order: a rank run writes each user's candidates best first), the
LLM's (the file's score) and a non-personal yardstick, the item's number of rows in the training
split (its popularity there; ties keep the retriever's order). The first two equal the run's
own "retrieval" and "reranked" figures in its metrics.json. JSON on stdout.
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the package, from a checkout that has not installed it
    sys.path.insert(0, REPO)
from collm_faissret.datasets.collm_data import _read  # noqa: E402
from collm_faissret.retrieval.ranking import ranking_metrics  # noqa: E402

K = 10


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


def orders(candidates: pd.DataFrame, held_out: pd.DataFrame, train: pd.DataFrame, k: int = K) -> dict:
    """{order: {"recall@k", "ndcg@k", "hit_rate@k"}} for the retriever's, the LLM's and the
    training-popularity order of each user's candidates (rows in retrieval order per user).
    A user's relevant items are their label-1 rows of ``held_out``, as the rank task's."""
    popularity = train.groupby("iid").size()
    liked = held_out[held_out["label"] == 1].groupby("uid")["iid"].apply(lambda s: {int(i) for i in s})
    groups = [(uid, g.reset_index(drop=True)) for uid, g in candidates.groupby("uid", sort=False)]
    relevant = [liked.get(uid, set()) for uid, _ in groups]
    keys = {"retriever": lambda g: -np.arange(len(g), dtype=float),
            "llm": lambda g: g["score"].to_numpy(dtype=float),
            "train_popularity": lambda g: g["iid"].map(popularity).fillna(0).to_numpy(dtype=float)}
    out = {}
    for name, key in keys.items():
        # stable sort on the negated key: ties keep the retriever's order
        ranked = [g["iid"].to_numpy()[np.argsort(-key(g), kind="stable")].tolist() for _, g in groups]
        m = ranking_metrics(ranked, relevant, [k])
        out[name] = {x: m[f"{x}@{k}"] for x in ("recall", "ndcg", "hit_rate")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", help="a rank run's predictions_test.csv (uid, iid, label, score, ...)")
    ap.add_argument("--data", required=True, help="the CoLLM-format data directory of the run")
    ap.add_argument("--split", default="test_ood2", help="file stem of the held-out split the run ranked for")
    ap.add_argument("--train-split", default="train_ood2", help="file stem of the training split (popularity)")
    a = ap.parse_args(argv)
    cand, held = pd.read_csv(a.predictions), _read(a.data, a.split)[0]
    out = breakdown(cand, held)
    out["orders"] = orders(cand, held, _read(a.data, a.train_split)[0])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
