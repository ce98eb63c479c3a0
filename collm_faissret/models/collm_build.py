"""Making a CoLLM from its config (``build_collm``) and the steps around it: which parameter
groups a stage trains (``check_stage``, ``StageError`` for contradictory settings), gradient
checkpointing of the backbone, and the cold-start wrapper around the CF model.

``build_collm`` takes the class as an argument (``CoLLM.from_config`` passes itself) so that
this module never imports collm.py, which imports it.
"""
import logging

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import dist
from ..checkpoint import load, load_model_weights
from ..compat.collm_checkpoint import checkpoint_state
from ..prompts import has_id_slots, load_template
from ..retrieval.index import index_settings
from .backbone import (
    answer_token_ids,
    attach_lora,
    describe_answer_tokens,
    load_backbone,
    prepare_backbone,
    resolve_dtype,
    resolve_quantization,
)
from .cf import build_cf, cold_start_view

log = logging.getLogger(__name__)


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
    if model.hybrid_cf is not None:  # the hybrid score's CF model: borrowed vectors in its logit too
        model.hybrid_cf = cold_start_view(model.hybrid_cf, data, mcfg.cold_start, index_settings(cfg.retrieval))


def trained_model_config(payload: dict):
    """The ``model`` section of the config a checkpoint stores, or None (a CoLLM checkpoint stores
    none; one that cannot be read back says nothing either way)."""
    text = payload.get("config")
    if not text:
        return None
    try:
        return OmegaConf.create(text).model
    except (OmegaConfBaseException, AttributeError, ValueError):
        return None


def check_hybrid_cf(payload: dict, m) -> None:
    """A hybrid score's cf_weight is fitted to one CF model's logit: a checkpoint trained with
    model.hybrid_cf_path (its stored config says) is scored with one, and one trained without it
    without one (the projector's CF model's logit)."""
    trained = trained_model_config(payload)
    if trained is None or str(m.answer_score) != "hybrid" or str(trained.get("answer_score")) != "hybrid":
        return
    was, now = trained.get("hybrid_cf_path"), m.hybrid_cf_path
    if bool(was) != bool(now):
        raise StageError(f"{m.ckpt}: its hybrid score was trained on "
                         f"{'the logit of ' + str(was) if was else 'the CF model the projector reads'}, but "
                         f"model.hybrid_cf_path is {now or 'null'}: set model.hybrid_cf_path="
                         f"{was if was else 'null'} (the file, wherever it is now)")


def check_blend_source(payload: dict, m) -> None:
    """run.fit_blend weighs the log-odds logit(Yes) - logit(No): a checkpoint trained to score with
    the Yes logit alone (answer_score yes_logit, its stored config says) is refused; one that
    stores no config (CoLLM's own) is taken as it is."""
    trained = trained_model_config(payload)
    if trained is not None and str(trained.get("answer_score")) == "yes_logit":
        raise StageError(f"{m.ckpt}: trained with model.answer_score yes_logit, but run.fit_blend weighs the "
                         "log-odds logit(Yes) - logit(No) it was not trained to give; fit a checkpoint trained "
                         "with answer_score yes_minus_no or hybrid")


def build_collm(model_cls, cfg, data, device, backbone=None):
    """A model_cls (CoLLM) from the config: backbone (+LoRA), CF model and projector for slot prompts, stage set.

    backbone: an in-memory (causal LM, tokenizer) used instead of loading
    model.llama_model (benchmarks build random-weight 7B shapes this way: no
    13 GB save/load); it gets the same freezing, dtype and device as a loaded one.
    """
    m = cfg.model
    template = load_template(m.prompt_path)
    slots = has_id_slots(template)
    stage = check_stage(m, slots, cfg.run.evaluate)
    dtype = resolve_dtype(m.dtype, device)
    quantization = resolve_quantization(m)
    fsdp = cfg.run.distributed == "fsdp" and dist.is_dist()
    # FSDP shards onto the GPU layer by layer: the backbone waits on the host (in its dtype) until then
    load_device = torch.device("cpu") if fsdp else device
    if backbone is None:
        llm, tok = load_backbone(m.llama_model, dtype, device, quantization, load_device)
    elif quantization != "none":
        raise StageError(f"model.quantization {quantization} loads from model.llama_model (bitsandbytes "
                         "quantizes while loading); an in-memory backbone cannot be quantized")
    else:
        llm, tok = prepare_backbone(backbone[0], dtype, load_device), backbone[1]
    if m.lora_config.use_lora:
        llm = attach_lora(llm, m.lora_config)
    cf = build_cf(m.rec_config, data, device, name=m.rec_model) if slots else None
    hybrid_cf = None
    if m.hybrid_cf_path:  # the file decides the model; no section of our own to agree with
        hybrid_cf = build_cf({"pretrained_path": m.hybrid_cf_path}, data, device, path_key="model.hybrid_cf_path")
    answer_ids = answer_token_ids(tok, template)
    log.info(describe_answer_tokens(tok, template, *answer_ids))
    model = model_cls(llm, tok, answer_ids, cf, m.proj_token_num, m.proj_mid_times, m.proj_drop, slots,
                  m.answer_score, template, m.max_txt_len, m.hybrid_llm_weight, hybrid_cf)
    model.to(load_device)
    if m.ckpt:  # ours, or a CoLLM checkpoint_best.pth under its own parameter names
        payload = load(m.ckpt, "model.ckpt")
        fit = cfg.run.get("fit_blend")
        if fit:  # the weights are fitted anew: what the checkpoint's score was trained as matters instead
            check_blend_source(payload, m)
        else:
            check_hybrid_cf(payload, m)
        loaded = load_model_weights(model, checkpoint_state(payload, m.ckpt), m.ckpt)
        if cfg.run.evaluate and not fit and model.llm_weight is not None and "llm_weight" not in loaded:
            # scoring would use the weight's starting value, not a trained one
            raise StageError(f"{m.ckpt}: no llm_weight in this checkpoint (trained without "
                             "model.hybrid_llm_weight); score it with model.hybrid_llm_weight=null")
    if m.cold_start.enabled:
        attach_cold_start(model, data, cfg)
    model.set_stage(*stage)
    if cfg.run.evaluate:
        model.freeze_for_scoring(m.lora_config.merge_for_scoring)
    if m.gradient_checkpointing:
        enable_checkpointing(llm)
    return model
