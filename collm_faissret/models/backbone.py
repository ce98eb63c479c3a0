"""Load a causal LM and its tokenizer from a local directory, and attach LoRA.

The same code path serves Vicuna-7B, any LLaMA-family or Qwen2 checkpoint,
and the embedded tiny backbone: AutoModelForCausalLM / AutoTokenizer with
files on disk only (no hub access). Weights stream from the files onto their
device shard by shard (transformers' ``device_map``), never as a full fp32
copy on the host; with ``model.quantization`` int8 / nf4 the linear layers
are quantized by bitsandbytes as they load (QLoRA).
"""
import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import List

import torch

from ..planner import QUANTIZATIONS  # model.quantization's values
from ..precision import cuda_half_dtype
from ..schema import Choice, setting


class BackboneError(ValueError):
    """A backbone directory that cannot be loaded."""


@dataclass
class LoraConfig:
    """``model.lora_config``: the LoRA adapter of the LLM (peft)."""
    use_lora: bool = setting(True, "attach a LoRA adapter to the LLM")
    r: int = setting(8, "LoRA rank")
    alpha: int = setting(16, "LoRA scaling numerator (scale = alpha / r)")
    target_modules: List[str] = setting(help="names of the LLM's linear layers that get LoRA",
                                        factory=lambda: ["q_proj", "v_proj"])
    dropout: float = setting(0.05, "dropout on the LoRA input")
    merge_for_scoring: bool = setting(
        True, "evaluate-only: fold the adapter into the base weights before scoring (one matmul per "
              "adapted layer instead of three); fp32, unquantized weights only")

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")


class Dtype(Choice):
    """``model.dtype``: auto (bf16 on CUDA, fp32 on CPU) or a fixed one."""
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# ``model.quantization``: none, int8, nf4; the planner's list, so each one it can load is one it estimates.
Quantization = Choice("Quantization", [(q, q) for q in QUANTIZATIONS])


class AnswerScore(Choice):
    """``model.answer_score``. Not "yes": YAML reads a bare yes as the boolean true."""
    yes_logit = "yes_logit"  # logit of the Yes token (CoLLM)
    yes_minus_no = "yes_minus_no"  # logit(Yes) - logit(No), the two-way softmax log-odds (TALLRec)
    hybrid = "hybrid"  # yes_minus_no + w * the CF model's own logit, w learned: the LLM corrects the CF model


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on a GPU with native bf16, fp16 on one that only emulates it (T4, V100), fp32
    on CPU; otherwise fp32 / bf16 / fp16."""
    if name == "auto":
        return cuda_half_dtype()[0] if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise BackboneError(f"model.dtype {name!r} unknown; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_backbone_dir(path: str) -> None:
    """Name the first file a checkpoint directory lacks, before transformers reads it.

    Layouts accepted: weights as one file or shards listed by an index
    (safetensors or ``.bin``); a tokenizer as ``tokenizer.json``, a
    SentencePiece ``tokenizer.model`` (LLaMA-1/2, Vicuna), or BPE
    ``vocab.json`` + ``merges.txt`` (Qwen2, GPT-2).
    """
    key = f"model.llama_model {path}"
    if not path or not os.path.isdir(path):
        raise BackboneError(f"model.llama_model: directory not found: {path}")

    def has(name):
        return os.path.isfile(os.path.join(path, name))

    if not has("config.json"):
        raise BackboneError(f"{key}: no config.json (not a save_pretrained directory)")
    indexes = [f for f in WEIGHT_INDEXES if has(f)]
    if indexes:
        with open(os.path.join(path, indexes[0])) as fh:
            try:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            except (ValueError, KeyError):
                raise BackboneError(f"{key}: {indexes[0]} is not a weight index (no weight_map)") from None
        for shard in shards:
            if not has(shard):
                raise BackboneError(f"{key}: missing weight shard {shard} (listed in {indexes[0]})")
    elif not any(has(f) for f in WEIGHT_FILES):
        raise BackboneError(f"{key}: no weights ({' / '.join(WEIGHT_FILES)} or a sharded index)")
    if has("tokenizer.json"):
        return
    if has("vocab.json"):
        if not has("merges.txt"):
            raise BackboneError(f"{key}: missing merges.txt (a BPE tokenizer's vocab.json needs it)")
        return
    if not has("tokenizer.model"):
        raise BackboneError(f"{key}: missing tokenizer.model (or tokenizer.json / vocab.json + merges.txt)")
    for module in ("sentencepiece", "google.protobuf"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise BackboneError(f"{key}: reading tokenizer.model needs the {module.split('.')[-1]} package: "
                                f"pip install {module.split('.')[-1]}")


def load_tokenizer(path: str):
    """The backbone's tokenizer, padding on the right as collate pads (each row's answer is read at
    its last token, and the causal mask keeps the padding after it out of every real token's view)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok




def resolve_quantization(mcfg) -> str:
    """model.quantization, with CoLLM's ``model.low_resource: true`` read as int8."""
    kind = mcfg.quantization
    if kind not in QUANTIZATIONS:
        raise BackboneError(f"model.quantization {kind!r} unknown; use {', '.join(QUANTIZATIONS)}")
    if mcfg.low_resource:
        if kind == "nf4":
            raise BackboneError("model.low_resource: true is CoLLM's 8-bit loading (int8) but model.quantization "
                                "is nf4: set only one of them")
        return "int8"
    return str(kind)


