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
  hybrid      the collm settings trained and scored with model.answer_score hybrid (the LLM's
              log-odds plus a learned weight times the CF model's own logit): CoLLM-<cf> (hybrid)
  rank        retrieve-then-rank at K=50 (retrieve_rank_ml1m.yaml) with the checkpoint of each
              setting's row (collm; hybrid with --rows hybrid; both with both): recall, NDCG and
              hit rate of the LLM's order against the retriever's, as the row's "ranking"; not
              for target-aware encoders (DIN: its user vector cannot query an item index)

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
the learning curve, "seeds" (on a setting run with several run seeds: each seed's test and
validation AUC) and "ranking" (rank rows); beside it <json stem>.png (validation AUC against
training rows seen) and <json stem>.md (the table). Rows of an earlier --json whose run
directories are not in <out> are kept (bench/study_table.py). Finished runs are kept in <out>/<row>/ and reused
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
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # bench/: study_table (after all else)
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from study_table import CF_NAMES, DEFAULT_RUN_SEED, Setting, _under, collect, repo_path  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KINDS = ("cf", "zero-shot", "stage1", "collm", "cold", "hybrid", "rank")
DEFAULT_ROWS = ("cf", "zero-shot", "stage1", "collm", "cold")
# what stage 2 tunes -> the model's freeze_* flags (CoLLM's tuning strategies)
TUNES = {"proj": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "true"},
         "proj+lora": {"freeze_proj": "false", "freeze_lora": "false", "freeze_rec": "true"},
         "proj+cf": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "false"}}
