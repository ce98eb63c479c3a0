"""SmolLM2 CoLLM on CoLLM's ML-1M split: every CF encoder, against each CF model alone.

Each row of the table is the framework's own entry points run in subprocesses
(train_collm.py, baseline_train.py) with --options on the shipped ML-1M
configs, and is scored by an evaluate-only run on the full test split (7,331
rows) and the full validation split (10,401 rows) unless --test-rows /
--valid-rows sample them:

  cf          each CF model alone (--cf), from <cf-dir>/<name>/ (baseline_train.py on the
              whole training split; trained here first when its cf_model.pth is absent)
  zero-shot   stage-1 prompt, the backbone as loaded (no checkpoint)
  stage1      text-only LoRA on the training subset (collm_stage1_ml1m.yaml)
  collm       CoLLM stage 2 on each CF encoder, for every combination of the variants:
                --proj-tokens  LLM tokens per ID embedding (model.proj_token_num)
                --tune         what stage 2 tunes: proj (the FECE projector), proj+lora
                               (projector and LoRA), proj+cf (projector and the CF encoder)
                --train-rows   seeded training subset (0: all 33,891 rows)
                --epochs       passes over it
                --init         base (the backbone as loaded) or stage1 (stage 1's LoRA, frozen)
                --run-seed     run.seed: initialisation and batch order (several values: a row each)
  cold        the collm rows' checkpoints scored with model.cold_start on (cold users get
              vectors borrowed from their nearest warm users)

Settings are chosen on validation, never on test: per CF encoder the CoLLM row
with the best validation AUC is named CoLLM-<cf> (the others keep their
setting in the name, "selected": false). During training a seeded sample of
--curve-valid-rows validation rows is scored every --curve-every training rows
(early stopping, best checkpoint, learning curve).

Writes --json (default <out>/results.json): a list of rows with name, test_auc,
test_uauc, test_warm_auc, test_cold_auc, test_rows, valid_auc, train_rows, epochs,
cpu_hours (CPU time of the row's own runs: training and scoring; a CF row counts its
scoring only), command (the real_backbone.py command line that reproduces it), commits
(the git commit each of the row's runs was made with, "+dirty" when the checkout had
uncommitted changes), the CF model's AUC on the same rows (cf_test_auc, cf_valid_auc)
and the learning curve; beside it <json stem>.png (validation AUC against training rows
seen) and <json stem>.md (the table). Finished runs are kept in <out>/<row>/ and reused
when the same command asks for them again, also from another checkout with the same
layout (--rerun: run anyway). A training step stopped before it finished (a session's end)
resumes from its checkpoint_last.pth, written at least every --save-every-min minutes, when
the same command runs again; --collect only rebuilds the JSON, PNG and table from
<out>. Paths in the JSON are relative to the repository root (absolute when outside it).

Time on 2 idle CPU cores, fp32 (SmolLM2, ML-1M prompts of ~150 tokens): training
2.3 samples/s (2.1 with --proj-tokens 8). A full-split evaluation of SmolLM2 took, before
shared-prefix scoring (5.6-6.1 rows/s), about 20-22 minutes for the test split (7,331
rows) and 30 minutes for the validation split (10,401); with it (run.shared_prefix: auto,
the default) the test split took 13 min 42 s (8.9 rows/s, timed whole, CoLLM-SASRec), so
the validation split about 20 minutes. A CoLLM row of 1,600 training rows x 1 epoch
with its learning curve and both full splits: about 55 minutes of an idle machine, its
cold-start row another 34 (CPU hours about twice the wall time). CoLLM-DIN scores on the plain
path (DIN is target-aware: no shared prefix), about 22 + 30 minutes. On a busy machine 2-8x
that (docs/benchmarks.md). On CUDA the defaults are the whole training split and batch sizes
16/64; `bash bench/gpu_check.sh smollm2` runs the study there.

  python bench/real_backbone.py --rows cf collm --cf MF --proj-tokens 8 --train-rows 1600
  python bench/real_backbone.py --dry-run                            # print the commands only
  python bench/real_backbone.py --collect --json docs/results/smollm2_ml1m.json
"""
import argparse
import itertools
import json
import math
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CF_NAMES = ("MF", "LightGCN", "SASRec", "DIN")
ROW_KINDS = ("cf", "zero-shot", "stage1", "collm", "cold")
# what stage 2 tunes -> the model's freeze_* flags (CoLLM's tuning strategies)
TUNES = {"proj": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "true"},
         "proj+lora": {"freeze_proj": "false", "freeze_lora": "false", "freeze_rec": "true"},
         "proj+cf": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "false"}}
COLD_START = {"enabled": "true", "neighbors_weight": 1.0, "history_weight": 0.0, "global_weight": 0.0,
              "user_repr": "tfidf", "n_neighbors": 50, "history_len": 20, "warm_alpha": 0.3, "cold_items": "false"}
# Anchors on this split (test AUC / UAUC)
PAPER_COLLM_MF = 0.7295  # CoLLM-MF, Vicuna-7B (CoLLM, TKDE)
DEFAULT_RUN_SEED = 42  # run.seed of every trained row unless --run-seed says otherwise
FAISSRET_TUNED = (0.7479, 0.70)  # CoLLM-FaissRet tuned, Vicuna-7B: AUC 0.7479, UAUC 0.6999 (goal: >= 0.70)


