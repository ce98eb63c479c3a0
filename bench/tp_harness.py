"""Timing harness of bench/train_throughput.py around the framework's own runner.

The timed code is RunnerBase.train's loop and RunnerBase.evaluate exactly as
train_collm.py runs them (DataLoader over RecRows with the task's collate,
TrainBatchStream with length bucketing, AMP, the optimizer step, the
non-finite guard, logging). The harness only adds:

* BenchTask: RecTask whose model is built from an in-memory backbone, whose
  data is loaded once, and whose train_step / predict start a clock when the
  ``skip``-th batch reaches the model (warm-up batches are not timed);
* BenchRunner: RunnerBase whose post-epoch validation stops the clock and
  ends train() (no validation, checkpoint or final test in the timing).
"""
import gc

import numpy as np
import torch

from collm_faissret.datasets import RecRows
from collm_faissret.datasets.sampler import TrainBatchStream, eval_batches
from collm_faissret.models.collm import CoLLM
from collm_faissret.runners.runner_base import RunnerBase
from collm_faissret.tasks.rec_task import RecTask


class Clock:
    """Wall time of the units after the first ``skip`` (device synced at both ends),
    and the peak allocated CUDA memory over them."""

    def __init__(self, device: torch.device, skip: int):
        self.device, self.skip = device, skip
        self.calls, self.t0, self.t1, self.peak_gib = 0, None, None, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tick(self):
        """Called as each unit (batch) reaches the model."""
        if self.calls == self.skip:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.t0 = _now()
        self.calls += 1

    def stop(self):
        self._sync()
        self.t1 = _now()
        if self.device.type == "cuda":
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2 ** 30

    @property
    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError(f"clock never started: {self.calls} batches seen, {self.skip} to skip")
        return self.t1 - self.t0


def _now():
    import time

    return time.perf_counter()


class _Clocked:
    """The model as predict calls it, ticking the clock before each batch."""

    def __init__(self, model, clock):
        self.model, self.clock = model, clock
        self.collate_fn = model.collate_fn

    def __call__(self, batch):
        self.clock.tick()
        return self.model(batch)


class BenchTask(RecTask):
    """RecTask with preloaded data, an in-memory backbone and clock hooks."""

    def __init__(self, cfg, data, backbone):
        super().__init__(cfg)
        self.data, self.backbone, self.clock = data, backbone, None

    def load_data(self):
        return self.data  # loaded once for every stage of the benchmark

    def build_model(self, device):
        return CoLLM.from_config(self.cfg, self.data, device, backbone=self.backbone)

    def train_step(self, model, batch):
        if self.clock is not None:
            self.clock.tick()
        return super().train_step(model, batch)

    def predict(self, model, dataset, batches, device, amp_ctx, progress=None):
        if self.clock is None:
            return super().predict(model, dataset, batches, device, amp_ctx, progress)
        out = super().predict(_Clocked(model, self.clock), dataset, batches, device, amp_ctx, progress)
        self.clock.stop()  # scores are on the host: every forward has finished
        return out


class _TrainDone(Exception):
    """Raised where train() would validate after its epoch: the timed loop is over."""


class BenchRunner(RunnerBase):
    """RunnerBase whose train() ends with the clock stopped after the epoch's loop."""

    stop_after_train = False
    clock = None

    def use_config(self, cfg):
        """Switch batch sizes etc. without rebuilding the model (both read cfg.run)."""
        self.cfg, self.run_cfg, self.task.cfg = cfg, cfg.run, cfg

    def evaluate(self, split, max_rows=None):
        if self.stop_after_train:
            self.clock.stop()
            raise _TrainDone
        return super().evaluate(split, max_rows)

    def timed_train(self, warmup: int) -> Clock:
        """One epoch of run.iters_per_epoch batches; the first ``warmup`` are not timed."""
        self.clock = self.task.clock = Clock(self.device, warmup)
        self.stop_after_train = True
        try:
            self.train()
        except _TrainDone:
            pass
        finally:
            self.stop_after_train = False
            self.task.clock = None
            self.optimizer = None  # frees Adam state before the next configuration
            self.model.zero_grad(set_to_none=True)
        return self.clock

    def timed_eval(self, split: str, warmup: int, n_batches: int) -> Clock:
        """RunnerBase.evaluate over the first n_batches * batch_size_eval rows."""
        clock = self.task.clock = Clock(self.device, warmup)
        try:
            self.evaluate(split, n_batches * self.run_cfg.batch_size_eval)
        finally:
            self.task.clock = None
        return clock


def train_batches(lengths, batch_size: int, seed: int, bucketing: bool, n: int):
    """The first n batches (row lists) the runner's TrainBatchStream yields from step 0."""
    it = TrainBatchStream(lengths, batch_size, seed, 1, 0, bucketing).iter_from(0)
    return [next(it) for _ in range(n)]


def eval_batch_list(lengths, batch_size: int, n_batches: int):
    """The batches RunnerBase.evaluate cuts from the first n_batches * batch_size rows."""
    return eval_batches(lengths, batch_size, 1, 0, n_batches * batch_size)


def widths(lengths, batches) -> list:
    """The padded width (longest prompt) of each batch, in order."""
    return [int(np.asarray(lengths)[b].max()) for b in batches]


def batch_shape_stats(lengths, batches) -> dict:
    """Rows, mean padded width, real and padded token counts and padding fraction of padded batches."""
    lengths = np.asarray(lengths)
    widths = np.array([lengths[b].max() for b in batches], dtype=np.float64)
    padded = float(sum(len(b) * w for b, w in zip(batches, widths)))
    real = float(sum(lengths[b].sum() for b in batches))
    return {"rows": int(sum(len(b) for b in batches)), "mean_width": float(widths.mean()),
            "padded_tokens": padded, "real_tokens": real, "padding_fraction": 1.0 - real / padded}


def pass_padding(lengths, batch_size: int, seed: int) -> dict:
    """Padding fraction over one full training pass, with and without length bucketing."""
    n = TrainBatchStream(lengths, batch_size, seed).batches_per_pass
    return {key: batch_shape_stats(lengths, train_batches(lengths, batch_size, seed, on, n))["padding_fraction"]
            for key, on in (("bucketed", True), ("unbucketed", False))}


def longest_rows(task, ds: RecRows, n: int) -> RecRows:
    """The training split cut to its n longest prompts (worst-case activation memory)."""
    order = np.argsort(ds.lengths(), kind="stable")[-n:]
    df = task.data.splits["train"].iloc[order].reset_index(drop=True)
    return RecRows(df, ds.max_his, ds.builder, name="train_longest", his_len=ds.his.shape[1])


def free_cuda():
    """CUDA: drop unreachable tensors and return cached blocks between configurations
    (a no-op without CUDA, where a full gc pass costs most of a second and frees nothing needed)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