RANK_K = 50  # retrieve-then-rank: candidates per test user (LLM calls per user)
COLD_START = {"enabled": "true", "neighbors_weight": 1.0, "history_weight": 0.0, "global_weight": 0.0,
              "user_repr": "tfidf", "n_neighbors": 50, "history_len": 20, "warm_alpha": 0.3, "cold_items": "false"}


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
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROW_KINDS,
                    help=f"kinds of rows to run (default: {' '.join(DEFAULT_ROWS)}); see above")
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
                    help="model.answer_score of every LLM row but the hybrid ones")
    ap.add_argument("--train-precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16"],
                    help="training precision: fp32 (run.amp=false; every CPU row made before 6 December 2026) or "
                         "bf16 (run.amp=true run.cpu_amp=true: autocast on CUDA and on CPUs with bf16 units); "
                         "default bf16 on CUDA, fp32 on CPU; scoring as --eval-dtype / --eval-amp say")
    ap.add_argument("--train-negatives", type=int, default=0,
                    help="datasets.*.train_negatives of the CoLLM rows' training: per training row, this many "
                         "extra rows labelled 0 of items the user never rated (0: the rated rows only, as CoLLM)")
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
        earlier = self.earlier_wall_s(run_dir) if launch != argv else 0.0
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "bench_started.json"), "w") as fh:  # what resume_opts compares with
            json.dump({"argv": argv, "earlier_wall_s": earlier, "started_at": time.time()}, fh)
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
                       "earlier_wall_s": round(earlier, 1),  # the parts before it, up to their last checkpoint
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

    @staticmethod
    def earlier_wall_s(run_dir):
        """Wall seconds of a stopped step's earlier parts up to its checkpoint_last.pth: from its
        start (bench_started.json's started_at; the file's time when it has none) to the
        checkpoint file's time, plus the parts before that one. A stopped part records nothing
        itself; what ran after its last checkpoint is not counted. Measured where the part ran:
        a directory copied elsewhere before resuming has new file times."""
        started = os.path.join(run_dir, "bench_started.json")
        with open(started) as fh:
            record = json.load(fh)
        start = record.get("started_at", os.path.getmtime(started))
        part = os.path.getmtime(os.path.join(run_dir, "checkpoint_last.pth")) - start
        return record.get("earlier_wall_s", 0.0) + max(0.0, part)

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

    def llm_opts(self, seed=DEFAULT_RUN_SEED, score=None):
        a = self.args
        return [f"model.llama_model={self.backbone}", f"model.answer_score={score or a.answer_score}",
                f"run.batch_size_eval={a.eval_batch_size}", f"run.seed={seed}", f"run.amp_scoring={a.eval_amp}"]

    def train_opts(self, s: Setting):
        """Training on the subset, a validation point every --curve-every rows (iters_per_epoch);
        the final scoring is a separate evaluate-only run."""
        a = self.args
        if a.curve_every:
            rows = (s.train_rows or self.full_train_rows()) * (1 + s.negatives)  # each row and its negatives
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
                       batch=a.batch_size, score=a.answer_score)

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
        """CoLLM stage 2 of setting ``s``: trained, then scored (a hybrid row when s.score is hybrid)."""
        a = self.args
        row_dir = os.path.join(self.out, s.tag())
        kind = "hybrid" if s.score == "hybrid" else "collm"
        self.write_row(row_dir, {"kind": kind, "cf": s.cf, "setting": asdict(s),
                                 "command": self.command(*self.collm_flags(s, kind))})
        if s.init == "stage1" and not os.path.isfile(os.path.join(self.out, self.stage1_setting().tag(), "train",
                                                                 "checkpoint_best.pth")):
            self.stage1_row()
        cfg = _cfg(f"collm_stage2_{s.cf.lower()}_ml1m.yaml")
        model = self.collm_model_opts(s)
        self.run(os.path.join(row_dir, "train"), "train_collm.py", cfg,
                 self.llm_opts(s.seed, s.score) + model + self.data_opts(s.train_rows, a.curve_valid_rows)
                 + self.train_opts(s)
                 + ([f"datasets.movielens_ood.train_negatives={s.negatives}"] if s.negatives else []))
        self.eval_steps(row_dir, "train_collm.py", cfg, self.scoring_opts(row_dir, model, s))

    def scoring_opts(self, row_dir, model, s: Setting):
        ckpt = os.path.join(row_dir, "train", "checkpoint_best.pth")
        return self.llm_opts(score=s.score) + [o for o in model if not o.startswith("model.ckpt=")] + [
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
                        self.scoring_opts(row_dir, model, s) + cold)

    def rank_row(self, s: Setting):
        """Retrieve-then-rank at K=50 on the test users (those of the --test-rows sample when it is
        given) with setting ``s``'s checkpoint (trained first when absent), in <row>/rank_k50/: the
        retriever's top 50 per user (the CF model's item vectors; cold users borrow vectors where
        the CF model has a user table) reordered by the LLM. Its metrics.json becomes the row's
        "ranking"."""
        target_aware, cold_start = cf_capabilities(s.cf)
        if target_aware:
            print(f"== rank: skipped for {s.cf} (target-aware: its user vector cannot query an item index)")
            return
        row_dir = os.path.join(self.out, s.tag())
        kind = "hybrid" if s.score == "hybrid" else "collm"
        if kind not in self.args.rows:
            self.collm_row(s)
        model = [o.replace("model.freeze_rec=false", "model.freeze_rec=true") for o in self.collm_model_opts(s)]
        cold = "true" if cold_start else "false"  # a per-user table cold users can borrow into
        rank_dir = os.path.join(row_dir, f"rank_k{RANK_K}")
        if not self.args.dry_run:  # how the ranking was made (study_table puts it on the row)
            os.makedirs(rank_dir, exist_ok=True)
            with open(os.path.join(rank_dir, "rank.json"), "w") as fh:
                rows = ["rank"] if kind == "collm" else ["hybrid", "rank"]
                flags = ["--rows", *rows, *self.collm_flags(s, kind)[2:]]
                json.dump({"command": self.command(*flags), "cold_start": cold == "true"}, fh, indent=2)
        self.run(rank_dir, "train_collm.py", _cfg("retrieve_rank_ml1m.yaml"),
                 self.scoring_opts(row_dir, model, s) + self.data_opts(test_rows=self.args.test_rows) + [
                     f"model.rec_model={s.cf}", f"model.cold_start.enabled={cold}", f"retrieval.k={RANK_K}",
                     "run.evaluate=true", "run.valid_splits=[]", "run.test_splits=[test]"])

    def settings(self):
        a = self.args
        return [Setting(cf, tok, tune, rows, ep, lr, a.init, seed, a.train_precision, a.batch_size, a.answer_score,
                        a.train_negatives)
                for cf, tok, tune, rows, ep, lr, seed in
                itertools.product(a.cf, a.proj_tokens, a.tune, a.train_rows, a.epochs, a.lr, a.run_seed)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    if not os.path.isdir(args.backbone) and set(args.rows) - {"cf"}:
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
        hybrid = replace(s, score="hybrid")
        if "hybrid" in kinds:
            bench.collm_row(hybrid)
        if "rank" in kinds:
            for t in [s] if "hybrid" not in kinds else [s, hybrid] if "collm" in kinds else [hybrid]:
                bench.rank_row(t)
    return 0 if args.dry_run else collect(args)


def cf_capabilities(name):
    """(target_aware, supports_cold_start) of a registered CF model, as its class declares them."""
    sys.path.insert(0, REPO)
    import collm_faissret.models.cf  # noqa: F401  (fills the registry)
    from collm_faissret import registry

    cls = registry.get("cf_model", name)
    return cls.target_aware, cls.supports_cold_start


def _cfg(name):
    return os.path.join(REPO, "train_configs", name)



def same_command(recorded, argv):
    """Whether a finished step's recorded argv is ``argv`` wherever the checkout that ran it lay.

    A record keeps the absolute argv that ran (run directory, data, backbone, configs, CF
    checkpoints). Paths under that checkout's root are compared relative to it, and ``argv``'s
    under this repository relative to this one; the record does not name its root, so each
    root that its paths could share with ``argv``'s (this repository's among them) is tried.
    A path outside the checkout compares as it is; options that change no result
    (NO_RESULT_OPTIONS: how often checkpoints are written) are left out of the comparison.
    """
    recorded, argv = _results_only(recorded), _results_only(argv)
    mine = [_relative_in(t, REPO) for t in argv]
    return any([_relative_in(t, root) for t in recorded] == mine for root in _roots_of(recorded, argv))


# options that change no number of a run: a step recorded with another value is the same command
NO_RESULT_OPTIONS = ("run.save_every_minutes=",)


def _results_only(argv):
    return [t for t in argv if not t.startswith(NO_RESULT_OPTIONS)]


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