def parse_args(argv=None):
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM's ML-1M split (unzipped ml-1m.zip)")
    ap.add_argument("--backbone", default="data/smollm2",
                    help="backbone directory; built with `collm-prepare backbone smollm2` when absent")
    ap.add_argument("--cf-dir", default="data/cf",
                    help="<cf-dir>/<name in lower case>/ holds each CF baseline's run (cf_model.pth, "
                         "checkpoint_best.pth, config.yaml); trained with train_configs/baseline_<name>_ml1m.yaml "
                         "on the whole training split when absent")
    ap.add_argument("--out", default="outputs/smollm2_study", help="run directories (one per row)")
    ap.add_argument("--json", default=None, help="rows as JSON (default <out>/results.json); the learning-curve "
                                                 "PNG and the markdown table are written beside it")
    ap.add_argument("--rows", nargs="+", default=list(ROW_KINDS), choices=ROW_KINDS,
                    help="kinds of rows to run (default: all); see above")
    ap.add_argument("--cf", nargs="+", default=list(CF_NAMES), choices=CF_NAMES,
                    help="CF encoders: their rows alone, CoLLM on each, CoLLM + cold start")
    ap.add_argument("--proj-tokens", nargs="+", type=int, default=[8],
                    help="model.proj_token_num values to try (LLM tokens per ID embedding)")
    ap.add_argument("--tune", nargs="+", default=["proj"], choices=list(TUNES),
                    help="what stage 2 tunes: proj, proj+lora, proj+cf (values to try)")
    ap.add_argument("--train-rows", nargs="+", type=int, default=[0] if cuda else [1600],
                    help="training-subset sizes to try (seeded sample; 0: all 33,891 rows; default 0 on CUDA, "
                         "1600 on CPU)")
    ap.add_argument("--epochs", nargs="+", type=int, default=[1], help="passes over the training subset (values)")
    ap.add_argument("--lr", nargs="+", type=float, default=[1e-3], help="stage-2 peak learning rates (values)")
    ap.add_argument("--init", default="base", choices=["base", "stage1"],
                    help="stage 2 starts from the backbone as loaded, or from stage 1's checkpoint (LoRA frozen "
                         "unless --tune proj+lora)")
    ap.add_argument("--stage1-rows", type=int, default=None, help="stage 1's training subset (default: the first "
                                                                  "--train-rows)")
    ap.add_argument("--stage1-epochs", type=int, default=1, help="stage 1's passes over its subset")
    ap.add_argument("--stage1-lr", type=float, default=3e-4, help="stage 1's peak learning rate (LoRA)")
    ap.add_argument("--test-rows", type=int, default=0, help="test rows scored; 0: all 7,331 (the default)")
    ap.add_argument("--valid-rows", type=int, default=0, help="validation rows scored; 0: all 10,401 (the default)")
    ap.add_argument("--eval-splits", nargs="+", default=["test", "valid"], choices=["test", "valid"],
                    help="splits the scoring runs score (a run per split, test first)")
    ap.add_argument("--curve-every", type=int, default=0 if cuda else 400,
                    help="training rows between validation points (learning curve, early stopping); 0: once per "
                         "pass over the subset")
    ap.add_argument("--curve-valid-rows", type=int, default=0 if cuda else 1000,
                    help="seeded validation sample scored at each point; 0: the whole split")
    ap.add_argument("--patience", type=int, default=2, help="validation points without improvement before stopping")
    ap.add_argument("--batch-size", type=int, default=16 if cuda else 4, help="training rows per step")
    ap.add_argument("--eval-batch-size", type=int, default=64 if cuda else 16, help="rows per scoring batch")
    ap.add_argument("--answer-score", default="yes_minus_no", choices=["yes_logit", "yes_minus_no"],
                    help="model.answer_score of every LLM row")
    ap.add_argument("--train-precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16"],
                    help="training precision: fp32 (run.amp=false; every CPU row made before 6 December 2026) or "
                         "bf16 (run.amp=true run.cpu_amp=true: autocast on CUDA and on CPUs with bf16 units); "
                         "default bf16 on CUDA, fp32 on CPU; scoring as --eval-dtype / --eval-amp say")
    ap.add_argument("--eval-amp", default="auto", choices=["auto", "off", "on"],
                    help="run.amp_scoring of the scoring runs: auto (bf16 autocast on CUDA, fp32 on CPU), on, off")
    ap.add_argument("--frozen-prefix", default="auto", choices=["auto", "off"],
                    help="run.frozen_prefix of training (stage 2 with LoRA frozen: the prompt before the first ID "
                         "slot without gradients; equal gradients, less time)")
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"], help="run.compile of training")
    ap.add_argument("--save-every-min", type=float, default=30.0,
                    help="training writes checkpoint_last.pth at least this often (run.save_every_minutes); a row "
                         "whose training was stopped resumes from it when the same command runs again")
    ap.add_argument("--eval-dtype", default="auto",
                    help="model.dtype of the scoring runs (auto: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--run-seed", nargs="+", type=int, default=[DEFAULT_RUN_SEED],
                    help="run.seed of training (initialisation, batch order); several values: a row each, named "
                         "with its seed; stage 1 uses the first")
    ap.add_argument("--seed", type=int, default=0, help="seed of the row samples (training subset, validation/test "
                                                        "samples)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of each step (OMP_NUM_THREADS); 0: torch's default")
    ap.add_argument("--rerun", action="store_true", help="run steps again even when <out> holds them finished")
    ap.add_argument("--dry-run", action="store_true", help="print each step's command; run nothing")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: rebuild the JSON, PNG and table from every row in --out")
    args = ap.parse_args(argv)
    args.cuda = cuda
    for flag in ("train_rows", "epochs", "proj_tokens", "lr"):
        if any(v < 0 or (v == 0 and flag != "train_rows") for v in getattr(args, flag)):
            ap.error(f"--{flag.replace('_', '-')} values must be positive")
    return args


