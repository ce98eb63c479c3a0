"""TensorBoard scalars of a run, in ``<output_dir>/tensorboard/``.

The writer is made at the first scalar, so a run that logs none (evaluate-only)
leaves no empty directory, and ``torch.utils.tensorboard`` (which imports the
tensorboard package) is loaded only by runs that use it. Only rank 0 writes.
"""
import math
import os


class ScalarLog:
    """``add(tag, value, step)`` to TensorBoard when enabled, else nothing."""

    def __init__(self, output_dir: str, enabled: bool):
        self.path = os.path.join(output_dir, "tensorboard")
        self.enabled = enabled
        self._writer = None

    def add(self, tag: str, value, step: int):
        # An undefined AUC (None / NaN, e.g. no cold rows) is left out rather
        # than drawn as a spike to 0.
        if not self.enabled or value is None or not math.isfinite(float(value)):
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.path)
        self._writer.add_scalar(tag, float(value), step)

    def flush(self):
        """Write buffered events now: an epoch's curves survive a run killed later."""
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
