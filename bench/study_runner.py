"""The SmolLM2 study's row runner: Bench runs the steps of each row bench/real_backbone.py asks for.

A step is one of the framework's entry points (train_collm.py, baseline_train.py) run in a
subprocess into a run directory of its row in <out>, with --options on the shipped ML-1M
configs; it records its command, CPU and wall time, commit and the fingerprints of the CF
files it reads in bench_step.json. A finished step is reused when the same command asks for it
again (study_provenance.py), and a stopped training step resumes from its checkpoint_last.pth;
neither when a CF file it read has changed since (a CF model rebuilt under the same path). Each
row directory gets a row.json (kind, setting, the real_backbone.py command that reproduces the
row) that study_rows.py reads back.
"""
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

import study_rows
from study_provenance import cf_reads, changed_reads, git_commit, same_command
from study_rows import DEFAULT_RUN_SEED, Setting, repo_path

# what stage 2 tunes -> the model's freeze_* flags (CoLLM's tuning strategies)
TUNES = {"proj": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "true"},
         "proj+lora": {"freeze_proj": "false", "freeze_lora": "false", "freeze_rec": "true"},
         "proj+cf": {"freeze_proj": "false", "freeze_lora": "true", "freeze_rec": "false"}}
RANK_K = 50  # retrieve-then-rank: candidates per test user (LLM calls per user)
COLD_START = {"enabled": "true", "neighbors_weight": 1.0, "history_weight": 0.0, "global_weight": 0.0,
              "user_repr": "tfidf", "n_neighbors": 50, "history_len": 20, "warm_alpha": 0.3, "cold_items": "false"}


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.data = os.path.abspath(args.data)
        self.backbone = os.path.abspath(args.backbone)
        self.cf_dir = os.path.abspath(args.cf_dir)
        self.commit = git_commit(study_rows.REPO)  # read once: the code every step of this invocation runs

    # ----- one step -----------------------------------------------------------
    def run(self, run_dir, script, cfg_path, opts, reads=()):
        """Run one entry point into ``run_dir`` unless a finished run of the same command is there
        (``same_command``: paths compared relative to the checkout that ran it); returns its
        metrics.json (None on --dry-run). CPU seconds are the child's user + system time.
        ``reads``: CF files the step reads besides those its options name (cf_reads)."""
        a = self.args
        argv = self.step_argv(run_dir, script, cfg_path, opts)
        record_path = os.path.join(run_dir, "bench_step.json")
        if a.dry_run:
            print("python " + " ".join(shlex.quote(x) for x in argv))
            return None
        reads = cf_reads(opts, reads)
        if not a.rerun and os.path.isfile(record_path):
            with open(record_path) as fh:
                record = json.load(fh)
            if same_command(record.get("argv") or [], argv) and os.path.isfile(os.path.join(run_dir, "metrics.json")):
                _refuse_changed(run_dir, "made", record, reads)
                print(f"== {os.path.relpath(run_dir, self.out)}: finished earlier, reused", flush=True)
                with open(os.path.join(run_dir, "metrics.json")) as fh:
                    return json.load(fh)
        launch = argv + self.resume_opts(run_dir, argv, reads)
        earlier = self.earlier_wall_s(run_dir) if launch != argv else 0.0
        if launch != argv and _started(run_dir).get("reads") is None:
            reads = None  # its earlier parts recorded none: what they read is not known
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "bench_started.json"), "w") as fh:  # what resume_opts compares with
            json.dump({"argv": argv, "earlier_wall_s": earlier, "started_at": time.time(), "reads": reads}, fh)
        print(f"\n== {os.path.relpath(run_dir, self.out)}: python {' '.join(launch)}", flush=True)
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}))
        start = time.time()
        returncode, cpu_s = self.launch(launch, env)
        wall_s = time.time() - start
        if returncode != 0:
            raise SystemExit(f"error: step {run_dir} failed (exit {returncode}); its log: {run_dir}/log.txt")
        with open(record_path, "w") as fh:
            json.dump({"argv": argv, "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1), "commit": self.commit,
                       "reads": reads,  # sha256 of the CF files it read, by repository-relative path
                       "resumed": launch != argv,  # cpu_s / wall_s: the resumed part only
                       "earlier_wall_s": round(earlier, 1),  # the parts before it, up to their last checkpoint
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, fh, indent=2)
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            return json.load(fh)

    def resume_opts(self, run_dir, argv, reads=None):
        """[run.resume_ckpt_path=...] when ``run_dir`` holds an unfinished training run of the same
        command (its bench_started.json, a checkpoint_last.pth, no metrics.json), else []. A row
        stopped with its session (training writes checkpoint_last.pth at least every
        --save-every-min minutes) goes on from there; a resumed run ends with an uninterrupted
        one's weights (tests/test_resume.py). Refused when a CF file it read (``reads``, as
        cf_reads gives them) has changed since it started."""
        last = os.path.join(run_dir, "checkpoint_last.pth")
        started = os.path.join(run_dir, "bench_started.json")
        if self.args.rerun or "run.evaluate=true" in argv or not os.path.isfile(last) or \
                os.path.isfile(os.path.join(run_dir, "metrics.json")) or not os.path.isfile(started):
            return []
        record = _started(run_dir)
        if not same_command(record.get("argv") or [], argv):
            return []
        _refuse_changed(run_dir, "started", record, reads or {})
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
        record = _started(run_dir)
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
        proc = subprocess.run([sys.executable, *argv], cwd=study_rows.REPO, env=env)
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
        sys.path.insert(0, study_rows.REPO)
        from collm_faissret.datasets.collm_data import _read

        return len(_read(self.data, "train_ood2")[0])

    def eval_steps(self, row_dir, script, cfg_path, opts, reads=()):
        """Evaluate-only scoring of --eval-splits (full splits unless --test-rows / --valid-rows), a run
        per split, test first: a study cut short still has its test rows."""
        a = self.args
        for split in [s for s in ("test", "valid") if s in a.eval_splits]:
            self.run(os.path.join(row_dir, f"eval_{split}"), script, cfg_path,
                     opts + self.data_opts(valid_rows=a.valid_rows, test_rows=a.test_rows)
                     + ["run.evaluate=true", f"run.valid_splits=[{split if split == 'valid' else ''}]",
                        f"run.test_splits=[{split if split == 'test' else ''}]"], reads)

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
    def cf_run_dir(self, name, folds=0):
        """Where ``cf_run`` keeps that CF run (nothing is checked or trained)."""
        return os.path.join(self.cf_dir, name.lower() + (f"-oof{folds}" if folds else ""))

    def cf_run(self, name, folds=0):
        """<cf-dir>/<name>/: the baseline trained on the whole training split (trained here when absent);
        with ``folds``, <cf-dir>/<name>-oof<folds>/: the same baseline plus its training rows' logits out
        of fold (run.oof_folds: oof_logits.csv)."""
        run_dir = self.cf_run_dir(name, folds)
        wanted = ["cf_model.pth"] + (["oof_logits.csv"] if folds else [])
        if not all(os.path.isfile(os.path.join(run_dir, f)) for f in wanted):
            self.run(run_dir, "baseline_train.py", _cfg(f"baseline_{name.lower()}_ml1m.yaml"),
                     [f"datasets.movielens_ood.path={self.data}", "run.test_splits=[]"]
                     + ([f"run.oof_folds={folds}"] if folds else []))
        return run_dir

    def cf_row(self, name):
        run_dir = self.cf_run(name)
        row_dir = os.path.join(self.out, f"cf-{name.lower()}")
        self.write_row(row_dir, {"kind": "cf", "cf": name, "baseline_dir": repo_path(run_dir),
                                 "command": self.command("--rows", "cf", "--cf", name)})
        # the run's own resolved config: a checkpoint's shape and settings are what it was trained with
        self.eval_steps(row_dir, "baseline_train.py", os.path.join(run_dir, "config.yaml"),
                        [f"model.ckpt={os.path.join(run_dir, 'checkpoint_best.pth')}"],
                        reads=[os.path.join(run_dir, "cf_model.pth")])  # the file CoLLM rows read of it

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
        # the out-of-fold logits belong to the CF model whose logit the score adds: with hybrid_cf that one
        own_oof = 0 if s.hybrid_cf else s.oof
        opts = [f"model.rec_config.pretrained_path={os.path.join(self.cf_run(s.cf, own_oof), 'cf_model.pth')}",
                f"model.proj_token_num={s.tokens}"] + [f"model.{k}={v}" for k, v in TUNES[s.tune].items()]
        if s.hybrid_cf:
            opts.append(f"model.hybrid_cf_path={os.path.join(self.cf_run(s.hybrid_cf, s.oof), 'cf_model.pth')}")
        if s.llm_weight is not None:
            opts.append(f"model.hybrid_llm_weight={s.llm_weight:g}")
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
        oof_dir = self.cf_run_dir(s.hybrid_cf or s.cf, s.oof)  # the logits of the CF model the score adds
        self.run(os.path.join(row_dir, "train"), "train_collm.py", cfg,
                 self.llm_opts(s.seed, s.score) + model + self.data_opts(s.train_rows, a.curve_valid_rows)
                 + self.train_opts(s)
                 + ([f"datasets.movielens_ood.train_negatives={s.negatives}"] if s.negatives else [])
                 + ([f"datasets.movielens_ood.cf_logits={os.path.join(oof_dir, 'oof_logits.csv')}"]
                    if s.oof else []))  # (collm_model_opts ran cf_run: the file is there)
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

    def blend_row(self, s: Setting):
        """A hybrid score over setting ``s``'s checkpoint (trained first when absent) whose two weights
        are fitted on the validation split after training (run.fit_blend valid; the CF logit is
        --hybrid-cf's, else the encoder's): one run, <row>/fit/, scores validation (in-sample: the
        rows the weights were fitted on) and test. A hybrid row, chosen among its encoder's hybrids
        fitted after training, never against trained ones (study_rows.name_rows)."""
        a = self.args
        row_dir = os.path.join(self.out, s.tag())
        if "collm" not in a.rows:  # its training run (reused when finished)
            self.collm_row(s)
        b = replace(s, score="hybrid", fit="valid", hybrid_cf=a.hybrid_cf)
        blend_dir = os.path.join(self.out, b.tag())
        self.write_row(blend_dir, {"kind": "hybrid", "cf": s.cf, "setting": asdict(b), "trained_in": s.tag(),
                                   "command": self.command(*self.collm_flags(b, "blend"))})
        # the LLM's weight starts anywhere (the fit replaces it); the checkpoint is the pure setting's
        model = self.collm_model_opts(b) + ["model.hybrid_llm_weight=1"]
        self.run(os.path.join(blend_dir, "fit"), "train_collm.py", _cfg(f"collm_stage2_{s.cf.lower()}_ml1m.yaml"),
                 self.scoring_opts(row_dir, model, b) + self.data_opts(valid_rows=a.valid_rows, test_rows=a.test_rows)
                 + ["run.evaluate=true", f"run.fit_blend={b.fit}", "run.valid_splits=[]", "run.test_splits=[test]"])

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
        if not self.args.dry_run:  # how the ranking was made (study_rows puts it on the row)
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


def cf_capabilities(name):
    """(target_aware, supports_cold_start) of a registered CF model, as its class declares them."""
    sys.path.insert(0, study_rows.REPO)
    import collm_faissret.models.cf  # noqa: F401  (fills the registry)
    from collm_faissret import registry

    cls = registry.get("cf_model", name)
    return cls.target_aware, cls.supports_cold_start


def _started(run_dir):
    """A step's bench_started.json (what its last start ran)."""
    with open(os.path.join(run_dir, "bench_started.json")) as fh:
        return json.load(fh)


def _refuse_changed(run_dir, what, record, reads):
    """Exit with one line when a CF file a step read (its record's "reads") has another sha256
    now (``reads``): its results belong to the old file. Records without "reads" pass. Called
    before the step writes anything."""
    changed = changed_reads(record.get("reads") or {}, reads)
    if changed:
        path = changed[0]
        raise SystemExit(f"error: {run_dir} was {what} with another {path} (sha256 {record['reads'][path][:12]}, "
                         f"now {reads[path][:12]}); remove {run_dir} to run that step again with this file, "
                         "or restore the file")


def _cfg(name):
    return os.path.join(study_rows.REPO, "train_configs", name)


def _cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