@dataclass(frozen=True)
class Setting:
    """One trained LLM row: stage 1 (cf None) or CoLLM stage 2 on a CF encoder."""
    cf: str = None
    tokens: int = 1
    tune: str = "proj"
    train_rows: int = 0
    epochs: int = 1
    lr: float = 1e-3
    init: str = "base"
    seed: int = DEFAULT_RUN_SEED  # run.seed of training
    precision: str = "fp32"  # training: fp32 (run.amp=false; every row before 6 December 2026) or bf16 autocast
    batch: int = 4  # training rows per optimizer step (the study's 4 unless --batch-size says otherwise)

    def tag(self) -> str:
        rows = f"n{self.train_rows or 'all'}x{self.epochs}_lr{self.lr:g}"
        seed = "" if self.seed == DEFAULT_RUN_SEED else f"_seed{self.seed}"
        seed += ("" if self.precision == "fp32" else f"_{self.precision}") + ("" if self.batch == 4 else
                                                                              f"_b{self.batch}")
        if self.cf is None:
            return f"stage1_{rows}{seed}"
        return (f"collm-{self.cf.lower()}_t{self.tokens}_{self.tune}_{rows}" + ("_s1" if self.init == "stage1" else "")
                + seed)

    def label(self) -> str:
        rows = f"{self.train_rows or 'all'} rows x {self.epochs}, lr {self.lr:g}"
        seed = "" if self.seed == DEFAULT_RUN_SEED else f", seed {self.seed}"
        seed += ("" if self.precision == "fp32" else f", {self.precision} training") + (
            "" if self.batch == 4 else f", batch {self.batch}")
        if self.cf is None:
            return rows + seed
        return f"{self.tokens} tok, {self.tune}, {rows}" + (", from stage 1" if self.init == "stage1" else "") + seed

    def seed_flags(self):
        return ([] if self.seed == DEFAULT_RUN_SEED else ["--run-seed", str(self.seed)]) + (
            [] if self.precision == "fp32" else ["--train-precision", self.precision])


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.data = os.path.abspath(args.data)
        self.backbone = os.path.abspath(args.backbone)
        self.cf_dir = os.path.abspath(args.cf_dir)
        self.commit = git_commit(REPO)  # read once: the code every step of this invocation runs

    # ----- one step -----------------------------------------------------------
    def run(self, run_dir, script, cfg_path, opts):
        """Run one entry point into ``run_dir`` unless a finished run of the same command is there
        (``same_command``: paths compared relative to the checkout that ran it); returns its
        metrics.json (None on --dry-run). CPU seconds are the child's user + system time."""
        a = self.args
        argv = self.step_argv(run_dir, script, cfg_path, opts)
        record_path = os.path.join(run_dir, "bench_step.json")
        if a.dry_run:
            print("python " + " ".join(shlex.quote(x) for x in argv))
            return None
        if not a.rerun and os.path.isfile(record_path):
            with open(record_path) as fh:
                record = json.load(fh)
            if same_command(record.get("argv") or [], argv) and os.path.isfile(os.path.join(run_dir, "metrics.json")):
                print(f"== {os.path.relpath(run_dir, self.out)}: finished earlier, reused", flush=True)
                with open(os.path.join(run_dir, "metrics.json")) as fh:
                    return json.load(fh)
        launch = argv + self.resume_opts(run_dir, argv)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "bench_started.json"), "w") as fh:  # what resume_opts compares with
            json.dump({"argv": argv}, fh)
        print(f"\n== {os.path.relpath(run_dir, self.out)}: python {' '.join(launch)}", flush=True)
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}))
        start = time.time()
        returncode, cpu_s = self.launch(launch, env)
        wall_s = time.time() - start
        if returncode != 0:
            raise SystemExit(f"error: step {run_dir} failed (exit {returncode}); its log: {run_dir}/log.txt")
        with open(record_path, "w") as fh:
            json.dump({"argv": argv, "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1), "commit": self.commit,
                       "resumed": launch != argv,  # cpu_s / wall_s: the resumed part only
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, fh, indent=2)
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            return json.load(fh)

    def resume_opts(self, run_dir, argv):
        """[run.resume_ckpt_path=...] when ``run_dir`` holds an unfinished training run of the same
        command (its bench_started.json, a checkpoint_last.pth, no metrics.json), else []. A row
        stopped with its session (training writes checkpoint_last.pth at least every
        --save-every-min minutes) goes on from there; a resumed run ends with an uninterrupted
        one's weights (tests/test_resume.py)."""
        last = os.path.join(run_dir, "checkpoint_last.pth")
        started = os.path.join(run_dir, "bench_started.json")
        if self.args.rerun or "run.evaluate=true" in argv or not os.path.isfile(last) or \
                os.path.isfile(os.path.join(run_dir, "metrics.json")) or not os.path.isfile(started):
            return []
        with open(started) as fh:
            if not same_command(json.load(fh).get("argv") or [], argv):
                return []
        print(f"== {os.path.relpath(run_dir, self.out)}: unfinished, resuming from {last}", flush=True)
        return [f"run.resume_ckpt_path={last}"]

    def step_argv(self, run_dir, script, cfg_path, opts):
        """The entry point's command line (after ``python``) of one step."""
        return [script, "--cfg-path", cfg_path, "--options", f"run.output_dir={run_dir}",
                f"run.device={self.args.device}", "run.num_workers=0", *opts]

    @staticmethod
    def launch(argv, env):
        """Run ``python argv`` from the repository root: (exit status, the child's user + system CPU seconds)."""
        before = _cpu_children()
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env)
        return proc.returncode, _cpu_children() - before

    # ----- options shared by the steps ---------------------------------------
    def data_opts(self, train_rows=0, valid_rows=0, test_rows=0):
        sample = {"train": train_rows, "valid": valid_rows, "test": test_rows}
        return ([f"datasets.movielens_ood.path={self.data}", f"datasets.movielens_ood.sample_seed={self.args.seed}"]
                + [f"datasets.movielens_ood.sample_rows.{k}={v}" for k, v in sample.items() if v])

    def llm_opts(self, seed=DEFAULT_RUN_SEED):
        a = self.args
        return [f"model.llama_model={self.backbone}", f"model.answer_score={a.answer_score}",
                f"run.batch_size_eval={a.eval_batch_size}", f"run.seed={seed}", f"run.amp_scoring={a.eval_amp}"]

    def train_opts(self, s: Setting):
        """Training on the subset, a validation point every --curve-every rows (iters_per_epoch);
        the final scoring is a separate evaluate-only run."""
        a = self.args
        if a.curve_every:
            rows = s.train_rows or self.full_train_rows()
            iters = max(1, math.ceil(a.curve_every / a.batch_size))
            points = max(1, math.ceil(rows * s.epochs / (iters * a.batch_size)))
            schedule = [f"run.max_epoch={points}", f"run.iters_per_epoch={iters}"]
        else:  # a point per pass
            schedule = [f"run.max_epoch={s.epochs}", "run.iters_per_epoch=null"]
        return schedule + [
            f"run.batch_size_train={a.batch_size}", "run.accum_grad_iters=1", f"run.init_lr={s.lr:g}",
            f"run.min_lr={s.lr / 10:g}", "run.warmup_steps=10", "run.warmup_lr=1e-05", "run.weight_decay=0.0",
            f"run.patience={a.patience}", "run.test_splits=[]", "run.log_freq=25",
            f"run.amp={'true' if s.precision == 'bf16' else 'false'}",
            f"run.cpu_amp={'true' if s.precision == 'bf16' else 'false'}", f"run.frozen_prefix={a.frozen_prefix}",
            f"run.compile={a.compile}", f"run.save_every_minutes={a.save_every_min:g}"]

    def full_train_rows(self):
        """Rows of the whole training split (the schedule's size when --train-rows is 0)."""
        sys.path.insert(0, REPO)
        from collm_faissret.datasets.collm_data import _read

        return len(_read(self.data, "train_ood2")[0])

    def eval_steps(self, row_dir, script, cfg_path, opts):
        """Evaluate-only scoring of --eval-splits (full splits unless --test-rows / --valid-rows), a run
        per split, test first: a study cut short still has its test rows."""
        a = self.args
        for split in [s for s in ("test", "valid") if s in a.eval_splits]:
            self.run(os.path.join(row_dir, f"eval_{split}"), script, cfg_path,
                     opts + self.data_opts(valid_rows=a.valid_rows, test_rows=a.test_rows)
                     + ["run.evaluate=true", f"run.valid_splits=[{split if split == 'valid' else ''}]",
                        f"run.test_splits=[{split if split == 'test' else ''}]"])

    def write_row(self, row_dir, row):
        if not self.args.dry_run:
            os.makedirs(row_dir, exist_ok=True)
            with open(os.path.join(row_dir, "row.json"), "w") as fh:
                json.dump(row, fh, indent=2)

    def command(self, *flags):
        """The real_backbone.py command line that reproduces one row."""
        a = self.args
        parts = ["python", "bench/real_backbone.py", *flags, "--data", a.data, "--backbone", a.backbone,
                 "--cf-dir", a.cf_dir, "--out", a.out]
        for flag, value, default in (("--test-rows", a.test_rows, 0), ("--valid-rows", a.valid_rows, 0),
                                     ("--eval-dtype", a.eval_dtype, "auto"), ("--seed", a.seed, 0),
                                     ("--eval-amp", a.eval_amp, "auto"), ("--frozen-prefix", a.frozen_prefix, "auto"),
                                     ("--compile", a.compile, "off"),
                                     ("--answer-score", a.answer_score, "yes_minus_no")):
            if value != default:
                parts += [flag, str(value)]
        if set(a.eval_splits) != {"test", "valid"}:
            parts += ["--eval-splits", *a.eval_splits]
        return " ".join(shlex.quote(str(p)) for p in parts)

    def train_flags(self):
        a = self.args
        return ["--curve-every", str(a.curve_every), "--curve-valid-rows", str(a.curve_valid_rows), "--patience",
                str(a.patience), "--batch-size", str(a.batch_size), "--eval-batch-size", str(a.eval_batch_size)]

    # ----- rows ----------------------------------------------------------------
    def cf_run(self, name):
        """<cf-dir>/<name>/: the baseline trained on the whole training split (trained here when absent)."""
        run_dir = os.path.join(self.cf_dir, name.lower())
        if not os.path.isfile(os.path.join(run_dir, "cf_model.pth")):
            self.run(run_dir, "baseline_train.py", _cfg(f"baseline_{name.lower()}_ml1m.yaml"),
                     [f"datasets.movielens_ood.path={self.data}", "run.test_splits=[]"])
        return run_dir

    def cf_row(self, name):
        run_dir = self.cf_run(name)
        row_dir = os.path.join(self.out, f"cf-{name.lower()}")
        self.write_row(row_dir, {"kind": "cf", "cf": name, "baseline_dir": repo_path(run_dir),
                                 "command": self.command("--rows", "cf", "--cf", name)})
        # the run's own resolved config: a checkpoint's shape and settings are what it was trained with
        self.eval_steps(row_dir, "baseline_train.py", os.path.join(run_dir, "config.yaml"),
                        [f"model.ckpt={os.path.join(run_dir, 'checkpoint_best.pth')}"])

    def zero_shot_row(self):
        row_dir = os.path.join(self.out, "zero-shot")
        self.write_row(row_dir, {"kind": "zero-shot", "command": self.command("--rows", "zero-shot")})
        self.eval_steps(row_dir, "train_collm.py", _cfg("collm_stage1_ml1m.yaml"),
                        self.llm_opts() + [f"model.dtype={self.args.eval_dtype}"])

    def stage1_setting(self):
        a = self.args
        return Setting(None, train_rows=a.train_rows[0] if a.stage1_rows is None else a.stage1_rows,
                       epochs=a.stage1_epochs, lr=a.stage1_lr, seed=a.run_seed[0], precision=a.train_precision,
                       batch=a.batch_size)

    def stage1_row(self):
        a, s = self.args, self.stage1_setting()
        row_dir = os.path.join(self.out, s.tag())
        self.write_row(row_dir, {"kind": "stage1", "setting": asdict(s), "command": self.command(
            "--rows", "stage1", "--stage1-rows", str(s.train_rows), "--stage1-epochs", str(s.epochs),
            "--stage1-lr", f"{s.lr:g}", *s.seed_flags(), *self.train_flags())})
        opts = self.llm_opts(s.seed)
        self.run(os.path.join(row_dir, "train"), "train_collm.py", _cfg("collm_stage1_ml1m.yaml"),
                 opts + self.data_opts(s.train_rows, a.curve_valid_rows) + self.train_opts(s))
        self.eval_steps(row_dir, "train_collm.py", _cfg("collm_stage1_ml1m.yaml"),
                        opts + [f"model.dtype={a.eval_dtype}",
                                f"model.ckpt={os.path.join(row_dir, 'train', 'checkpoint_best.pth')}"])

    def collm_model_opts(self, s: Setting):
        """The model keys of one CoLLM setting (training and scoring runs alike)."""
        opts = [f"model.rec_config.pretrained_path={os.path.join(self.cf_run(s.cf), 'cf_model.pth')}",
                f"model.proj_token_num={s.tokens}"] + [f"model.{k}={v}" for k, v in TUNES[s.tune].items()]
        if s.init == "stage1":
            ckpt = os.path.join(self.out, self.stage1_setting().tag(), "train", "checkpoint_best.pth")
            opts += ["model.lora_config.use_lora=true", f"model.ckpt={ckpt}"]
        else:  # no stage-1 LoRA: LoRA only when stage 2 tunes it
            opts += ["model.ckpt=null", f"model.lora_config.use_lora={'true' if s.tune == 'proj+lora' else 'false'}"]
        return opts

    def collm_flags(self, s: Setting, kind):
        return ["--rows", kind, "--cf", s.cf, "--proj-tokens", str(s.tokens), "--tune", s.tune, "--train-rows",
                str(s.train_rows), "--epochs", str(s.epochs), "--lr", f"{s.lr:g}", "--init", s.init,
                *(["--stage1-rows", str(self.stage1_setting().train_rows), "--stage1-epochs",
                   str(self.args.stage1_epochs), "--stage1-lr", f"{self.args.stage1_lr:g}"]
                  if s.init == "stage1" else []), *s.seed_flags(), *self.train_flags()]

    def collm_row(self, s: Setting):
        a = self.args
        row_dir = os.path.join(self.out, s.tag())
        self.write_row(row_dir, {"kind": "collm", "cf": s.cf, "setting": asdict(s),
                                 "command": self.command(*self.collm_flags(s, "collm"))})
        if s.init == "stage1" and not os.path.isfile(os.path.join(self.out, self.stage1_setting().tag(), "train",
                                                                 "checkpoint_best.pth")):
            self.stage1_row()
        cfg = _cfg(f"collm_stage2_{s.cf.lower()}_ml1m.yaml")
        model = self.collm_model_opts(s)
        self.run(os.path.join(row_dir, "train"), "train_collm.py", cfg,
                 self.llm_opts(s.seed) + model + self.data_opts(s.train_rows, a.curve_valid_rows) + self.train_opts(s))
        self.eval_steps(row_dir, "train_collm.py", cfg, self.scoring_opts(row_dir, model))

    def scoring_opts(self, row_dir, model):
        ckpt = os.path.join(row_dir, "train", "checkpoint_best.pth")
        return self.llm_opts() + [o for o in model if not o.startswith("model.ckpt=")] + [
            f"model.ckpt={ckpt}", f"model.dtype={self.args.eval_dtype}"]

    def cold_row(self, s: Setting):
        row_dir = os.path.join(self.out, s.tag())
        if "collm" not in self.args.rows:  # its training run (reused when finished)
            self.collm_row(s)
        cold_dir = os.path.join(self.out, s.tag() + "+cold")
        self.write_row(cold_dir, {"kind": "cold", "cf": s.cf, "setting": asdict(s), "trained_in": s.tag(),
                                  "command": self.command(*self.collm_flags(s, "cold"))})
        # the CF encoder as trained (proj+cf: the checkpoint's), frozen for scoring; cold users borrow vectors
        model = [o.replace("model.freeze_rec=false", "model.freeze_rec=true") for o in self.collm_model_opts(s)]
        cold = [f"model.cold_start.{k}={v}" for k, v in COLD_START.items()]
        self.eval_steps(cold_dir, "train_collm.py", _cfg(f"collm_stage2_{s.cf.lower()}_ml1m.yaml"),
                        self.scoring_opts(row_dir, model) + cold)

    def settings(self):
        a = self.args
        return [Setting(cf, tok, tune, rows, ep, lr, a.init, seed, a.train_precision, a.batch_size)
                for cf, tok, tune, rows, ep, lr, seed in
                itertools.product(a.cf, a.proj_tokens, a.tune, a.train_rows, a.epochs, a.lr, a.run_seed)]


