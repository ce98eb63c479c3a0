"""Non-finite training losses, caught at the micro-step they happen.

run.nonfinite "stop": the run ends with an error naming the global micro-step
(1-based) and the batch's row ids in the training split; no checkpoint is
written after the bad step, so the last good one stays. "skip": the bad
micro-step gets no backward pass, the optimizer update of its accumulation
window is dropped, and the count is logged and reported in metrics.json.

When the host learns of it: on CPU every loss is checked at once (there is no
device queue to wait for). Skipping must be decided before the optimizer
step, so skip mode checks every step on CUDA too (one host sync per step).
CUDA in stop mode keeps the check on the device: the first bad step, its loss
and its rows are recorded in device tensors and read back (one sync) only at
log intervals and before a checkpoint is written; the error still names the
first bad step, and no checkpoint ever holds weights updated after it.
"""
import torch

from .. import dist

MAX_ROWS_SHOWN = 32  # keep the one-line error readable for large batches


class NonFiniteLoss(RuntimeError):
    """Raised in stop mode; a known error of the command line (one line, exit status 2)."""


def rows_text(rows) -> str:
    """Row ids as "[3, 17, ...]", at most MAX_ROWS_SHOWN of them; rows: a tensor or a sequence."""
    rows = [int(r) for r in (rows.tolist() if hasattr(rows, "tolist") else rows)]
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_SHOWN])
    more = len(rows) - MAX_ROWS_SHOWN
    return f"[{shown}{f', ... +{more} more' if more > 0 else ''}]"


class NonFiniteGuard:
    """Watches each micro-step's loss; ``observe`` says whether to skip it."""

    def __init__(self, mode: str, device: torch.device, out_dir: str = ".", deferred=None):
        self.mode = mode
        self.out_dir = out_dir
        self.deferred = (device.type == "cuda" and mode == "stop") if deferred is None else deferred
        self._first = None  # deferred mode: device tensors (step [], loss [], rows [B]) of the first bad step
        self._dev_step = None  # deferred mode: the step counter kept on the device (no copy per step)

    def observe(self, loss: torch.Tensor, step: int, rows: torch.Tensor) -> bool:
        """loss: this micro-step's scalar loss; step: its global number (1-based),
        called for every micro-step in order; rows [B]: the batch's row ids.

        Returns True when the step must get no backward pass (skip mode).
        Raises NonFiniteLoss in stop mode (immediately, or at ``check`` when deferred).
        """
        if self.deferred:
            self._record(loss.detach(), step, rows)
            return False
        bad = (~torch.isfinite(loss.detach())).to(torch.int32)
        if self.mode == "skip" and dist.is_dist():
            # Every rank must skip the same steps: a backward pass on one rank
            # alone would wait forever for the others' gradient all-reduce.
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad.item()):
            return False
        if self.mode == "stop":
            raise NonFiniteLoss(self._message(float(loss.detach().float()), step, rows))
        return True

    def _record(self, loss, step, rows):
        if self._dev_step is None:
            self._dev_step = torch.full((), step, dtype=torch.long, device=loss.device)
        else:
            self._dev_step += 1
        dev_step = self._dev_step
        if self._first is not None and self._first[2].shape != rows.shape:
            self.check()  # a batch of another size: settle the pending record before replacing it
            self._first = None
        if self._first is None:
            self._first = (torch.full_like(dev_step, -1), torch.zeros_like(loss, dtype=torch.float32),
                           torch.full_like(rows, -1))
        step0, loss0, rows0 = self._first
        take = ~torch.isfinite(loss) & (step0 < 0)
        self._first = (torch.where(take, dev_step, step0), torch.where(take, loss.float(), loss0),
                       torch.where(take, rows, rows0))

    def check(self) -> None:
        """Deferred mode: raise NonFiniteLoss if a bad step was recorded (one host sync)."""
        if not self.deferred or self._first is None:
            return
        step = int(self._first[0].item())
        if step >= 0:
            raise NonFiniteLoss(self._message(float(self._first[1].item()), step, self._first[2].tolist()))

    def _message(self, value: float, step: int, rows) -> str:
        return (f"non-finite loss {value} at step {step}, batch of train rows {rows_text(rows)}; stopped, "
                f"the checkpoints in {self.out_dir} predate it (run.nonfinite: skip would skip such steps)")
