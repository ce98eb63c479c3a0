"""A CoLLM ``checkpoint_best.pth`` (``{"model": state_dict, ...}``) under our parameter names.

CoLLM (MiniGPT4Rec_v2) saves the state dict of its whole module less the
frozen parameters it reaches first; its names map onto ours as follows:

=============================================================  =========================================
theirs                                                         ours
=============================================================  =========================================
``llama_proj.0.{weight,bias}`` (Linear cf -> cf*mid)           ``proj.mlp.0.*``
``llama_proj.2.{weight,bias}`` (Linear cf*mid -> H*k)          ``proj.mlp.3.*`` (ours has a Dropout at 2)
``llama_model[_lora][.base_model.model].<hf>.lora_{A,B}[.default].weight``
                                                               ``llm.base_model.model.<hf>.lora_{A,B}.default.weight``
``rec_encoder.user_embedding / item_embedding`` (MF)           ``cf.user / cf.item``
``rec_encoder.embedding_user / embedding_item`` (LightGCN)     ``cf.user / cf.item``
other ``llama_model*`` tensors (the frozen LLaMA)              skipped: they come from model.llama_model
=============================================================  =========================================

Anything else trained (their SASRec / DIN encoders, the one-hot linear of
their prompt baselines) has no counterpart and is refused by name.

Their MF weight file (``baseline_train_mf_ood.py``: ``torch.save`` of the
model's state dict, ``user_embedding.weight`` / ``item_embedding.weight``)
also reads as a ``rec_config.pretrained_path``: :func:`collm_cf_payload`.
"""
import logging
import re
from typing import Dict, List, Tuple

import torch

from ..checkpoint import LOAD_ERRORS, CheckpointError

log = logging.getLogger("collm_faissret")

PROJ = {"llama_proj.0.": "proj.mlp.0.", "llama_proj.2.": "proj.mlp.3."}
CF = {"rec_encoder.user_embedding.": "cf.user.", "rec_encoder.item_embedding.": "cf.item.",
      "rec_encoder.embedding_user.": "cf.user.", "rec_encoder.embedding_item.": "cf.item."}
COLLM_MF_FILE = {"user_embedding.weight": "user.weight", "item_embedding.weight": "item.weight"}
LLM_PREFIXES = ("llama_model_lora.", "llama_model.")
OURS_LLM = "llm.base_model.model."
_LORA = re.compile(r"\.(lora_[AB])\.(?:default\.)?weight$")


def is_collm_state(state: dict) -> bool:
    """True for a state dict with CoLLM's top-level module names (none of ours)."""
    keys = list(state)
    theirs = any(k.startswith(("llama_proj.", "rec_encoder.") + LLM_PREFIXES) for k in keys)
    ours = any(k.startswith(("llm.", "proj.", "cf.")) for k in keys)
    return theirs and not ours


def _llm_name(key: str):
    """Their LLaMA-side key -> (hf name without peft wrappers, is_lora)."""
    for prefix in LLM_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            break
    if rest.startswith("base_model.model."):
        rest = rest[len("base_model.model."):]
    lora = _LORA.search(rest)
    if lora is None:
        return rest, False
    return rest[:lora.start()] + f".{lora.group(1)}.default.weight", True


def map_state(state: Dict[str, torch.Tensor], path: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(our state dict, their keys skipped as frozen backbone weights); CheckpointError on a
    trained tensor without a counterpart here."""
    out: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    for key, value in state.items():
        ours = None
        for table in (PROJ, CF):
            for theirs, mine in table.items():
                if key.startswith(theirs):
                    ours = mine + key[len(theirs):]
        if ours is None and key.startswith(LLM_PREFIXES):
            name, is_lora = _llm_name(key)
            if not is_lora:
                skipped.append(key)
                continue
            ours = OURS_LLM + name
        if ours is None:
            raise CheckpointError(f"{path}: CoLLM parameter {key} has no counterpart here (only the MLP projector, "
                                  "LoRA and MF / LightGCN tables map; docs/coming_from_collm.md)")
        if ours in out and not torch.equal(out[ours], value):
            raise CheckpointError(f"{path}: CoLLM parameters {key} and another name for {ours} differ")
        out[ours] = value
    return out, skipped


def checkpoint_state(payload: dict, path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` entry of a checkpoint under our names: ours as it is, a CoLLM one mapped."""
    state = payload["model"]
    if not is_collm_state(state):
        return state
    mapped, skipped = map_state(state, path)
    groups = {}
    for name in mapped:
        group = "lora" if "lora_" in name else name.split(".")[0]
        groups[group] = groups.get(group, 0) + 1
    log.info("model.ckpt %s is a CoLLM checkpoint: mapped %s; skipped %d frozen LLaMA tensors (from "
             "model.llama_model)", path, ", ".join(f"{n} {g}" for g, n in sorted(groups.items())), len(skipped))
    return mapped


def collm_cf_payload(path: str):
    """A CoLLM MF weight file as our cf_model.pth payload (sizes from its tables), or None
    when the file is not one. The caller checks the sizes against the data as for its own files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS:
        return None
    if not isinstance(state, dict) or set(state) != set(COLLM_MF_FILE):
        return None
    user, item = state["user_embedding.weight"], state["item_embedding.weight"]
    if user.dim() != 2 or item.dim() != 2 or user.shape[1] != item.shape[1]:
        return None
    log.info("rec_config.pretrained_path %s is a CoLLM MF weight file: users %d, items %d, dim %d",
             path, user.shape[0], item.shape[0], user.shape[1])
    return {"cf_model": "MF", "n_users": user.shape[0], "n_items": item.shape[0], "dim": user.shape[1],
            "state_dict": {COLLM_MF_FILE[k]: v for k, v in state.items()}}