# ----- the table ----------------------------------------------------------------
def load_rows(out):
    """Every row found in <out>: its metrics from the scoring runs, training curve and CPU time."""
    rows = []
    if not os.path.isdir(out):
        return rows
    for entry in sorted(os.listdir(out)):
        row_dir = os.path.join(out, entry)
        path = os.path.join(row_dir, "row.json")
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            spec = json.load(fh)
        row = _scored(row_dir, spec, out)
        if row is not None:
            rows.append(row)
    return rows


def _scored(row_dir, spec, out):
    metrics, cpu_s, wall_s, test_rows_seen, commits = {}, 0.0, 0.0, None, {}
    for step in ("eval_test", "eval_valid"):
        m, rec = _step(os.path.join(row_dir, step))
        if m is None:
            continue
        commits[step] = rec.get("commit")
        cpu_s, wall_s = cpu_s + rec["cpu_s"], wall_s + rec["wall_s"]
        for split in ("test", "valid"):
            if m.get(split):
                metrics[split] = m[split]
        if m.get("test"):
            test_rows_seen = os.path.join(row_dir, step, "predictions_test.csv")
    kind = spec["kind"]
    if not metrics and kind not in ("collm", "stage1"):
        return None
    test, valid = metrics.get("test") or {}, metrics.get("valid") or {}
    row = {"name": None, "kind": kind, "test_auc": test.get("auc"), "test_uauc": test.get("uauc"),
           "test_warm_auc": (test.get("warm") or {}).get("auc"), "test_cold_auc": (test.get("cold") or {}).get("auc"),
           "test_rows": test.get("n_rows"), "valid_auc": valid.get("auc"), "valid_uauc": valid.get("uauc"),
           "valid_rows": valid.get("n_rows"), "train_rows": None, "epochs": None, "cpu_hours": None,
           "wall_hours": None, "command": spec["command"], "run_dir": repo_path(row_dir),
           "predictions_test": test_rows_seen and repo_path(test_rows_seen)}
    if kind == "cf":
        row["cf"] = spec["cf"]
        baseline_dir = from_repo(spec["baseline_dir"])
        row["train_rows"] = _train_rows(os.path.join(baseline_dir, "log.txt"))
        m, _ = _step(baseline_dir, need_record=False)
        row["epochs"] = None if not m or m.get("best_epoch") is None else m["best_epoch"] + 1
    elif kind in ("stage1", "collm", "cold"):
        s = spec["setting"]
        train_dir = os.path.join(out, spec.get("trained_in", os.path.basename(row_dir)), "train")
        m, rec = _step(train_dir)
        curve = _curve(train_dir)
        if m is None and not curve:
            return None
        if m is None or not metrics:  # training, or trained and not scored yet: its learning curve only
            row["kind"] = "unscored"
        if rec is not None:
            cpu_s, wall_s = cpu_s + rec["cpu_s"], wall_s + rec["wall_s"]
            commits = {"train": rec.get("commit"), **commits}
        row.update(cf=spec.get("cf"), setting=s, train_rows=_train_rows(os.path.join(train_dir, "log.txt")),
                   epochs=s["epochs"], rows_seen=curve[-1][0] if curve else None, curve=curve,
                   best_point=(m or {}).get("best_epoch"), curve_valid_auc=(m or {}).get("best_valid_auc"),
                   curve_valid_rows=_config_int(train_dir, "datasets.movielens_ood.sample_rows.valid"))
    row["cpu_hours"] = round(cpu_s / 3600, 3)
    row["wall_hours"] = round(wall_s / 3600, 3)
    # None: a step recorded before commits were (or run outside a git checkout)
    row["commits"] = commits
    return row


