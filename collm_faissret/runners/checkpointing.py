"""RunnerBase's checkpoints: what a checkpoint holds (``_payload``), writing one from every rank
(``save_checkpoint``), the model's files beside it (``save_artifacts``: a LoRA adapter) and
resuming training from one (``_resume``).

A mixin of RunnerBase (runner_base.py); how a sharded model's and optimizer's state is gathered
and loaded is the parallel strategy's (parallel.py), the file format checkpoint.py's.
"""
import json
import logging
import os

from .. import dist
from ..checkpoint import load, rng_of_rank, rng_state, save_atomic, set_rng_state
from ..config import to_yaml
from .loop_state import LoopState
from .run_files import json_safe

log = logging.getLogger("collm_faissret")


class CheckpointMixin:
    """_payload, save_checkpoint, save_artifacts and _resume of RunnerBase; reads ``self.model``,
    ``self.optimizer``, ``self.scaler``, ``self.parallel`` and ``self.out``."""

    def _payload(self, state, rngs):
        return {"model": self.parallel.model_state(self.model), "config": to_yaml(self.cfg),
                "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
                "scaler": None if self.scaler is None else self.scaler.state_dict(), "rng": rngs[0],
                "rng_ranks": rngs, **state}

    def save_checkpoint(self, name, state: dict):
        """Model, optimizer, config, RNG (every rank's: ``rng_ranks``) and ``state`` (a LoopState's
        payload) to ``name``; every rank calls it."""
        rngs = dist.all_gather_objects(rng_state())
        payload = self._payload(state, rngs) if self.is_main or self.parallel.collective_save() else None  # FSDP
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

    def _resume(self, path) -> LoopState:
        payload = load(path, "run.resume_ckpt_path")
        state = LoopState.from_payload(payload, path)
        self.parallel.load_model(self.model, payload["model"], path)
        self.parallel.load_optimizer(self.model, self.optimizer, payload["optimizer"], path)
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(rng_of_rank(payload, dist.rank(), dist.world_size()))
        if self.is_main:  # the log of evaluations is the checkpoint's, not what a killed run appended later
            with open(os.path.join(self.out, "metrics.jsonl"), "w") as fh:
                fh.writelines(json.dumps(json_safe(r)) + "\n" for r in state.history)
        log.info("resumed from %s at epoch %d step %d", path, state.epoch, state.step)
        return state
