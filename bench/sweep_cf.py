"""Grid sweep of a collaborative baseline, reported on VALIDATION only.

Runs baseline_train.py once per setting of the grid (one run at a time, each in
its own process) and writes a table of best-epoch valid AUC / UAUC (overall,
warm, cold), the best epoch and the wall time: ``<out>.md`` and ``<out>.json``.
Test numbers are left out on purpose: settings are chosen on validation.

  python bench/sweep_cf.py --cfg-path train_configs/baseline_sasrec_ml1m.yaml \\
      --grid model.rec_config.max_len=20,50 run.init_lr=1e-3,3e-3 --out outputs/sweep_sasrec
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_grid(entries):
    """["a.b=1,2", "c=x"] -> [("a.b", ["1", "2"]), ("c", ["x"])]"""
    grid = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"bad --grid entry {entry!r}: expected key=v1,v2,...")
        grid.append((key, values.split(",")))
    return grid


def run_one(cfg_path, options, out_dir, threads):
    """One baseline_train.py run; returns (metrics dict or None, seconds, return code)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, os.path.join(ROOT, "baseline_train.py"), "--cfg-path", cfg_path,
           "--options", *options, f"run.output_dir={out_dir}"]
    start = time.time()
    with open(os.path.join(out_dir + ".log"), "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    path = os.path.join(out_dir, "metrics.json")
    if rc != 0 or not os.path.isfile(path):
        return None, seconds, rc
    with open(path) as fh:
        return json.load(fh), seconds, rc


def valid_row(setting, metrics, seconds, rc):
    """The table row of one run: validation numbers only."""
    row = {"setting": setting, "seconds": round(seconds, 1), "rc": rc}
    if metrics is not None:
        v = metrics["valid"]
        row.update(best_epoch=metrics["best_epoch"], valid_auc=v["auc"], valid_uauc=v["uauc"],
                   warm_auc=v["warm"]["auc"], cold_auc=v["cold"]["auc"])
    return row


def markdown(rows):
    head = ("| setting | valid AUC | valid UAUC | warm AUC | cold AUC | best epoch | seconds |\n"
            "|---|---|---|---|---|---|---|\n")

    def num(x):
        return "-" if x is None else f"{x:.4f}"

    lines = []
    for r in sorted(rows, key=lambda r: -(r.get("valid_auc") or -1)):
        setting = " ".join(f"{k}={v}" for k, v in r["setting"].items()) or "(config as is)"
        if "valid_auc" not in r:
            lines.append(f"| {setting} | failed (rc {r['rc']}) | | | | | {r['seconds']} |")
            continue
        lines.append(f"| {setting} | {num(r['valid_auc'])} | {num(r['valid_uauc'])} | {num(r['warm_auc'])} "
                     f"| {num(r['cold_auc'])} | {r['best_epoch']} | {r['seconds']} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg-path", required=True)
    ap.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2")
    ap.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE", help="fixed overrides for every run")
    ap.add_argument("--out", required=True, help="prefix: <out>.md, <out>.json, run dirs <out>/run_<n>")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per run (0: leave as is)")
    args = ap.parse_args(argv)

    grid = parse_grid(args.grid)
    keys = [k for k, _ in grid]
    rows = []
    os.makedirs(args.out, exist_ok=True)
    for n, values in enumerate(itertools.product(*[v for _, v in grid])):
        setting = dict(zip(keys, values))
        options = list(args.options) + [f"{k}={v}" for k, v in setting.items()]
        metrics, seconds, rc = run_one(args.cfg_path, options, os.path.join(args.out, f"run_{n}"), args.threads)
        rows.append(valid_row(setting, metrics, seconds, rc))
        print(json.dumps(rows[-1]), flush=True)
        with open(args.out + ".json", "w") as fh:
            json.dump({"cfg_path": args.cfg_path, "options": args.options, "rows": rows}, fh, indent=2)
        with open(args.out + ".md", "w") as fh:
            fh.write(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
