"""A real pretrained LM through the whole chain: SmolLM2-135M on CoLLM's ML-1M split.

One run, the same seeded training subset for every LLM stage, every row of
the test split (7,331) for every row of the table:

  zero-shot     stage-1 prompt, the backbone as loaded (evaluate-only, no checkpoint)
  stage 1       text-only LoRA (train_collm.py, collm_stage1_ml1m.yaml)
  stage 2       MF-fed FECE projector from stage 1's checkpoint (collm_stage2_mf_ml1m.yaml)
  stage 2 cold  stage 2's checkpoint with model.cold_start on (borrowed vectors for cold users)
  MF            the CF model stage 2 reads, trained on the whole training split (baseline_train.py)
  MF subset     the same MF trained on the LLM stages' training subset only

Each step is the framework's own entry point in a subprocess, configured with
--options on the shipped ML-1M configs; the numbers are read from each run's
metrics.json. Training runs evaluate a small validation sample (early
stopping); test rows are scored by evaluate-only runs from the best
checkpoints, in --eval-dtype (bf16 on a CPU that has it: see --compare-dtypes).

  python bench/real_backbone.py                       # CPU defaults (stated by --help)

Measured on a shared 2-core CPU: training at 0.25-0.9 samples/s and bf16 scoring at
about 2.3 rows/s (SmolLM2, ML-1M prompts of ~150 tokens). The two 600-row stages take
about 55 minutes and each of the four evaluate-only passes over the full test split
about 55 minutes: the CPU defaults take about 4.5 hours, --test-rows 1500 about 1.75
hours, --test-rows 300 (this README's table) about 75 minutes. On a GPU the defaults
are the full training and validation splits.
  python bench/real_backbone.py --train-rows 64 --valid-rows 32 --test-rows 64   # smoke run

Writes <out>/summary.json and prints the table with the goals of issue 11.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_COLLM_MF = 0.7295  # CoLLM-MF with Vicuna-7B on this split (CoLLM, TKDE)
COLD_START = {"enabled": "true", "neighbors_weight": 1.0, "history_weight": 0.0, "global_weight": 0.0,
              "user_repr": "tfidf", "n_neighbors": 50, "history_len": 20, "warm_alpha": 0.3, "cold_items": "false"}


def parse_args(argv=None):
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM's ML-1M split (unzipped ml-1m.zip)")
    ap.add_argument("--backbone", default="outputs/smollm2",
                    help="backbone directory; built with `collm-prepare backbone smollm2` when absent")
    ap.add_argument("--out", default="outputs/real_backbone", help="run directories and summary.json")
    ap.add_argument("--train-rows", type=int, default=0 if cuda else 600,
                    help="seeded training subset for the LLM stages; 0: all 33,891 (default on CUDA; 600 on CPU)")
    ap.add_argument("--valid-rows", type=int, default=0 if cuda else 200,
                    help="validation rows for early stopping and answer-score choice; 0: all")
    ap.add_argument("--test-rows", type=int, default=0, help="test rows; 0: all 7,331 (the default)")
    ap.add_argument("--stage1-epochs", type=int, default=1)
    ap.add_argument("--stage2-epochs", type=int, default=1)
    ap.add_argument("--stage1-lr", type=float, default=3e-4)
    ap.add_argument("--stage2-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16 if cuda else 4)
    ap.add_argument("--eval-batch-size", type=int, default=64 if cuda else 16)
    ap.add_argument("--answer-score", default="yes_minus_no", choices=["yes_logit", "yes_minus_no"])
    fast_bf16 = not cuda and torch.cpu._is_avx512_bf16_supported()
    ap.add_argument("--eval-dtype", default="bf16" if fast_bf16 else "auto",
                    help="model.dtype of the evaluate-only runs (default: bf16 on a CPU with AVX512-BF16, 2.6x as "
                         "fast as fp32 there, AUC within ~0.02; else auto)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", nargs="+", default=["mf", "zero_shot", "stage1", "stage2", "stage2_cold"],
                    choices=["mf", "zero_shot", "stage1", "stage1_train", "stage1_test", "stage2", "stage2_train",
                             "stage2_test", "stage2_cold", "dtypes"],
                    help="steps to run; stageN = stageN_train then stageN_test (stage 2 needs stage 1's and MF's "
                         "outputs, from this run or an earlier one with the same --out: steps may run in parallel "
                         "processes)")
    ap.add_argument("--compare-dtypes", type=int, default=0, metavar="N",
                    help="also score N test rows with stage 1's checkpoint in fp32 and in bf16 (samples/s, AUC)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the row samples")
    ap.add_argument("--valid-only", action="store_true",
                    help="train the LLM stages and report their validation AUC only (no test scoring): "
                         "for choosing settings such as --answer-score on validation")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: print the table of every summary*.json in --out (steps run as separate "
                         "processes) and write summary.json")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of each step (OMP_NUM_THREADS); 0: torch's default")
    return ap.parse_args(argv)


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.rows = {}
        self.timings = {}
        self.dtype_result = None

    def data_opts(self, test_rows=None):
        a = self.args
        sample = {"train": a.train_rows, "valid": a.valid_rows,
                  "test": a.test_rows if test_rows is None else test_rows}
        opts = [f"datasets.movielens_ood.path={os.path.abspath(a.data)}",
                f"datasets.movielens_ood.sample_seed={a.seed}"]
        opts += [f"datasets.movielens_ood.sample_rows.{k}={v}" for k, v in sample.items() if v]
        return opts

    def run(self, name, script, cfg, opts):
        """Run one entry point; return its metrics.json."""
        out = os.path.join(self.out, name)
        a = self.args
        cmd = [sys.executable, script, "--cfg-path", os.path.join(REPO, "train_configs", cfg), "--options",
               f"run.output_dir={out}", f"run.device={a.device}", "run.num_workers=0", *opts]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.time()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}))
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        self.timings[name] = round(time.time() - start, 1)
        if proc.returncode != 0:
            raise SystemExit(f"error: step {name} failed (exit {proc.returncode}); its log: {out}/log.txt")
        with open(os.path.join(out, "metrics.json")) as fh:
            return json.load(fh)

    def llm_opts(self, dtype=None):
        a = self.args
        opts = [f"model.llama_model={os.path.abspath(a.backbone)}", f"model.answer_score={a.answer_score}",
                f"run.batch_size_eval={a.eval_batch_size}"]
        return opts + ([f"model.dtype={dtype}"] if dtype else [])

    def train_opts(self, epochs, lr):
        a = self.args
        return [f"run.max_epoch={epochs}", "run.iters_per_epoch=null", f"run.batch_size_train={a.batch_size}",
                "run.accum_grad_iters=1", f"run.init_lr={lr}", f"run.min_lr={lr / 10}", "run.warmup_steps=10",
                "run.warmup_lr=1e-5", "run.weight_decay=0.0", "run.patience=1", "run.test_splits=[]",
                "run.log_freq=25"]

    def record(self, name, metrics, step):
        self.rows[name] = {"test": metrics.get("test"), "valid": metrics.get("valid"), "step": step}

    def mf(self):
        """MF on the whole training split (what stage 2 reads), scored on the LLM rows' test sample;
        and the same MF trained on the LLM stages' subset."""
        data = os.path.abspath(self.args.data)
        self.run("mf", "baseline_train.py", "baseline_mf_ml1m.yaml", [f"datasets.movielens_ood.path={data}"])
        m = self.run("mf_eval", "baseline_train.py", "baseline_mf_ml1m.yaml",
                     self.data_opts() + ["run.evaluate=true", f"model.ckpt={self.out}/mf/checkpoint_best.pth"])
        self.record("MF", m, "mf_eval")
        if self.args.train_rows:
            m = self.run("mf_subset", "baseline_train.py", "baseline_mf_ml1m.yaml", self.data_opts())
            self.record("MF subset", m, "mf_subset")

    def zero_shot(self):
        m = self.run("zero_shot", "train_collm.py", "collm_stage1_ml1m.yaml",
                     self.llm_opts(self.args.eval_dtype) + self.data_opts() + ["run.evaluate=true"])
        self.record("zero-shot", m, "zero_shot")

    def stage1(self):
        self.stage1_train()
        if not self.args.valid_only:
            self.stage1_test()

    def stage1_train(self):
        a = self.args
        m = self.run("stage1_train", "train_collm.py", "collm_stage1_ml1m.yaml",
                     self.llm_opts() + self.data_opts() + self.train_opts(a.stage1_epochs, a.stage1_lr))
        self.record("stage 1 (training run)", m, "stage1_train")

    def stage1_test(self):
        a = self.args
        m = self.run("stage1", "train_collm.py", "collm_stage1_ml1m.yaml",
                     self.llm_opts(a.eval_dtype) + self.data_opts()
                     + ["run.evaluate=true", f"model.ckpt={self.out}/stage1_train/checkpoint_best.pth"])
        self.record("stage 1", m, "stage1")

    def stage2_opts(self):
        return [f"model.rec_config.pretrained_path={self.out}/mf/cf_model.pth"]

    def stage2(self):
        self.stage2_train()
        if not self.args.valid_only:
            self.stage2_test()

    def stage2_train(self):
        a = self.args
        m = self.run("stage2_train", "train_collm.py", "collm_stage2_mf_ml1m.yaml",
                     self.llm_opts() + self.data_opts() + self.stage2_opts()
                     + self.train_opts(a.stage2_epochs, a.stage2_lr)
                     + [f"model.ckpt={self.out}/stage1_train/checkpoint_best.pth"])
        self.record("stage 2 (training run)", m, "stage2_train")

    def stage2_test(self):
        a = self.args
        m = self.run("stage2", "train_collm.py", "collm_stage2_mf_ml1m.yaml",
                     self.llm_opts(a.eval_dtype) + self.data_opts() + self.stage2_opts()
                     + ["run.evaluate=true", "model.freeze_proj=true",
                        f"model.ckpt={self.out}/stage2_train/checkpoint_best.pth"])
        self.record("stage 2", m, "stage2")

    def stage2_cold(self):
        a = self.args
        cold = [f"model.cold_start.{k}={v}" for k, v in COLD_START.items()]
        m = self.run("stage2_cold", "train_collm.py", "collm_stage2_mf_ml1m.yaml",
                     self.llm_opts(a.eval_dtype) + self.data_opts() + self.stage2_opts() + cold
                     + ["run.evaluate=true", "model.freeze_proj=true",
                        f"model.ckpt={self.out}/stage2_train/checkpoint_best.pth"])
        self.record("stage 2 + cold start", m, "stage2_cold")

    def dtypes(self):
        """fp32 vs bf16 scoring of the same test rows with stage 1's checkpoint."""
        n = self.args.compare_dtypes
        result = {}
        for dtype in ("fp32", "bf16"):
            name = f"dtype_{dtype}"
            m = self.run(name, "train_collm.py", "collm_stage1_ml1m.yaml",
                         self.llm_opts(dtype) + self.data_opts(test_rows=n)
                         + ["run.evaluate=true", "run.valid_splits=[]",
                            f"model.ckpt={self.out}/stage1_train/checkpoint_best.pth"])
            result[dtype] = {"auc": m["test"]["auc"], "rows": m["test"]["n_rows"],
                             "seconds": self.timings[name]}
        result["auc_diff"] = result["bf16"]["auc"] - result["fp32"]["auc"]
        self.dtype_result = result