def _step(run_dir, need_record=True):
    """(metrics.json, bench_step.json) of a finished step, else (None, None)."""
    mpath, rpath = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "bench_step.json")
    if not os.path.isfile(mpath) or (need_record and not os.path.isfile(rpath)):
        return None, None
    with open(mpath) as fh:
        m = json.load(fh)
    rec = None
    if os.path.isfile(rpath):
        with open(rpath) as fh:
            rec = json.load(fh)
    return m, rec


def _train_rows(log_path):
    """Training rows the run loaded (its log's data line)."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path) as fh:
        found = re.findall(r"INFO data .*?: train (\d+),", fh.read())
    return int(found[-1]) if found else None


def _config_int(run_dir, key):
    """An integer of a run's resolved config.yaml (dotted key), or None."""
    from omegaconf import OmegaConf

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    value = OmegaConf.select(OmegaConf.load(path), key)
    return None if value is None else int(value)


def _curve(train_dir):
    """[[training rows seen, validation AUC on the curve sample], ...] from metrics.jsonl."""
    path = os.path.join(train_dir, "metrics.jsonl")
    batch = _config_int(train_dir, "run.batch_size_train")
    if not os.path.isfile(path) or batch is None:
        return []
    with open(path) as fh:
        return [[r["step"] * batch, round(r["auc"], 4)] for r in map(json.loads, fh) if r.get("auc") is not None]


