"""Setup pieces of the benchmarks: the named backbone shapes, run configs, a
random-weight backbone of a named shape, its tokenizer, and CF weights.

Everything here builds inputs for the framework's own classes; nothing here
is timed.
"""
import os

import torch

from collm_faissret.planner import SHAPES as PLANNER_SHAPES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_CONFIGS = {1: "train_configs/collm_stage1_ml1m.yaml", 2: "train_configs/collm_stage2_mf_ml1m.yaml"}

# LlamaConfig keyword arguments of the named shapes. 7b (LLaMA-7B / Vicuna-7B) and 13b are the
# planner's; 1b is TinyLlama-1.1B's (grouped-query attention, 4 KV heads); tiny is a 2-layer toy
# for CPU smoke runs.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=1000),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    **{name: dict(sizes) for name, sizes in PLANNER_SHAPES.items()},
}


def stage_config(stage: int, data_dir: str, out_dir: str, device: str, max_txt_len: int, batch_size: int,
                 eval_batch_size: int, steps: int, num_workers: int, grad_ckpt: bool, bucketing: bool,
                 mf_path: str = None, dtype: str = "auto", options=()):
    """The repository's stage YAML through the real config loader, with overrides for a
    short benchmark run (one epoch of ``steps`` iterations, no stage-1 checkpoint), then
    ``options`` (later ones win: e.g. a model.llama_model directory and model.quantization).

    Scoring runs every prompt whole (run.shared_prefix=off): the yardstick scores as many
    tokens per row as our unpacked batches hold, so a packed batch (rows sharing a prompt
    prefix computed once, about a fifth fewer tokens on the validation split) would compare
    less work against more. bench/score_throughput.py measures what sharing gains."""
    from collm_faissret.config_loader import load_config

    overrides = [
        "model.llama_model=in-memory", f"model.max_txt_len={max_txt_len}", f"model.dtype={dtype}",
        f"model.gradient_checkpointing={str(grad_ckpt).lower()}",
        f"datasets.movielens_ood.path={data_dir}",
        f"run.output_dir={out_dir}", f"run.device={device}", f"run.batch_size_train={batch_size}",
        f"run.batch_size_eval={eval_batch_size}", f"run.iters_per_epoch={steps}", "run.max_epoch=1",
        f"run.num_workers={num_workers}", f"run.length_bucketing={str(bucketing).lower()}",
        "run.accum_grad_iters=1",  # one optimizer step per batch, as the yardstick does
        "run.shared_prefix=off",  # equal tokens per row on both sides (see above)
    ]
    if stage == 2:
        overrides += ["model.ckpt=null", f"model.rec_config.pretrained_path={mf_path}"]
    return load_config(os.path.join(REPO, STAGE_CONFIGS[stage]), overrides + list(options))


def build_tokenizer(data, vocab_size: int):
    """Word-level tokenizer trained on the data set's titles and the prompt templates.

    Each distinct title counts once and the template words are repeated so the
    vocabulary cut never drops them: a few seconds instead of the half minute
    that training on every row's titles takes. Token counts do not depend on
    the vocabulary (one token per word or punctuation mark, known or not).
    """
    from collm_faissret.tiny_backbone import build_tokenizer as train_word_tokenizer
    from collm_faissret.tiny_backbone import template_texts

    titles = set()
    for df in data.splits.values():
        titles.update(df["title"].astype(str))
        for his in df["his_title"]:
            titles.update(str(t) for t in his)
    titles.discard("")
    prompts = template_texts(os.path.join(REPO, "prompt"))
    texts = sorted(titles)
    return train_word_tokenizer(texts + prompts * max(len(texts), 1), vocab_size)


def random_backbone(sizes: dict, tokenizer, dtype: torch.dtype, device: torch.device):
    """LlamaForCausalLM of the shape ``sizes`` (a SHAPES entry) with random
    weights and the tokenizer's special ids."""
    if len(tokenizer) > sizes["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the shape's vocab {sizes['vocab_size']}")
    return llama_of_shape(sizes, dtype, device, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def llama_of_shape(sizes: dict, dtype: torch.dtype, device: torch.device, **special_ids):
    """Random-weight LlamaForCausalLM of the shape ``sizes``, built directly on ``device`` in
    ``dtype`` (bench/tp_bare.py builds its own the same way); SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**sizes, max_position_embeddings=2048, **special_ids)
    cfg._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model


def save_random_checkpoint(sizes: dict, tokenizer, dtype: torch.dtype, device: torch.device, out_dir: str) -> int:
    """Write a random-weight LLaMA of the shape ``sizes`` and ``tokenizer`` with save_pretrained
    (safetensors) into ``out_dir``, as a real checkpoint directory is laid out; returns the
    parameter count. Quantized runs need one: bitsandbytes quantizes while from_pretrained loads."""
    model = random_backbone(sizes, tokenizer, dtype, device)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return n


def loaded_backbone(path: str, dtype: torch.dtype, device: torch.device):
    """A checkpoint directory's causal LM (its real weights) on ``device`` in ``dtype``, SDPA attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.config._attn_implementation = "sdpa"
    return model


def write_random_mf(data, dim: int, path: str) -> str:
    """A CF weight file with random MF weights (stage 2 reads it; speed does not depend on values)."""
    from collm_faissret.checkpoint import save_atomic
    from collm_faissret.models.cf import CFConfig
    from collm_faissret.models.cf.mf import MF

    save_atomic(MF(data.n_users, data.n_items, CFConfig(embedding_size=dim)).weights_payload(), path)
    return path
