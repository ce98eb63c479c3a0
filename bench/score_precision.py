"""One trained checkpoint scored in fp32, under bf16 autocast and with bf16 weights: what each
precision does to AUC / UAUC and the order of the scores, and how fast each scores.

Each variant is an evaluate-only run of train_collm.py (a subprocess, the framework's own
scoring path: shared prefixes, merged LoRA where exact, fp32 answer head) on the run's own
resolved config.yaml with its checkpoint_best.pth:

  fp32       run.amp=false
  autocast   run.cpu_amp=true run.amp_scoring=on (bf16 autocast over fp32 weights)
  bf16w      model.dtype=bf16 run.amp=false (weights stored in bf16)

Printed per variant: AUC, UAUC (overall, warm, cold), their differences from fp32, the
Spearman correlation of its scores with fp32's, the largest |score difference|, distinct
score values, and rows/s (the scoring pass alone, from the run log's timestamps). The rule
the project keeps: bf16 scoring becomes the CPU default only where |dAUC| <= 0.002 and
|dUAUC| <= 0.003.

  python bench/score_precision.py outputs/smollm2_study/collm-mf_t8_proj_n1600x1_lr0.001_bf16/train \\
      --out outputs/score_precision --json docs/results/score_precision.json
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

VARIANTS = {
    "fp32": ["run.amp=false"],
    "autocast": ["run.amp=true", "run.cpu_amp=true", "run.amp_scoring=on"],
    "bf16w": ["model.dtype=bf16", "run.amp=false"],
}
RULE = {"auc": 0.002, "uauc": 0.003}
WHOLE = 10 ** 9  # sample_rows of a split: more rows than any split has


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a training run directory: its config.yaml and checkpoint_best.pth")
    ap.add_argument("--out", default="outputs/score_precision", help="one evaluate-only run directory per variant")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--split", default="test", choices=["test", "valid"])
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (0: torch's default)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    for name in ("config.yaml", "checkpoint_best.pth"):
        if not os.path.isfile(os.path.join(args.run_dir, name)):
            ap.error(f"{args.run_dir}: no {name} (a finished training run directory is needed)")
    return args


def score(args, name):
    """Run one variant (reused when its predictions exist); (predictions DataFrame, metrics, rows/s)."""
    out = os.path.abspath(os.path.join(args.out, name))
    preds = os.path.join(out, f"predictions_{args.split}.csv")
    if not os.path.isfile(preds):
        split = args.split
        argv = [sys.executable, "train_collm.py", "--cfg-path", os.path.join(args.run_dir, "config.yaml"),
                "--options", f"model.ckpt={os.path.join(os.path.abspath(args.run_dir), 'checkpoint_best.pth')}",
                "run.evaluate=true", f"run.output_dir={out}", "run.num_workers=0", "run.tensorboard=false",
                f"run.batch_size_eval={args.eval_batch_size}",
                f"run.valid_splits=[{split if split == 'valid' else ''}]",
                f"run.test_splits=[{split if split == 'test' else ''}]",
                # the whole split: a training run's config may sample it (sample_rows.valid), and the
                # key takes no null; a sample at least as large as the split is the split, in its order
                f"datasets.movielens_ood.sample_rows.{split}={WHOLE}", *VARIANTS[name]]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        if subprocess.run(argv, cwd=REPO, env=env).returncode != 0:
            raise SystemExit(f"error: variant {name} failed; its log: {out}/log.txt")
    with open(os.path.join(out, "metrics.json")) as fh:
        metrics = json.load(fh)[args.split]
    df = pd.read_csv(preds)
    return df, metrics, len(df) / scoring_seconds(os.path.join(out, "log.txt"), args.split)


def scoring_seconds(log_path, split) -> float:
    """Seconds from the log's 'scoring <split>:' line to the split's metrics line (the scoring pass)."""
    start = end = None
    with open(log_path) as fh:
        for line in fh:
            stamp = re.match(r"(\d\d:\d\d:\d\d)", line)
            if not stamp:
                continue
            t = datetime.datetime.strptime(stamp.group(1), "%H:%M:%S")
            if f"scoring {split}:" in line:
                start = t
            elif start is not None and re.search(rf"\b{split}: AUC", line):
                end = t
    if start is None or end is None:
        raise SystemExit(f"error: {log_path}: no scoring lines for {split}")
    return max((end - start).total_seconds() % 86400, 1.0)


def spearman(a, b) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    results = {name: score(args, name) for name in args.variants}
    base_df, base_m, _ = results["fp32"] if "fp32" in results else next(iter(results.values()))
    rows = []
    print(f"\n{args.run_dir}, {args.split} split; load at start {load:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| variant | AUC | UAUC | warm AUC | cold AUC | dAUC | dUAUC | Spearman | max abs d score "
          "| distinct scores | rows/s | rule |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (df, m, rate) in results.items():
        # rows in split order in every file (predictions_csv): compared place by place
        if not (base_df[["uid", "iid", "label"]].to_numpy() == df[["uid", "iid", "label"]].to_numpy()).all():
            raise SystemExit(f"error: {name}'s predictions hold other rows than fp32's")
        merged = pd.DataFrame({"score_0": base_df["score"], "score": df["score"]})
        d_auc, d_uauc = m["auc"] - base_m["auc"], m["uauc"] - base_m["uauc"]
        ok = abs(d_auc) <= RULE["auc"] and abs(d_uauc) <= RULE["uauc"]
        r = {"variant": name, "auc": m["auc"], "uauc": m["uauc"], "warm_auc": m["warm"]["auc"],
             "cold_auc": m["cold"]["auc"], "d_auc": d_auc, "d_uauc": d_uauc,
             "spearman": spearman(merged["score_0"], merged["score"]),
             "max_abs_dscore": float((merged["score_0"] - merged["score"]).abs().max()),
             "distinct_scores": int(df["score"].nunique()), "rows": len(df), "rows_per_s": round(rate, 3),
             "within_rule": ok}
        rows.append(r)
        print(f"| {name} | {r['auc']:.4f} | {r['uauc']:.4f} | {r['warm_auc']:.4f} | {r['cold_auc']:.4f} "
              f"| {d_auc:+.4f} | {d_uauc:+.4f} | {r['spearman']:.5f} | {r['max_abs_dscore']:.3g} "
              f"| {r['distinct_scores']} | {rate:.2f} | {'within' if ok else 'outside'} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"run_dir": args.run_dir, "split": args.split, "load": load, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
