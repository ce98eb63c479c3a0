"""The training loop: device, DDP, optimizer, schedule, AMP, evaluation, early
stopping, checkpoints, resume and evaluate-only.

Output directory layout: config.yaml (resolved), log.txt, metrics.jsonl (one
line per evaluation), checkpoint_last.pth / checkpoint_best.pth,
adapter/ (peft format, when the model has LoRA), predictions_<split>.csv and,
at the end, metrics.json.
"""
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from .. import dist
from ..checkpoint import CheckpointError, load, rng_state, save_atomic, set_rng_state
from ..config import to_yaml
from ..datasets.sampler import TrainBatchStream, eval_batches
from ..models.shared_prefix import attention_ratio, kv_min_group, why_plain
from ..registry import get, register
from .loop_state import LoopState
from .nonfinite import NonFiniteGuard, rows_text
from .parallel import strategy
from .run_files import (
    RunError,
    flat_metrics,
    format_metrics,
    json_safe,
    predictions_csv,
    prepare_output_dir,
    setup_logging,
    write_atomic,
)
from .tb import ScalarLog

log = logging.getLogger("collm_faissret")


@register("runner", "runner_base")
class RunnerBase:
    def __init__(self, cfg, task, device):
        self.cfg, self.task, self.device = cfg, task, device
        self.run_cfg = cfg.run
        self.out = cfg.run.output_dir
        self.is_main = dist.is_main()
        self.tb = ScalarLog(self.out, cfg.run.tensorboard and self.is_main)
        self.parallel = strategy(cfg.run.distributed, device)
        self._paths_logged = set()

    # ----- setup -------------------------------------------------------------
    @property
    def run_cfg(self):
        """cfg.run of this run (benchmarks switch it between configurations of one model)."""
        return self._run_cfg

    @run_cfg.setter
    def run_cfg(self, rc):
        self._run_cfg = rc
        # derived here, where the run config is set: amp_ctx runs per batch, and an omegaconf
        # lookup costs tens of microseconds (a visible share of a small model's step)
        self._amp_bf16 = bool(rc.amp) and self.device.type == "cuda"

    def amp_ctx(self):
        """bf16 autocast on CUDA with run.amp, else nothing (a new context per batch)."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self._amp_bf16 else contextlib.nullcontext()

    def _build(self):
        torch.manual_seed(self.run_cfg.seed)
        np.random.seed(self.run_cfg.seed)
        self.task.load_data()
        self.model = self.task.build_model(self.device)
        self.datasets = self.task.build_datasets(self.model)
        for split in ["train"] + list(self.run_cfg.valid_splits) + list(self.run_cfg.test_splits):
            if split not in self.datasets:
                raise RunError(f"split {split!r} is not in the data (have {', '.join(self.datasets)})")
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        n_train = sum(p.numel() for _, p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info("data %s: %s | n_users %d n_items %d", self.task.data.path,
                 ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items()),
                 self.task.data.n_users, self.task.data.n_items)
        log.info("model %s: %.3fM parameters, %.4fM trainable (%s)", self.cfg.model.arch, n_all / 1e6,
                 n_train / 1e6, ", ".join(sorted({n.split(".")[0] for n, _ in self.trainable})) or "none")

    def _optimizer(self):
        decay = [p for n, p in self.trainable if p.ndim >= 2]
        no_decay = [p for n, p in self.trainable if p.ndim < 2]
        # adam: L2 penalty in the gradient (what CF baselines are usually tuned
        # with); adamw: decoupled decay (the usual choice for LoRA / projectors).
        opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.run_cfg.optimizer]  # a schema choice
        return opt_cls([{"params": decay, "weight_decay": self.run_cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.run_cfg.init_lr, betas=(0.9, 0.999))

    # ----- evaluation --------------------------------------------------------
    def evaluate(self, split: str, max_rows=None):
        """(metrics dict, rows, scores) for one split; identical under any world size."""
        ds = self.datasets[split]
        module = self.model
        module.eval()
        size = self.run_cfg.batch_size_eval
        groups = self._prefix_groups(split, ds, module, max_rows)
        batches = eval_batches(ds.lengths(), size, dist.world_size(), dist.rank(), max_rows, groups)
        batches = self.parallel.even_batches(batches, eval_batches(ds.lengths(), size, 1, 0, max_rows, groups)[0])
        bar = tqdm(total=len(batches), desc=f"eval {split}", disable=None if self.is_main else True, leave=False,
                   dynamic_ncols=True)
        rows, scores = self.task.predict(module, ds, batches, self.device, self.amp_ctx, bar)
        self.parallel.after_eval(module)
        bar.close()
        return self.task.report(ds, rows, scores), rows, scores

    def _prefix_groups(self, split, ds, model, max_rows):
        """Prefix group per row when this split's rows are scored with shared prefixes, else None
        (``ds.share_prefix`` set accordingly); the path taken is logged once per split."""
        reason = why_plain(model, self.run_cfg.shared_prefix) if getattr(ds, "builder", None) else "no prompt"
        groups = None
        if not reason:
            groups = ds.prefix_groups()
            n = len(groups) if max_rows is None else min(len(groups), max_rows)
            n_groups = len(np.unique(groups[:n]))
            if n_groups == n:
                reason, groups = "no two rows share a prompt prefix", None
        ds.share_prefix = groups is not None
        ds.pack_ratio = attention_ratio(model.llm.config) if groups is not None else 0.0
        kv_min, kv_reason = kv_min_group(model) if groups is not None else (0, "")
        ds.kv_min_group = kv_min
        if split not in self._paths_logged:
            self._paths_logged.add(split)
            if groups is None:
                log.info("scoring %s: every prompt whole (%s)", split, reason)
            else:
                log.info("scoring %s: shared prompt prefixes, %d rows in %d groups (mean group size %.2f); %s",
                         split, n, n_groups, n / max(n_groups, 1),
                         f"groups of {kv_min}+ rows over a cache of their prefix" if kv_min
                         else f"every group packed ({kv_reason})")
        return groups

    def _score_splits(self, result, label="", known=None):
        """Every valid and test split scored: predictions_<split>.csv, ``result[split]``, metrics.json.

        known: {split: (metrics, rows, scores)} already computed with these weights over the
        whole split (the best epoch's validation), used as they are instead of scoring again.
        """
        known = known or {}
        for split in list(self.run_cfg.valid_splits) + list(self.run_cfg.test_splits):
            metrics, rows, scores = known[split] if split in known else self.evaluate(split)
            self._write(f"predictions_{split}.csv", predictions_csv(self.datasets[split], rows, scores))
            result[split] = metrics
            log.info("%s%s: %s", label, split, format_metrics(metrics))
        self._write("metrics.json", json.dumps(json_safe(result), indent=2))
        return result

    def _write(self, name, text):
        if self.is_main:
            write_atomic(os.path.join(self.out, name), text)

    def _append_metrics(self, record):
        if self.is_main:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(json_safe(record)) + "\n")

    # ----- checkpoints -------------------------------------------------------
    def _payload(self, state):
        return {"model": self.parallel.model_state(self.model), "config": to_yaml(self.cfg),
                "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
                "scaler": None if self.scaler is None else self.scaler.state_dict(), "rng": rng_state(), **state}

    def save_checkpoint(self, name, state: dict):
        """Model, optimizer, config, RNG and ``state`` (a LoopState's payload) to ``name``."""
        payload = self._payload(state) if self.is_main or self.parallel.collective_save() else None  # FSDP: all
        if self.is_main:
            save_atomic(payload, os.path.join(self.out, name))
        dist.barrier()

    def save_artifacts(self):
        """What the model keeps besides the checkpoint (a LoRA adapter in peft's format), from its
        saved parameters gathered as a checkpoint gathers them; every rank calls it."""
        if self.model.has_artifacts:
            state = self.parallel.model_state(self.model) if self.is_main or self.parallel.collective_save() else None
            if self.is_main:
                self.model.save_artifacts(self.out, state)

    # ----- main entry --------------------------------------------------------
    def run(self):
        prepare_output_dir(self.out)
        dist.barrier()
        setup_logging(self.out)
        self._build()
        if self.run_cfg.evaluate:
            return self.evaluate_only()
        try:
            return self.train()
        finally:
            self.tb.close()

    def _write_config(self):
        """The resolved config.yaml, written once every input has been accepted: a run
        refused for bad input leaves an earlier run's config.yaml in place."""
        self._write("config.yaml", to_yaml(self.cfg))

    def evaluate_only(self):
        if not self.cfg.model.ckpt and not self.model.zero_shot:
            raise RunError("run.evaluate is true but model.ckpt is not set: which checkpoint to evaluate?")
        self._write_config()
        if self.cfg.model.ckpt:
            log.info("evaluate-only from %s", self.cfg.model.ckpt)
        else:
            log.info("evaluate-only, zero-shot: no checkpoint, the backbone as loaded")
        self.parallel.shard(self.model)
        return self._score_splits({"best_epoch": None, "ckpt": self.cfg.model.ckpt})

    # ----- training --------------------------------------------------------
    # Called as hook(runner, step) right after each micro-step's backward pass, before its
    # optimizer update and any checkpoint of that step. Empty in a real run; tests install
    # fault injection here (tests/fault_train.py).
    step_hooks = ()

    def train(self):
        """The loop: per epoch, micro-steps (forward/backward, optimizer step, mid-epoch
        checkpoint, log), then validation, best/last checkpoints and early stopping."""
        loop = self._start_training()
        for epoch in range(loop.state.epoch, self.run_cfg.max_epoch):
            for i, batch in self._epoch_batches(loop, epoch):
                self._forward_backward(loop, batch)
                for hook in self.step_hooks:
                    hook(self, loop.state.step)
                if (i + 1) % loop.accum == 0 or i + 1 == loop.iters:
                    self._optimizer_step(loop, i)
                loop.bar.update(1)
                if (i + 1) % loop.log_freq == 0 or i + 1 == loop.iters:
                    self._log_progress(loop, epoch, i, len(batch["label"]))
                if loop.save_due:  # after this step's log line: a resumed run must not log it again
                    self._checkpoint_mid_epoch(loop)
            loop.bar.close()
            if self._end_epoch(loop, epoch):
                break
        return self._finish(loop.state, loop.best_valid)

    def _start_training(self):
        """Optimizer, loss scaler, batch stream, schedule and state (fresh or resumed)."""
        rc = self.run_cfg
        self.parallel.shard(self.model)  # before the optimizer: FSDP replaces the parameters by shards
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        self.scaler = loss_scaler(self.model, self.device)
        loop = _Loop(stream=TrainBatchStream(self.datasets["train"].lengths(), rc.batch_size_train, rc.seed,
                                             dist.world_size(), dist.rank(), rc.length_bucketing))
        loop.iters = rc.iters_per_epoch or loop.stream.batches_per_pass
        # read once: an omegaconf lookup costs tens of microseconds, a small model's step a few milliseconds
        loop.accum, loop.log_freq, loop.save_every = rc.accum_grad_iters, rc.log_freq, rc.save_every_n_steps
        total_opt_steps = math.ceil(loop.iters / rc.accum_grad_iters) * rc.max_epoch
        loop.sched = get("lr_scheduler", rc.lr_sched)(self.optimizer, total_opt_steps, rc.init_lr, rc.min_lr,
                                                     rc.warmup_lr, rc.warmup_steps)
        loop.state = LoopState()
        if rc.resume_ckpt_path:
            loop.state = self._resume(rc.resume_ckpt_path)
        elif self.is_main and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
            os.remove(os.path.join(self.out, "metrics.jsonl"))  # a fresh run starts a fresh log of evaluations
        self._write_config()
        loop.model = self.parallel.prepare(self.model)
        loop.guard = NonFiniteGuard(rc.nonfinite, self.device, self.out)
        loop.saved_at = loop.state.step
        return loop

    def _epoch_batches(self, loop, epoch):
        """(index in epoch, batch on the device) for the rest of ``epoch``."""
        rc = self.run_cfg
        loop.model.train()
        start = loop.state.step - epoch * loop.iters
        # Its own generator: creating a loader draws a seed from the global RNG otherwise, and a
        # run resumed mid-epoch (one loader more) would then see other dropout masks than an
        # uninterrupted one. Pinned host batches on CUDA: a copy from pageable memory makes the
        # host wait for every queued kernel first (a hidden sync per step).
        loader = torch.utils.data.DataLoader(
            self.datasets["train"], batch_sampler=_take(loop.stream.iter_from(loop.state.step), loop.iters - start),
            collate_fn=self.model.collate_fn, num_workers=rc.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(rc.seed + epoch))
        loop.bar = tqdm(total=loop.iters, initial=start, desc=f"epoch {epoch}",
                        disable=None if self.is_main else True, dynamic_ncols=True, leave=False)
        # Loss accumulators of the log interval (logging only); a mid-epoch checkpoint
        # carries them so a resumed run logs the same means.
        acc_sum, loop.loss_n = (loop.state.loss_acc if start else None) or (0.0, 0)
        loop.state.loss_acc = None  # used: later checkpoints carry their own
        if not self.is_main:  # the checkpoint holds every rank's sums: rank 0 carries them
            acc_sum, loop.loss_n = 0.0, 0
        loop.loss_sum, loop.t0, loop.seen = torch.tensor(acc_sum, device=self.device), time.time(), 0
        loop.skip_update = loop.save_due = False
        for i, batch in enumerate(loader, start=start):
            yield i, {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _forward_backward(self, loop, batch):
        """Loss of one micro-batch and its gradients (none for a non-finite loss in skip mode)."""
        state = loop.state
        with self.amp_ctx():
            loss = self.task.train_step(loop.model, batch)
        state.step += 1
        if loop.guard.observe(loss, state.step, batch["row"]):  # skip mode; stop mode raises
            state.nonfinite_skipped += 1
            loop.skip_update = True
            log.warning("non-finite loss at step %d, batch of train rows %s%s: update skipped (%d so far)",
                        state.step, rows_text(batch["row"]),
                        " (rank 0's share; the loss may be another rank's)" if dist.is_dist() else "",
                        state.nonfinite_skipped)
        else:
            scaled = loss if loop.accum == 1 else loss / loop.accum  # x / 1 is x: one op less
            (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
            loop.loss_sum += loss.detach()
            loop.loss_n += 1
        loop.seen += len(batch["label"])

    def _optimizer_step(self, loop, i):
        """Learning rate, update (unless a micro-step of the window was skipped), zero grads; is a
        mid-epoch checkpoint due (every run.save_every_n_steps micro-steps, never on an epoch's last)?"""
        loop.sched.step(loop.state.opt_step)
        if not loop.skip_update:
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        loop.state.opt_step += 1
        loop.skip_update = False
        every = loop.save_every
        loop.save_due = bool(every and i + 1 < loop.iters and loop.state.step // every > loop.saved_at // every)

    def _checkpoint_mid_epoch(self, loop):
        """checkpoint_last.pth with the log interval's loss sums so far (all ranks')."""
        loop.guard.check()
        acc = dist.sum_over_ranks(loop.loss_sum, loop.loss_n)
        self.save_checkpoint("checkpoint_last.pth", replace(loop.state, loss_acc=acc).to_payload())
        loop.saved_at = loop.state.step
        loop.save_due = False

    def _log_progress(self, loop, epoch, i, batch_rows):
        """Mean loss of the interval, lr, samples/s, ETA: log line, TensorBoard, state."""
        loop.guard.check()
        # A host sync, at log intervals only; all ranks' mean, nan when every step was skipped.
        mean_loss = dist.mean_over_ranks(loop.loss_sum, loop.loss_n)
        rate = loop.seen * dist.world_size() / max(time.time() - loop.t0, 1e-9)
        eta = (loop.iters - i - 1) * batch_rows * dist.world_size() / max(rate, 1e-9)
        lr = loop.sched.lr_at(max(loop.state.opt_step - 1, 0))
        log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s eta %.0fs", epoch, i + 1, loop.iters,
                 mean_loss, lr, rate, eta)
        loop.state.train_loss.append(mean_loss)
        self._log_interval(loop.state, mean_loss, lr, rate)
        loop.loss_sum.zero_()
        loop.loss_n = 0

    def _end_epoch(self, loop, epoch) -> bool:
        """Validate, keep the best checkpoint, write the last one; True when patience ran out."""
        rc, state = self.run_cfg, loop.state
        valid_split = rc.valid_splits[0]
        metrics, rows, scores = self.evaluate(valid_split, rc.max_eval_rows)
        record = {"epoch": epoch, "step": state.step, "split": valid_split,
                  "train_loss": state.train_loss[-1] if state.train_loss else float("nan"), **flat_metrics(metrics)}
        # [step, loss] of this epoch's log intervals: the learning curve collm_faissret.report draws
        record["train_loss_steps"] = [p for p in state.loss_log if p[0] > epoch * loop.iters]
        state.history.append(record)
        self._append_metrics(record)
        self._log_valid(record)
        log.info("epoch %d %s: %s", epoch, valid_split, format_metrics(metrics))
        state.epoch = epoch + 1
        loop.saved_at = state.step
        if metrics["auc"] > state.best_auc:
            state.best_auc, state.best_epoch, state.bad_epochs = metrics["auc"], epoch, 0
            self.save_checkpoint("checkpoint_best.pth", state.to_payload())
            self.save_artifacts()
            # The best weights' validation scores: the end of the run reuses them when they
            # cover the whole split (a valid pass of a 7B model or SmolLM2 on CPU is long).
            whole = len(rows) == len(self.datasets[valid_split])
            loop.best_valid = {valid_split: (metrics, rows, scores)} if whole else None
        else:
            state.bad_epochs += 1
        self.save_checkpoint("checkpoint_last.pth", state.to_payload())
        if state.bad_epochs >= rc.patience:
            log.info("early stop: valid AUC has not improved for %d epochs", rc.patience)
            return True
        return False

    def _resume(self, path) -> LoopState:
        payload = load(path, "run.resume_ckpt_path")
        state = LoopState.from_payload(payload, path)
        self.parallel.load_model(self.model, payload["model"], path)
        self.parallel.load_optimizer(self.model, self.optimizer, payload["optimizer"], path)
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        if self.is_main:  # the log of evaluations is the checkpoint's, not what a killed run appended later
            with open(os.path.join(self.out, "metrics.jsonl"), "w") as fh:
                fh.writelines(json.dumps(json_safe(r)) + "\n" for r in state.history)
        log.info("resumed from %s at epoch %d step %d", path, state.epoch, state.step)
        return state

    def _log_interval(self, state, mean_loss, lr, rate):
        """One log interval's numbers: kept for metrics.jsonl and drawn in TensorBoard."""
        state.loss_log.append([state.step, mean_loss])
        for tag, value in (("train/loss", mean_loss), ("train/lr", lr), ("train/samples_per_s", rate)):
            self.tb.add(tag, value, state.step)

    def _log_valid(self, record):
        for key in ("auc", "uauc"):
            self.tb.add(f"{record['split']}/{key}", record[key], record["step"])
        self.tb.flush()

    def _finish(self, state, best_valid=None):
        """The best checkpoint's weights back in the model; every split scored with them.

        best_valid: {split: (metrics, rows, scores)} of the best epoch's whole validation pass
        in this process (None after a resume past it, or when the pass was cut by
        run.max_eval_rows): that split is not scored again.
        """
        best = os.path.join(self.out, "checkpoint_best.pth")
        if not os.path.isfile(best):
            raise CheckpointError(f"no best checkpoint in {self.out}")
        self.parallel.load_model(self.model, load(best)["model"], best)
        result = {"best_epoch": state.best_epoch, "best_valid_auc": state.best_auc,
                  "nonfinite_skipped_steps": state.nonfinite_skipped}
        if best_valid:
            log.info("%s: the best epoch's scores of the whole split (same weights), not scored again",
                     ", ".join(best_valid))
        return self._score_splits(result, f"best checkpoint (epoch {state.best_epoch}) ", best_valid)


def loss_scaler(model, device):
    """A live GradScaler when fp16 runs on CUDA (fp16 gradients underflow without loss
    scaling); None otherwise: bf16 and fp32 need none."""
    if device.type == "cuda" and any(p.dtype == torch.float16 for p in model.parameters()):
        return torch.amp.GradScaler("cuda")
    return None


class _Loop:
    """What the training loop's steps share: the (DDP) model, batch stream, schedule,
    non-finite guard, state (a LoopState, checkpointed) and the log interval's accumulators."""
    model = stream = sched = guard = bar = state = best_valid = None
    iters = saved_at = loss_n = seen = 0
    accum = log_freq = 1  # run.accum_grad_iters / run.log_freq / run.save_every_n_steps, read once
    save_every = 0
    loss_sum = t0 = None
    skip_update = save_due = False

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _take(iterator, n):
    """First n items of an iterator as a list-like batch sampler for DataLoader."""
    return [next(iterator) for _ in range(n)]
