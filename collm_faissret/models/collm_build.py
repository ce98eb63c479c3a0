"""The checks and steps ``build_collm`` (collm.py) runs around making a CoLLM: which parameter
groups a stage trains (``check_stage``, ``StageError`` for contradictory settings), gradient
checkpointing of the backbone, and the cold-start wrapper around the CF model.

``build_collm`` itself stays in collm.py: ``CoLLM.from_config`` calls it and it constructs a
CoLLM, so apart from the class the two modules would import each other. Nothing here needs
the class.
"""
from ..retrieval.index import index_settings
from .cf import cold_start_view


class StageError(ValueError):
    """Contradictory stage settings (nothing trainable, a projector with no slot, ...)."""


def check_stage(mcfg, has_slots: bool, evaluate: bool):
    """Which groups train: (lora, proj, rec). Raises StageError on contradictions."""
    use_lora = mcfg.lora_config.use_lora
    if not has_slots and not mcfg.freeze_proj:
        raise StageError(f"model.freeze_proj is false but {mcfg.prompt_path} has no <UserID>/<TargetItemID> slot: "
                         "the projector would get no input (use a stage-2 prompt or set freeze_proj: true)")
    if not has_slots and not mcfg.freeze_rec:
        raise StageError(f"model.freeze_rec is false but {mcfg.prompt_path} has no ID slot: the CF model is unused")
    if not use_lora and not mcfg.freeze_lora:
        raise StageError("model.freeze_lora is false but model.lora_config.use_lora is false: no LoRA to train")
    if has_slots and mcfg.freeze_rec and not mcfg.rec_config.pretrained_path and not (evaluate and mcfg.ckpt):
        raise StageError("the prompt has ID slots and model.freeze_rec is true, but model.rec_config.pretrained_path "
                         "is not set: frozen random CF embeddings carry no signal (train them with baseline_train.py)")
    stage = (use_lora and not mcfg.freeze_lora, has_slots and not mcfg.freeze_proj,
             has_slots and not mcfg.freeze_rec)
    if not any(stage) and not evaluate:
        raise StageError("nothing is trainable: freeze_lora, freeze_proj and freeze_rec leave no parameter to tune")
    return stage


def enable_checkpointing(llm):
    """Recompute each decoder layer in the backward pass (non-reentrant: the frozen
    embeddings need no requires_grad trick). transformers renamed the switch to
    ``activation_checkpointing_enable``; releases before the rename only have the old name."""
    kwargs = {"use_reentrant": False}
    enable = getattr(llm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def attach_cold_start(model, data, cfg):
    """Give the CF model feeding the projector borrowed vectors for cold users/items.

    Done after the checkpoint is loaded: the wrapper's tables are derived from
    the CF weights, and checkpoints keep the unwrapped parameter names.
    """
    mcfg = cfg.model
    if model.cf is None:
        raise StageError(f"model.cold_start.enabled is true but {mcfg.prompt_path} has no ID slot: "
                         "no CF embedding enters the prompt")
    model.cf = cold_start_view(model.cf, data, mcfg.cold_start, index_settings(cfg.retrieval))
