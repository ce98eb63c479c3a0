"""How the runner spreads a model over torchrun's ranks: ``run.distributed``.

``ddp``: every rank holds the whole model; DistributedDataParallel averages
the gradients. ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards
each decoder layer, then the rest of the model (embeddings, head, projector,
CF model) across the ranks; frozen base weights are sharded too, so the
weights each rank holds fall with the world size. Parameters become DTensors
holding this rank's shard; a layer's full weights exist only while it runs.

Checkpoints are the same files in both modes: only the saved parameters
(adapter, projector, tuned CF weights), gathered to full tensors, and the
optimizer state of those parameters, gathered by torch.distributed.checkpoint.
So an FSDP checkpoint evaluates or resumes in one process as well.
"""
import logging

import torch

from .. import dist
from ..checkpoint import CheckpointError, load_model_weights
from .run_files import RunError


class Replicated:
    """One process, or DDP under torchrun: the whole model on every rank."""

    name = "ddp"

    def __init__(self, device):
        self.device = device

    def prepare(self, model):
        """The module the training loop calls (a DDP wrapper under torchrun)."""
        if not dist.is_dist():
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, model):
        """Nothing to shard; the optimizer may be built on ``model``'s parameters as they are."""

    def model_state(self, model):
        """The parameters a checkpoint keeps (the model states which), as CPU tensors."""
        return {k: v.detach().cpu() for k, v in model.saved_state_dict().items()}

    def optimizer_state(self, model, optimizer):
        return optimizer.state_dict()

    def load_model(self, model, state, path):
        load_model_weights(model, state, path)

    def load_optimizer(self, model, optimizer, state, path):
        optimizer.load_state_dict(state)

    def collective_save(self) -> bool:
        """Whether every rank takes part in building a checkpoint's payload."""
        return False

    def even_batches(self, batches, first_batch):
        """This rank's evaluation batches (ranks may hold different counts)."""
        return batches

    def after_eval(self, model):
        """Called after forwards with no backward (an evaluation)."""


class Sharded(Replicated):
    """FSDP2 under torchrun (one process: nothing to shard, as Replicated)."""

    name = "fsdp"

    def mp_policy(self):
        """bf16 compute and all-gathers on CUDA with fp32 gradient reduction; fp32 on CPU."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.device.type == "cuda":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def prepare(self, model):
        return model  # fully_shard changed the model in place; its forward gathers the shards

    def shard(self, model):
        """fully_shard every decoder layer (the LM's ``_no_split_modules`` classes), then the
        root. Layers start on the host and move to ``device`` one by one as they are sharded."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not dist.is_dist():
            return
        mesh = init_device_mesh(self.device.type, (dist.world_size(),))
        policy = self.mp_policy()
        layers = decoder_layers(model)
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        logging.getLogger("collm_faissret").info(
            "run.distributed fsdp: %d decoder layers and the root sharded over %d ranks (%s)", len(layers),
            dist.world_size(), describe_policy(policy))

    def model_state(self, model):
        """Collective: every rank gathers each saved parameter (small: adapter, projector)."""
        from torch.distributed.tensor import DTensor

        if not dist.is_dist():
            return super().model_state(model)
        state = model.saved_state_dict()
        return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def optimizer_state(self, model, optimizer):
        """Collective: AdamW's moments gathered to full tensors, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if not dist.is_dist():
            return super().optimizer_state(model, optimizer)
        return get_optimizer_state_dict(model, optimizer, options=self._options(cpu_offload=True))

    def load_model(self, model, state, path):
        """Every rank read the file: each cuts its own shard from the full tensors (no communication)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not dist.is_dist():
            return super().load_model(model, state, path)
        own = dict(model.named_parameters())
        for key, value in state.items():
            if key not in own or tuple(own[key].shape) != tuple(value.shape):
                raise CheckpointError(f"{path}: parameter {key} {tuple(value.shape)} does not fit this model "
                                      "(another model shape or stage?)")
        with torch.no_grad():
            for key, value in state.items():
                param = own[key]
                value = value.to(device=param.device, dtype=param.dtype)
                if isinstance(param, DTensor):
                    value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
                param.copy_(value)

    def load_optimizer(self, model, optimizer, state, path):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if not dist.is_dist():
            return super().load_optimizer(model, optimizer, state, path)
        if "param_groups" not in state or any(isinstance(k, int) for k in state.get("state", {})):
            raise CheckpointError(f"{path}: its optimizer state was saved by a run without run.distributed=fsdp "
                                  "under torchrun; resume it the way it was trained")
        set_optimizer_state_dict(model, optimizer, state, options=self._options())

    def collective_save(self) -> bool:
        return dist.is_dist()

    def even_batches(self, batches, first_batch):
        """Every rank runs the same number of forwards (each one gathers shards from all
        ranks): short ranks repeat the split's first batch, whose duplicate scores the
        task's gather drops."""
        if not dist.is_dist():
            return batches
        most = max(dist.all_gather_objects(len(batches)))
        return list(batches) + [first_batch] * (most - len(batches))

    def after_eval(self, model):
        """FSDP2 keeps the root's gathered weights after a forward (the backward would need
        them next); after an evaluation there is none: free them, so the model's parameters
        are the shards again (what the optimizer and checkpoints address)."""
        if dist.is_dist():
            model.reshard()


def describe_policy(policy) -> str:
    """What a MixedPrecisionPolicy computes and reduces gradients in, for the log:
    "bf16 compute, fp32 reduction", or, with neither set, "the parameters' own dtypes"."""
    if policy.param_dtype is None and policy.reduce_dtype is None:
        return "compute and reduction in the parameters' own dtypes"
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    compute = names.get(policy.param_dtype, str(policy.param_dtype)) if policy.param_dtype else "own-dtype"
    reduce = names.get(policy.reduce_dtype, str(policy.reduce_dtype)) if policy.reduce_dtype else compute
    return f"{compute} compute, {reduce} reduction"


def decoder_layers(model):
    """The LM's repeated blocks: modules of the classes its ``_no_split_modules`` names
    (what transformers itself never splits across devices)."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    names = set(getattr(llm, "_no_split_modules", None) or ())
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise RunError(f"run.distributed fsdp: {type(llm).__name__} names no decoder layer class "
                       "(_no_split_modules) to shard")
    return layers


STRATEGIES = {cls.name: cls for cls in (Replicated, Sharded)}


def strategy(name: str, device):
    """The run.distributed strategy (a choice of the schema: ``ddp`` or ``fsdp``)."""
    return STRATEGIES[str(name)](device)
