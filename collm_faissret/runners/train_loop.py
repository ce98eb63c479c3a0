"""RunnerBase's training loop: ``train`` and its steps (start or resume, an epoch's batches,
forward/backward, optimizer step, mid-epoch checkpoint, log interval, end of epoch with
validation, best/last checkpoints and early stopping, the final scoring with the best
weights), what the steps share (``_Loop``) and the loss scaler fp16 needs (``loss_scaler``).

A mixin of RunnerBase (runner_base.py), which builds the model, data and optimizer the loop
runs; evaluation, checkpoints and precision are the other mixins', reached through ``self``.
"""
import logging
import math
import os
import time
from dataclasses import replace

import torch
from tqdm import tqdm

from .. import dist
from ..checkpoint import CheckpointError, load
from ..datasets.sampler import TrainBatchStream
from ..models.frozen_prefix import split_at, why_whole
from ..registry import get
from .loop_state import LoopState
from .nonfinite import NonFiniteGuard, rows_text
from .run_files import RunError, flat_metrics, format_metrics

log = logging.getLogger("collm_faissret")


class TrainLoopMixin:
    """train and its steps, _log_interval, _log_valid and _finish of RunnerBase."""

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
        self.scaler = loss_scaler(self.model, self.device, self._amp_dtype)
        if self.scaler is not None and self.parallel.name == "fsdp" and dist.is_dist():
            raise RunError("run.distributed fsdp with fp16 (model.dtype fp16, or a GPU that only emulates bf16): "
                           "fp16 needs loss scaling, which this runner does not do for FSDP; use run.distributed "
                           "ddp, or a GPU with native bf16")
        loop = _Loop(stream=TrainBatchStream(self.datasets["train"].lengths(), rc.batch_size_train, rc.seed,
                                             dist.world_size(), dist.rank(), rc.length_bucketing))
        loop.iters = rc.iters_per_epoch or loop.stream.batches_per_pass
        # read once: an omegaconf lookup costs tens of microseconds, a small model's step a few milliseconds
        loop.accum, loop.log_freq, loop.save_every = rc.accum_grad_iters, rc.log_freq, rc.save_every_n_steps
        loop.save_minutes = float(rc.save_every_minutes)
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
        reason = why_whole(self.model, rc.frozen_prefix, self.cfg.model.gradient_checkpointing)
        loop.frozen = not reason
        if hasattr(self.model, "use_slots"):  # a CF model alone has no prompt to say anything of
            log.info("training: %s", "the prompt part before the first ID slot runs once per batch without "
                     "gradients (frozen prefix)" if loop.frozen else f"every prompt whole ({reason})")
        self._compile()
        loop.guard = NonFiniteGuard(rc.nonfinite, self.device, self.out)
        loop.saved_at, loop.saved_t = loop.state.step, time.time()
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
            cut = split_at(batch) if loop.frozen else 0  # on the host copy: no device sync
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if cut:
                batch["frozen_len"] = cut
            yield i, batch

    def _forward_backward(self, loop, batch):
        """Loss of one micro-batch and its gradients (none for a non-finite loss in skip mode)."""
        state = loop.state

        def step():
            with self.amp_ctx():
                return self.task.train_step(loop.model, batch)

        loss = self._eager_on_failure(step)
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
        loop.saved_at, loop.saved_t = loop.state.step, time.time()
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
        # run.save_every_minutes: at a log interval right after an optimizer step (no gradients
        # half accumulated), never on the epoch's last step (the epoch's end saves anyway)
        if loop.save_minutes and (i + 1) % loop.accum == 0 and i + 1 < loop.iters:
            late = time.time() - loop.saved_t >= loop.save_minutes * 60
            loop.save_due = loop.save_due or dist.rank0_flag(late, self.device)

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
        loop.saved_at, loop.saved_t = state.step, time.time()
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


def loss_scaler(model, device, amp_dtype=None):
    """A live GradScaler when fp16 runs on CUDA, as weights or as autocast's dtype (fp16
    gradients underflow without loss scaling); None otherwise: bf16 and fp32 need none."""
    if device.type == "cuda" and (amp_dtype == torch.float16 or any(p.dtype == torch.float16
                                                                     for p in model.parameters())):
        return torch.amp.GradScaler("cuda")
    return None


class _Loop:
    """What the training loop's steps share: the (DDP) model, batch stream, schedule,
    non-finite guard, state (a LoopState, checkpointed) and the log interval's accumulators."""
    model = stream = sched = guard = bar = state = best_valid = None
    iters = saved_at = loss_n = seen = 0
    saved_t = save_minutes = 0.0  # when checkpoint_last.pth was last written; run.save_every_minutes
    accum = log_freq = 1  # run.accum_grad_iters / run.log_freq / run.save_every_n_steps, read once
    save_every = 0
    loss_sum = t0 = None
    skip_update = save_due = frozen = False

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _take(iterator, n):
    """First n items of an iterator as a list-like batch sampler for DataLoader."""
    return [next(iterator) for _ in range(n)]
