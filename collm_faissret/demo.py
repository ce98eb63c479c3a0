"""The embedded demo: MovieLens-100K -> tiny backbone -> MF -> stage 1 -> stage 2
-> evaluate-only, each step through the same command a user would type.

  python -m collm_faissret.demo          (what `make demo` runs)

Prints one table of test AUC/UAUC (overall, warm, cold) and writes
outputs/demo/summary.json = {"mf", "stage1", "stage2", "evaluate_only"},
each the ``test`` block of that run's metrics.json, and beside it the plots of
``python -m collm_faissret.report`` over the four runs (learning_curves.png,
test_metrics.png). Ends with what stage 2 recommends to one user (``collm-recommend``).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

STEPS = [  # (summary key, script, config)
    ("mf", "baseline_train.py", "train_configs/demo_mf.yaml"),
    ("stage1", "train_collm.py", "train_configs/demo_stage1.yaml"),
    ("stage2", "train_collm.py", "train_configs/demo_stage2.yaml"),
    ("evaluate_only", "train_collm.py", "train_configs/demo_evaluate.yaml"),
]
RUN_DIRS = {"mf": "mf", "stage1": "stage1", "stage2": "stage2", "evaluate_only": "evaluate"}
DEMO_USER = 1  # whose top 5 the demo prints at the end (README, "See recommendations")


# Time-ordered like CoLLM's split; small valid/test splits (5k rows each) keep
# the demo's evaluations short on a CPU.
DEMO_SPLIT = [0.9, 0.05, 0.05]


def _split_of(data_dir):
    """The split fractions an existing data directory was made with (None if none)."""
    path = os.path.join(data_dir, "stats.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("args", {}).get("split")


def step_options(key, args) -> list:
    """``--options`` that point a step's config at ``--data``, ``--backbone`` and ``--out``
    (the YAML files name the defaults; stage 2 and evaluate-only read the earlier steps' files)."""
    def run(step):
        return os.path.join(args.out, RUN_DIRS[step])

    opts = [f"datasets.ml100k_ood.path={args.data}", f"run.output_dir={run(key)}"]
    if key != "mf":
        opts.append(f"model.llama_model={args.backbone}")
    if key in ("stage2", "evaluate_only"):
        before = "stage1" if key == "stage2" else "stage2"
        opts += [f"model.rec_config.pretrained_path={os.path.join(run('mf'), 'cf_model.pth')}",
                 f"model.ckpt={os.path.join(run(before), 'checkpoint_best.pth')}"]
    return opts


def sh(cmd):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def table(summary) -> str:
    head = (f"{'run':<14} {'AUC':>7} {'UAUC':>7} | {'warm AUC':>8} {'warm UAUC':>9} | "
            f"{'cold AUC':>8} {'cold UAUC':>9} | rows")
    lines = [head, "-" * len(head)]
    for name, t in summary.items():
        def f(x):
            return "   n/a" if x is None else f"{x:.4f}"
        lines.append(f"{name:<14} {f(t['auc']):>7} {f(t['uauc']):>7} | {f(t['warm']['auc']):>8} "
                     f"{f(t['warm']['uauc']):>9} | {f(t['cold']['auc']):>8} {f(t['cold']['uauc']):>9} | {t['n_rows']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-100k",
                    help="where the ML-100K CoLLM split is (made if missing or made with another split)")
    ap.add_argument("--backbone", default="outputs/tiny_llama", help="tiny backbone directory (built if missing)")
    ap.add_argument("--out", default="outputs/demo", help="demo output directory (its runs are replaced)")
    args = ap.parse_args(argv)
    py = sys.executable
    start = time.time()
    fresh_data = _split_of(args.data) != DEMO_SPLIT
    if fresh_data:
        sh([py, "dataset/prepare_ml100k.py", "--from-recbole", "--out", args.data, "--force",
            "--split", *map(str, DEMO_SPLIT)])
    # The backbone's vocabulary comes from the data: a fresh split needs a fresh backbone.
    if fresh_data or not os.path.isfile(os.path.join(args.backbone, "config.json")):
        sh([py, "-m", "collm_faissret.tiny_backbone", "--data", args.data, "--out", args.backbone, "--force"])
    for sub in RUN_DIRS.values():
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
    summary = {}
    for key, script, cfg in STEPS:
        sh([py, script, "--cfg-path", cfg, "--options", *step_options(key, args)])
        with open(os.path.join(args.out, RUN_DIRS[key], "metrics.json")) as fh:
            summary[key] = json.load(fh)["test"]
    path = os.path.join(args.out, "summary.json")
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2)
    print()
    print("Embedded demo: MovieLens-100K, tiny random LLaMA backbone, test split")
    print(table(summary))
    from .report import make_report  # matplotlib: only once the runs are done

    plots = make_report([os.path.join(args.out, RUN_DIRS[key]) for key, _, _ in STEPS], args.out)
    print(f"\nsummary: {path}   plots: {', '.join(plots)}   ({time.time() - start:.0f} s)\n")
    # collm-recommend, as a user would type it (python -m: the same main, whether or not .venv/bin is on PATH)
    sh([py, "-m", "collm_faissret.recommend_cli", os.path.join(args.out, RUN_DIRS["stage2"]),
        "--user", str(DEMO_USER), "-k", "5"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