def name_rows(rows):
    """Names: CF rows by registry name; per CF encoder the CoLLM setting with the best validation AUC
    (full split first) is CoLLM-<cf> and its cold-start twin CoLLM-<cf>+cold; the best stage-1
    setting is stage1; other settings keep theirs in the name ("selected": false)."""
    def key(r):
        return (r["valid_rows"] is not None and r["valid_auc"] is not None, r["valid_rows"] or 0,
                r["valid_auc"] if r["valid_auc"] is not None else r.get("curve_valid_auc") or -1.0)

    best = {}
    for r in rows:
        group = {"collm": ("collm", r.get("cf")), "stage1": ("stage1", None)}.get(r["kind"])
        if group and (group not in best or key(r) > key(best[group])):
            best[group] = r
    chosen = {id(r) for r in best.values()}
    chosen_settings = {(r.get("cf"), json.dumps(r["setting"], sort_keys=True)) for r in best.values()
                       if r["kind"] == "collm"}
    for r in rows:
        if r["kind"] == "cf":
            r["name"], r["selected"] = r["cf"], True
        elif r["kind"] == "zero-shot":
            r["name"], r["selected"] = "zero-shot", True
        elif r["kind"] == "stage1":
            r["selected"] = id(r) in chosen
            r["name"] = "stage1" if r["selected"] else f"stage1 ({_label(r)})"
        else:
            base = f"CoLLM-{r['cf']}" + ("+cold" if r["kind"] == "cold" else "")
            r["selected"] = (id(r) in chosen if r["kind"] == "collm" else
                             (r["cf"], json.dumps(r["setting"], sort_keys=True)) in chosen_settings)
            r["name"] = base if r["selected"] else f"{base} ({_label(r)})"
    cf_rows = {r["cf"]: r for r in rows if r["kind"] == "cf"}
    for r in rows:  # the CF model alone on the same rows, beside each CoLLM row
        cf = cf_rows.get(r.get("cf"))
        if r["kind"] in ("collm", "cold") and cf is not None:
            same_test = cf["test_rows"] == r["test_rows"]
            same_valid = cf["valid_rows"] == r["valid_rows"]
            r["cf_test_auc"] = cf["test_auc"] if same_test else None
            r["cf_test_uauc"] = cf["test_uauc"] if same_test else None
            r["cf_valid_auc"] = cf["valid_auc"] if same_valid else None
    order = {"zero-shot": (0,), "stage1": (1,)}

    def sort_key(r):
        if r["kind"] in order:
            return order[r["kind"]] + (not r["selected"], r["name"])
        cf = CF_NAMES.index(r["cf"]) if r["cf"] in CF_NAMES else 99
        return (2, cf, not r["selected"], ("cf", "collm", "cold").index(r["kind"]), r["name"])

    rows.sort(key=sort_key)
    return rows


