"""Load a causal LM and its tokenizer from a local directory, and attach LoRA.

The same code path serves Vicuna-7B, any LLaMA-family or Qwen2 checkpoint,
and the embedded tiny backbone: AutoModelForCausalLM / AutoTokenizer with
files on disk only (no hub access).
"""
import os

import torch


class BackboneError(ValueError):
    """A backbone directory that cannot be loaded."""


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on CUDA, fp32 on CPU; otherwise fp32 / bf16 / fp16."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise BackboneError(f"model.dtype {name!r} unknown; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    has_tok = any(os.path.isfile(os.path.join(path, f))
                  for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json"))
    if not has_tok:
        raise BackboneError(f"model.llama_model {path}: no tokenizer files (tokenizer.json / tokenizer.model)")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # the answer logit is read at the last position of every row
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_backbone(path: str, dtype: torch.dtype, device: torch.device):
    """Return (frozen causal LM on ``device``, tokenizer)."""
    from transformers import AutoModelForCausalLM

    if not path or not os.path.isdir(path):
        raise BackboneError(f"model.llama_model: directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise BackboneError(f"model.llama_model {path}: no config.json (not a save_pretrained directory)")
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return prepare_backbone(model, dtype, device), tok


def prepare_backbone(model, dtype: torch.dtype, device: torch.device):
    """What every backbone gets, loaded from disk or built in memory: frozen,
    no KV cache (training and scoring read one position), on ``device`` in ``dtype``."""
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def attach_lora(model, lora_cfg):
    """Wrap ``model`` with a peft LoRA adapter (weights trainable; base frozen)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                     target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def answer_token_id(tokenizer, word: str) -> int:
    """The first token of ``word`` as the model would emit it after "Answer:"."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise BackboneError(f"tokenizer cannot encode the answer word {word!r}")
    if tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id:
        raise BackboneError(f"the answer word {word!r} is an unknown token for this tokenizer")
    return ids[0]
