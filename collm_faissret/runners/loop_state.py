"""The training loop's checkpointed state: one typed object, converted to and from a
checkpoint's payload here and nowhere else."""
from dataclasses import asdict, dataclass, field, fields

from ..checkpoint import CheckpointError


def _required(default):
    """A field every training checkpoint holds: resuming from a file without it is refused."""
    return field(default=default, metadata={"required": True})


@dataclass
class LoopState:
    """Where a run is and what it has seen so far; a checkpoint holds these fields as
    top-level keys of its payload (beside model, optimizer, config, rng)."""

    epoch: int = _required(0)  # epochs finished
    step: int = _required(0)  # micro-steps taken over the whole run
    opt_step: int = _required(0)  # optimizer updates (the schedule's position)
    best_auc: float = _required(-1.0)  # best validation AUC so far
    best_epoch: int | None = _required(None)
    bad_epochs: int = _required(0)  # epochs since best_auc last improved (early stopping)
    history: list = field(default_factory=list, metadata={"required": True})  # one record per validation
    train_loss: list = field(default_factory=list)  # mean loss of each log interval
    loss_log: list = field(default_factory=list)  # [step, mean loss] of each log interval
    nonfinite_skipped: int = 0  # micro-steps whose non-finite loss skipped their update
    # (sum, count) of the current log interval's losses over every rank: set only in a
    # mid-epoch checkpoint, so that a resumed run logs the same means
    loss_acc: tuple | None = None

    def to_payload(self) -> dict:
        """The checkpoint's state keys (``loss_acc`` only when set: a mid-epoch checkpoint)."""
        payload = asdict(self)
        if payload["loss_acc"] is None:
            del payload["loss_acc"]
        return payload

    @classmethod
    def from_payload(cls, payload: dict, path: str) -> "LoopState":
        """The state a checkpoint written by ``to_payload`` holds; one without the training
        keys (not a training checkpoint) is refused naming the file and the keys."""
        missing = [f.name for f in fields(cls) if f.metadata.get("required") and f.name not in payload]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
        return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})