def _label(r):
    s = r["setting"]
    return Setting(**s).label()


def goals(rows):
    named = {r["name"]: r for r in rows if r.get("selected")}

    def test(name, key="test_auc"):
        r = named.get(name)
        return None if r is None else r.get(key)

    out = {}
    for cf in ("MF", "SASRec"):
        if test(f"CoLLM-{cf}") is not None and test(cf) is not None:
            same = named[f"CoLLM-{cf}"]["test_rows"] == named[cf]["test_rows"]
            out[f"CoLLM-{cf} >= {cf} on the same test rows"] = same and test(f"CoLLM-{cf}") >= test(cf)
    if test("CoLLM-MF") is not None:
        out[f"CoLLM-MF >= {PAPER_COLLM_MF} (Vicuna-7B CoLLM-MF)"] = test("CoLLM-MF") >= PAPER_COLLM_MF
    if test("stage1") is not None:
        out["stage 1 >= 0.60"] = test("stage1") >= 0.60
    llm = [r for r in rows if r["kind"] in ("collm", "cold") and r["test_auc"] is not None]
    if llm:
        top = max(llm, key=lambda r: r["test_auc"])
        out[f"moonshot: best CoLLM row >= {FAISSRET_TUNED[0]} AUC and >= {FAISSRET_TUNED[1]} UAUC ({top['name']})"] = (
            top["test_auc"] >= FAISSRET_TUNED[0] and top["test_uauc"] >= FAISSRET_TUNED[1])
    return out


def markdown(rows):
    def f(x):
        return f"{x:.4f}" if isinstance(x, float) else "-"

    head = ("| row | test AUC | UAUC | warm AUC | cold AUC | test rows | valid AUC | CF alone test AUC | "
            "train rows | epochs | CPU h |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        valid_rows = "" if r["valid_rows"] in (None, 10401) else f" ({r['valid_rows']} rows)"
        lines.append(f"| {r['name']} | {f(r['test_auc'])} | {f(r['test_uauc'])} | {f(r['test_warm_auc'])} | "
                     f"{f(r['test_cold_auc'])} | {r['test_rows'] or '-'} | {f(r['valid_auc'])}{valid_rows} | "
                     f"{f(r.get('cf_test_auc'))} | {r['train_rows'] or '-'} | {r['epochs'] or '-'} | "
                     f"{r['cpu_hours']:.3f} |")
    return "\n".join(lines)


def keep_predictions(rows, folder):
    """Each row's predictions_test.csv beside the JSON (gzipped, <folder>/<name>.csv.gz), so that
    anyone can recompute its metrics without the run directories."""
    import gzip
    import shutil

    os.makedirs(folder, exist_ok=True)
    for r in rows:
        if r.get("predictions_test"):
            slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", r["name"]).strip("_")
            target = os.path.join(folder, f"{slug}.csv.gz")
            with open(from_repo(r["predictions_test"]), "rb") as src, gzip.GzipFile(target, "wb", mtime=0) as dst:
                shutil.copyfileobj(src, dst)
            r["predictions_test"] = repo_path(target)


def cf_on_curve_sample(rows, train_dir):
    """Each CF row's validation AUC on the learning curves' validation sample (the seeded draw of
    datasets.*.sample_rows.valid that the training runs scored), from its whole-split predictions."""
    import pandas as pd
    from omegaconf import OmegaConf
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, REPO)
    from collm_faissret.datasets.collm_data import _read

    cfg = OmegaConf.load(os.path.join(train_dir, "config.yaml")).datasets.movielens_ood
    n = (cfg.get("sample_rows") or {}).get("valid")
    if not n:
        return
    valid = _read(cfg.path, "valid_ood2")[0]
    keep = np.sort(np.random.RandomState(cfg.sample_seed).choice(len(valid), n, replace=False))
    sample = valid.iloc[keep][["uid", "iid"]].drop_duplicates()
    for r in rows:
        path = os.path.join(from_repo(r["run_dir"]), "eval_valid", "predictions_valid.csv")
        if r["kind"] == "cf" and r["valid_rows"] == len(valid) and os.path.isfile(path):
            scored = pd.read_csv(path).merge(sample, on=["uid", "iid"])
            r["curve_sample_valid_auc"] = round(float(roc_auc_score(scored["label"], scored["score"])), 4)


