"""Choose cold-start settings on VALID for a trained table CF model, then report test.

Loads a baseline_train.py weight file (cf_model.pth), scores the valid split
without cold start and under each setting of a coordinate-wise search (one
key varied at a time from the current best, by valid AUC), and scores test
only for "off" and the chosen setting. Prints a markdown table; --json
writes every row.

  python bench/cold_start_sweep.py --data data/ml-1m --weights outputs/cs_mf_ml1m/cf_model.pth \
      --json outputs/cold_start_sweep.json
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collm_faissret.config import ColdStartConfig  # noqa: E402
from collm_faissret.datasets import RecRows, load_interactions  # noqa: E402
from collm_faissret.metrics import auc_report  # noqa: E402
from collm_faissret.models.cf import build_cf  # noqa: E402
from collm_faissret.models.cf.cold_start import ColdStartCF  # noqa: E402
from collm_faissret.models.cf.text import item_titles  # noqa: E402
from collm_faissret.retrieval.index import RetrievalConfig  # noqa: E402

# Key -> values tried, in this order; each round keeps the best valid AUC.
GRID = {
    "mix": [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1), (2, 1, 0), (1, 0, 2)],
    "user_repr": ["tfidf", "item_mean"],
    "n_neighbors": [5, 10, 20, 50, 100, 200, 400],
    "history_len": [10, 20, 50, 100, 500],
    "warm_alpha": [0.0, 0.1, 0.2, 0.3, 0.5],
    "cold_items": [False, True],
    "item_neighbors": [1, 5, 10, 20, 50],
    "title_dim": [0, 64, 128, 256],
    "match_norm": [False, True],
}
MAX_HISTORY = 500
BATCH = 4096


def with_key(cs: ColdStartConfig, key, value) -> ColdStartConfig:
    if key == "mix":
        return dataclasses.replace(cs, neighbors_weight=float(value[0]), history_weight=float(value[1]),
                                   global_weight=float(value[2]))
    return dataclasses.replace(cs, **{key: value})


def setting_key(cs: ColdStartConfig) -> str:
    """A hashable name of one setting (the dataclass itself holds no hash)."""
    return json.dumps(dataclasses.asdict(cs), sort_keys=True)


@torch.no_grad()
def evaluate(model, rows: RecRows) -> dict:
    """auc_report of model.score over every row of ``rows``."""
    scores = []
    for start in range(0, len(rows), BATCH):
        part = rows.__getitems__(np.arange(start, min(start + BATCH, len(rows))))
        b = {k: torch.from_numpy(v) for k, v in part.items()}
        scores.append(model.score(b).float().numpy())
    return auc_report(rows.uid, rows.label, np.concatenate(scores), rows.not_cold)


def summary(m: dict) -> dict:
    return {"auc": m["auc"], "uauc": m["uauc"], "warm_auc": m["warm"]["auc"], "warm_uauc": m["warm"]["uauc"],
            "cold_auc": m["cold"]["auc"], "cold_uauc": m["cold"]["uauc"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CoLLM-format data directory")
    ap.add_argument("--weights", required=True, help="cf_model.pth written by baseline_train.py")
    ap.add_argument("--arch", default="MF", help="the CF model of the weight file")
    ap.add_argument("--dim", type=int, default=64, help="its embedding size")
    ap.add_argument("--rounds", type=int, default=2, help="passes of the coordinate-wise search")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_interactions(args.data, {"train": "train_ood2", "valid": "valid_ood2", "test": "test_ood2"})
    # The weight file states the model (name, rec_config, table sizes); --arch / --dim must agree with it.
    rec = OmegaConf.create({"embedding_size": args.dim, "pretrained_path": args.weights})
    base = build_cf(rec, data, torch.device("cpu"), name=args.arch).eval()
    splits = {s: RecRows(data.splits[s], 0, None, name=s, his_len=MAX_HISTORY) for s in ("valid", "test")}
    titles = item_titles(data)
    rows = [{"setting": "off", "split": s, **summary(evaluate(base, splits[s]))} for s in ("valid", "test")]
    print(f"off: valid {rows[0]['auc']:.4f} test {rows[1]['auc']:.4f}", flush=True)

    best = dataclasses.replace(ColdStartConfig(), enabled=True)
    best_auc, tried = -1.0, {}
    for rnd in range(args.rounds):
        for key, values in GRID.items():
            for value in values:
                cs = with_key(best, key, value)
                name = setting_key(cs)
                if name in tried:
                    continue
                t0 = time.time()
                cold = ColdStartCF(base, data, cs, RetrievalConfig(), titles=titles)
                m = summary(evaluate(cold, splits["valid"]))
                tried[name] = m
                rows.append({"setting": dataclasses.asdict(cs), "split": "valid", "round": rnd, **m})
                print(f"round {rnd} {key}={value}: valid AUC {m['auc']:.4f} warm {m['warm_auc']:.4f} "
                      f"cold {m['cold_auc']:.4f}/{m['cold_uauc']:.4f} ({time.time() - t0:.1f}s)", flush=True)
                if m["auc"] > best_auc:
                    best, best_auc = cs, m["auc"]
    test = summary(evaluate(ColdStartCF(base, data, best, RetrievalConfig(), titles=titles), splits["test"]))
    rows.append({"setting": dataclasses.asdict(best), "split": "test", "chosen": True, **test})
    print("chosen on valid:", dataclasses.asdict(best))
    print("| setting | split | AUC | UAUC | warm AUC | warm UAUC | cold AUC | cold UAUC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    chosen_valid = {**tried[setting_key(best)], "setting": "chosen", "split": "valid"}
    for r in [rows[0], rows[1], chosen_valid, rows[-1]]:
        name = "off" if r["setting"] == "off" else "chosen"
        print(f"| {name} | {r['split']} | " + " | ".join(f"{r[k]:.4f}" for k in
              ("auc", "uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc")) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