def goals(rows):
    def auc(name):
        r = rows.get(name)
        return r["test"]["auc"] if r and r.get("test") else None

    s1, s2, mf, cold = auc("stage 1"), auc("stage 2"), auc("MF"), auc("stage 2 + cold start")
    out = {}
    if s1 is not None:
        out["stage 1 test AUC >= 0.60"] = s1 >= 0.60
    if None not in (s1, s2, mf):
        out["stage 2 >= MF and >= stage 1 (same test rows)"] = s2 >= mf and s2 >= s1
    if cold is not None:
        out[f"moonshot: stage 2 + cold start >= {PAPER_COLLM_MF}"] = cold >= PAPER_COLLM_MF
    return out


def table(rows):
    head = f"{'model':<22} | {'test AUC':>8} {'UAUC':>7} | {'warm AUC':>8} {'UAUC':>7} | {'cold AUC':>8} {'UAUC':>7} " \
           f"| {'rows':>5} | {'valid AUC':>9}"
    lines = [head, "-" * len(head)]

    def f(x):
        return f"{x:.4f}" if isinstance(x, float) else "   -  "

    for name, r in rows.items():
        t, v = r.get("test") or {}, r.get("valid") or {}
        w, c = t.get("warm", {}), t.get("cold", {})
        lines.append(f"{name:<22} | {f(t.get('auc')):>8} {f(t.get('uauc')):>7} | {f(w.get('auc')):>8} "
                     f"{f(w.get('uauc')):>7} | {f(c.get('auc')):>8} {f(c.get('uauc')):>7} | "
                     f"{t.get('n_rows', '-'):>5} | {f(v.get('auc')):>9}")
    return "\n".join(lines)