def plot(rows, path):
    """Validation AUC (the curve sample) against training rows seen, one line per trained row;
    each CF model alone as a dashed level (its full-validation AUC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {}
    for r in rows:
        if r["kind"] in ("collm", "stage1", "unscored") and r.get("curve"):
            xs, ys = zip(*r["curve"])
            line, = ax.plot(xs, ys, marker="o", label=r["name"], alpha=1.0 if r["selected"] else 0.5)
            colors.setdefault(r.get("cf"), line.get_color())
    for r in rows:
        if r["kind"] == "cf" and r["valid_auc"] is not None:
            on_sample = r.get("curve_sample_valid_auc") is not None
            ax.axhline(r["curve_sample_valid_auc"] if on_sample else r["valid_auc"], ls="--", lw=1,
                       color=colors.get(r["cf"], f"C{len(colors) + CF_NAMES.index(r['cf'])}"),
                       label=f"{r['name']} alone ({'the same sample' if on_sample else 'whole validation split'})")
    n = sorted({r.get("curve_valid_rows") for r in rows if r.get("curve")} - {None})
    ax.set_xlabel("training rows seen")
    ax.set_ylabel(f"validation AUC ({', '.join(map(str, n)) or 'all'}-row seeded sample)")
    ax.set_title("SmolLM2-135M CoLLM on ML-1M: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(args) -> int:
    out = os.path.abspath(args.out)
    found = load_rows(out)
    rows = name_rows([r for r in found if r["kind"] != "unscored"])
    trained = [r for r in found if r.get("curve")]
    if trained:  # the CF models on the learning curves' validation sample
        cf_on_curve_sample(rows, os.path.join(from_repo(trained[0]["run_dir"]), "train"))
    path = args.json or os.path.join(out, "results.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stem = os.path.splitext(path)[0]
    keep_predictions(rows, stem + "_predictions")
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=2)
    table = markdown(rows)
    with open(stem + ".md", "w") as fh:
        fh.write(table + "\n")
    unscored = [r for r in found if r["kind"] == "unscored"]
    for r in unscored:  # drawn, not listed
        r.update(name=f"{os.path.basename(r['run_dir'])} (not scored yet)", selected=False)
    curves = [r for r in rows + unscored if r.get("curve")]
    if curves:
        plot(rows + unscored, stem + ".png")
    print("\n" + table)
    for r in curves:
        print(f"learning curve {r['name']}: " + ", ".join(f"{n} rows {auc:.4f}" for n, auc in r["curve"]))
    for goal, met in goals(rows).items():
        print(f"goal {'met    ' if met else 'not met'}: {goal}")
    print(f"wrote {path} ({len(rows)} rows)" + (f", {stem}.png" if curves else ""))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    if not os.path.isdir(args.backbone) and {"zero-shot", "stage1", "collm", "cold"} & set(args.rows):
        sys.path.insert(0, REPO)
        from collm_faissret.data_prep.backbone import build

        build("smollm2", args.backbone)
    bench = Bench(args)
    os.makedirs(bench.out, exist_ok=True)
    kinds = set(args.rows)
    if "cf" in kinds:
        for cf in args.cf:
            bench.cf_row(cf)
    if "zero-shot" in kinds:
        bench.zero_shot_row()
    if "stage1" in kinds:
        bench.stage1_row()
    for s in bench.settings():
        if "collm" in kinds:
            bench.collm_row(s)
        if "cold" in kinds:
            bench.cold_row(s)
    return 0 if args.dry_run else collect(args)


def _cfg(name):
    return os.path.join(REPO, "train_configs", name)


# ----- paths that read the same from any checkout ------------------------------------
def repo_path(path):
    """``path`` relative to the repository root when it lies under it, else absolute: how the
    results JSON and row.json name files, so that they read the same from another checkout."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if _under(path, REPO) else path


def from_repo(path):
    """A path as ``repo_path`` wrote it (or an absolute one) -> absolute, for this checkout."""
    return os.path.join(REPO, path)


def same_command(recorded, argv):
    """Whether a finished step's recorded argv is ``argv`` wherever the checkout that ran it lay.

    A record keeps the absolute argv that ran (run directory, data, backbone, configs, CF
    checkpoints). Paths under that checkout's root are compared relative to it, and ``argv``'s
    under this repository relative to this one; the record does not name its root, so each
    root that its paths could share with ``argv``'s (this repository's among them) is tried.
    A path outside the checkout compares as it is.
    """
    mine = [_relative_in(t, REPO) for t in argv]
    return any([_relative_in(t, root) for t in recorded] == mine for root in _roots_of(recorded, argv))


def _roots_of(recorded, argv):
    """This repository's root and, for each element of ``argv`` holding a path under it at
    relative path p, the recorded element's path at the same place less a trailing /p."""
    roots = {REPO}
    if len(recorded) != len(argv):
        return roots
    for old, new in zip(recorded, argv):
        key, eq, path = _split_path(new)
        old_key, old_eq, old_path = _split_path(old)
        if _under(path, REPO) and (key, eq) == (old_key, old_eq):
            rel = os.path.relpath(path, REPO)
            if old_path.endswith(os.sep + rel):
                roots.add(old_path[:-len(rel) - 1])
    return roots


def _relative_in(token, root):
    """An argv element (a path, ``key=path`` or anything else) with a path under ``root`` made
    relative to it; any other element as it is."""
    key, eq, path = _split_path(token)
    return key + eq + os.path.relpath(path, root) if _under(path, root) else token


def _split_path(token):
    """(key, "=", value) of a ``key=value`` option, ("", "", token) of anything else."""
    if "=" in token and not token.startswith(os.sep):
        return token.partition("=")
    return "", "", token


def _under(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def git_commit(root):
    """The checkout's commit (40 hex digits), with "+dirty" when tracked files differ from it; None
    outside a git checkout. A row's command reproduces it on the commit its runs record."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    sys.exit(main())