def quantization_config(kind: str, dtype: torch.dtype, device: torch.device):
    """transformers' BitsAndBytesConfig for ``kind`` (int8 / nf4), or None for none.

    nf4 uses double quantization (the block scales are quantized too) and
    computes in bf16 on CUDA, in ``dtype`` elsewhere. Raises BackboneError when
    this machine cannot run bitsandbytes.
    """
    if kind == "none":
        return None
    if device.type not in ("cuda", "cpu"):
        raise BackboneError(f"model.quantization {kind}: bitsandbytes runs on cuda or cpu, not {device.type}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BackboneError(f"model.quantization {kind} needs the bitsandbytes package "
                            "(pip install bitsandbytes==0.50.2), which is not installed") from None
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.type == "cuda" else dtype
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_backbone(path: str, dtype: torch.dtype, device: torch.device, quantization: str = "none",
                  load_device=None):
    """Return (frozen causal LM on ``device``, tokenizer).

    Weights go from the files straight to ``load_device`` (default ``device``)
    in ``dtype``: no fp32 host copy. FSDP loads onto the CPU (``load_device``
    cpu) and moves one decoder layer at a time onto the GPU as it shards.
    """
    from transformers import AutoModelForCausalLM

    check_backbone_dir(path)
    tok = load_tokenizer(path)
    quant = quantization_config(quantization, dtype, device)
    target = device if quant is not None or load_device is None else load_device
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quant,
                                                 device_map={"": target})
    if quant is not None:
        keep_cpu_weights_exact(model, device)
        return prepare_quantized(model), tok
    return prepare_backbone(model, dtype, target), tok


def prepare_quantized(model):
    """peft's k-bit preparation (frozen base; norms, embeddings and head upcast to fp32 for
    stable training), without its gradient checkpointing: model.gradient_checkpointing decides."""
    from peft import prepare_model_for_kbit_training

    model.config.use_cache = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_cpu_weights_exact(model, device: torch.device):
    """Turn off bitsandbytes' CPU 4-bit inference repacking (on CPUs with AVX512-BF16).

    In eval mode it rewrites each weight into a CPU layout whose block scales are
    rounded to bf16, and every state_dict() (a checkpoint save, a peft adapter save)
    converts it back: the frozen base drifts a little at each evaluation, training
    continues on the rounded weights, and a reloaded checkpoint scores differently.
    It also needs layer widths in whole 64-weight blocks. Off, the weights stay as loaded.
    """
    if device.type != "cpu":
        return
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_backbone(model, dtype: torch.dtype, device: torch.device):
    """What every backbone gets, loaded from disk or built in memory: frozen,
    no KV cache (training and scoring read one position), on ``device`` in ``dtype``."""
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device=device, dtype=dtype)


# bitsandbytes logs this at import time on CPUs with AVX512-BF16 when the optional `kernels`
# package (a faster CPU 4-bit matmul fetched from a hub) is absent. peft imports bitsandbytes
# whenever it is installed, so every run would start with it; it only concerns nf4 on CPU.
BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


@contextlib.contextmanager
def bitsandbytes_notice_muted():
    """Hide bitsandbytes' import-time notice about its optional CPU 4-bit kernel.

    Used around the first peft import of a run without quantization. With
    ``model.quantization`` set, bitsandbytes is imported earlier (quantization_config)
    with its logging untouched, so the notice shows where it matters.
    """
    logger = logging.getLogger(BNB_CPU_KERNEL_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def attach_lora(model, lora_cfg):
    """Wrap ``model`` with a peft LoRA adapter (weights trainable; base frozen)."""
    with bitsandbytes_notice_muted():
        from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                     target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def answer_marker(template: str) -> str:
    """The text the answer follows: the template's last line ("#Answer:")."""
    return template.rstrip().splitlines()[-1]


def answer_token_id(tokenizer, word: str, marker: str = "Answer:") -> int:
    """The first token the tokenizer produces for ``word`` written after ``marker``.

    That is the token the LM emits: SentencePiece gives "▁Yes", byte-level BPE
    " Yes", a word-level tokenizer "Yes". Encoding the word alone would give
    "Yes" in BPE, a different token (SmolLM2: 10539 vs 9230).
    """
    prefix = tokenizer(marker, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{marker} {word}", add_special_tokens=False)["input_ids"]
    if len(full) <= len(prefix) or full[:len(prefix)] != prefix:
        raise BackboneError(f"the answer word {word!r} does not tokenise as a continuation of {marker!r}")
    first = full[len(prefix)]
    if tokenizer.unk_token_id is not None and first == tokenizer.unk_token_id:
        raise BackboneError(f"the answer word {word!r} is an unknown token for this tokenizer")
    return first


def answer_token_ids(tokenizer, template: str, words=("Yes", "No")):
    """(yes_id, no_id) for a prompt template; both words must start with different tokens."""
    marker = answer_marker(template)
    yes, no = (answer_token_id(tokenizer, w, marker) for w in words)
    if yes == no:
        raise BackboneError(f"the answer words {words[0]!r} and {words[1]!r} both start with token {yes} "
                            f"({tokenizer.convert_ids_to_tokens(yes)!r}) after {marker!r}: "
                            "the LM could not tell them apart")
    return yes, no


def describe_answer_tokens(tokenizer, template: str, yes_id: int, no_id: int) -> str:
    """One log line: "answer tokens: ' Yes'=9230 ' No'=2838", each token as the text it adds
    after the answer marker (SentencePiece's "▁Yes" shows as ' Yes' too)."""
    prefix = tokenizer(answer_marker(template), add_special_tokens=False)["input_ids"]
    head = tokenizer.decode(prefix)
    return "answer tokens: " + " ".join(
        f"{tokenizer.decode(prefix + [i])[len(head):]!r}={i}" for i in (yes_id, no_id))