RUN_DIRS = {"MF": "mf_eval", "MF subset": "mf_subset", "zero-shot": "zero_shot",
            "stage 1 (training run)": "stage1_train", "stage 1": "stage1",
            "stage 2 (training run)": "stage2_train", "stage 2": "stage2", "stage 2 + cold start": "stage2_cold"}


def collect(args) -> int:
    """One table from the run directories in --out (steps may have run as separate processes)."""
    rows = {}
    for name, run_dir in RUN_DIRS.items():
        path = os.path.join(args.out, run_dir, "metrics.json")
        if os.path.isfile(path):
            with open(path) as fh:
                m = json.load(fh)
            rows[name] = {"test": m.get("test"), "valid": m.get("valid"), "step": run_dir}
    summary = {"settings": vars(args), "rows": rows, "goals": goals(rows)}
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(table(rows))
    for goal, met in summary["goals"].items():
        print(f"goal {'met    ' if met else 'not met'}: {goal}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    if not os.path.isdir(args.backbone):
        sys.path.insert(0, REPO)
        from collm_faissret.data_prep.backbone import build

        build("smollm2", args.backbone)
    bench = Bench(args)
    os.makedirs(bench.out, exist_ok=True)
    start = time.time()
    steps = list(args.steps) + (["dtypes"] if args.compare_dtypes and "dtypes" not in args.steps else [])
    for step in steps:
        getattr(bench, step)()
    summary = {"settings": vars(args), "rows": bench.rows, "goals": goals(bench.rows),
               "seconds": bench.timings, "total_seconds": round(time.time() - start, 1)}
    if bench.dtype_result is not None:
        summary["dtypes"] = bench.dtype_result
    name = "summary.json" if set(args.steps) >= {"zero_shot", "stage1", "stage2"} else f"summary_{'_'.join(steps)}.json"
    with open(os.path.join(bench.out, name), "w") as fh:
        json.dump(summary, fh, indent=2)
    print("\n" + table(bench.rows))
    for goal, met in summary["goals"].items():
        print(f"goal {'met    ' if met else 'not met'}: {goal}")
    if "dtypes" in summary:
        d = summary["dtypes"]
        print(f"scoring {d['fp32']['rows']} test rows: fp32 {d['fp32']['seconds']} s AUC {d['fp32']['auc']:.4f}; "
              f"bf16 {d['bf16']['seconds']} s AUC {d['bf16']['auc']:.4f} (diff {d['auc_diff']:+.4f})")
    print(f"total {summary['total_seconds']} s; per step: {bench.timings}")
    print(f"wrote {os.path.join(bench.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
