"""Training memory per GPU, estimated from a backbone's shape: what fits on which card.

  python -m collm_faissret.env --cfg-path CONFIG --plan [--shape 7b|13b] [--gpus N --gib 24]

For each of model.quantization {none, int8, nf4} x run.distributed {ddp, fsdp}
at the config's run.batch_size_train and model.max_txt_len (the longest
prompt), the estimated peak of one GPU and the largest batch that fits the
stated memory. The parts:

* weights: linear layers of the decoder in bf16 (2 bytes), int8 (1 byte and an
  fp32 scale per output row) or NF4 (half a byte, an 8-bit scale per 64 weights
  and an fp32 scale per 256 of those); embeddings, head and norms in bf16, or in
  fp32 when quantized (peft's k-bit preparation upcasts them).
* trainable parameters (LoRA of the stage, projector): fp32 weight, gradient and
  AdamW's two moments, 16 bytes each; a frozen adapter 4 bytes.
* activations: what autograd keeps for the backward pass, per token of the padded
  batch (B x L), summed over the decoder layers, plus a fixed part once per model
  (activation_terms lists each term and why). Per layer, in bf16 unless said:
  both RMSNorms' fp32 inputs and fp32 1/rms; q and k after RoPE, v and the
  attention output (on CUDA, where a mask is passed, k and v expanded to every
  query head; on the CPU, with no mask, SDPA takes grouped heads as they are), and
  the fp32 log-sum-exp per head (flash-style kernels recompute the probabilities);
  on CUDA SDPA's additive copy of the causal [L, L] mask, once per layer whatever
  the batch size (prompts are right-padded: no padding mask); the MLP's gate, SiLU and up
  outputs; per LoRA module its dropout mask and, when the adapter trains, the
  fp32 inputs of lora_A and lora_B. Frozen linear layers keep nothing (their
  input is needed only for a weight gradient). Checked against autograd's saved
  tensors on CPU by bench/act_memory.py (to within 1% at the tiny and 1b shapes)
  and tests/test_planner.py; the CUDA kernels' copies (dropout mask, mask) are
  modelled, not measured. With int8 / nf4 every one of these is fp32: peft's
  k-bit preparation upcasts the embeddings and norms, so the hidden states are
  fp32 and bitsandbytes' layers return their input's dtype (measured on CPU; on
  CUDA, AMP may run attention in bf16, so this is an upper bound there). With
  model.gradient_checkpointing each layer keeps only its input (H values), and
  one layer's activations exist at a time.
* fsdp: every weight and optimizer state divided by the GPU count, plus the
  gathered bf16 weights of two decoder layers (the running one and the next,
  prefetched) and of the root (embeddings, head), which stay gathered through
  a step. Not with int8 / nf4: bitsandbytes' weights are not sharded (the
  runner refuses the combination), so those rows say so.
* a fixed allowance for the CUDA context, cuBLAS workspaces and allocator slack
  (OVERHEAD_GIB, an assumption, not a measurement).

bench/act_memory.py measures the same parts on CPU (autograd's saved tensors of
real 1- and 2-layer builds) and prints this module's estimate beside them.
"""
import json
import math
import os

GIB = 2 ** 30
OVERHEAD_GIB = 0.75
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # per weight: 4-bit code + double-quantized block scales

# Named shapes (LLaMA / Vicuna); others come from the backbone's config.json.
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
}
QUANTIZATIONS = ("none", "int8", "nf4")  # model.quantization's values (models/backbone.py reads them here)
DISTRIBUTED = ("ddp", "fsdp")


def shape_from_config_json(path: str) -> dict:
    """The sizes of a save_pretrained directory's config.json (LLaMA-family keys)."""
    with open(os.path.join(path, "config.json")) as fh:
        cfg = json.load(fh)
    shape = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "vocab_size")}
    shape["num_key_value_heads"] = cfg.get("num_key_value_heads") or shape["num_attention_heads"]
    shape["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    return shape


def linear_dims(shape: dict) -> dict:
    """(inputs, outputs) of each linear layer of one decoder layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def weight_bytes(shape: dict, quantization: str) -> dict:
    """{"layer": bytes of one decoder layer, "root": embeddings + head + final norm}."""
    h, v = shape["hidden_size"], shape["vocab_size"]
    dims = linear_dims(shape).values()
    linear = sum(a * b for a, b in dims)
    rows = sum(b for _, b in dims)
    other_bytes = 4 if quantization != "none" else 2
    per_weight = {"none": 2, "int8": 1, "nf4": NF4_BYTES}[quantization]
    layer = linear * per_weight + (rows * 4 if quantization == "int8" else 0) + 2 * h * other_bytes
    root = (v * h * (1 if shape["tie_word_embeddings"] else 2) + h) * other_bytes
    return {"layer": layer, "root": root}


# The CF embedding size when the config leaves it to the weight file (rec_config.pretrained_path):
# the schema's default; the projector it sizes is a rounding error beside the LM.
CF_DIM_DEFAULT = 64


def cf_dim(model_cfg) -> int:
    return model_cfg.rec_config.get("embedding_size") or CF_DIM_DEFAULT


def trainable_params(shape: dict, model_cfg) -> dict:
    """{"trained": parameters the stage trains, "frozen_adapter": LoRA kept frozen (stage 2)}."""
    lora = 0
    if model_cfg.lora_config.use_lora:
        dims = linear_dims(shape)
        per_layer = sum(model_cfg.lora_config.r * sum(dims[n]) for n in model_cfg.lora_config.target_modules
                        if n in dims)
        lora = per_layer * shape["num_hidden_layers"]
    proj = 0
    if not model_cfg.freeze_proj:
        d, m, k = cf_dim(model_cfg), model_cfg.proj_mid_times, model_cfg.proj_token_num
        proj = d * d * m + d * m + d * m * shape["hidden_size"] * k + shape["hidden_size"] * k
    trained = proj + (lora if not model_cfg.freeze_lora else 0)
    return {"trained": trained, "frozen_adapter": lora if model_cfg.freeze_lora else 0}


def inputs_need_grad(model_cfg) -> bool:
    """Whether the LM's input embeddings carry a gradient: a projector (or, through it, the
    CF model) trains. Stage 1 trains only LoRA, and its first layer's input needs none."""
    return not (model_cfg.freeze_proj and model_cfg.freeze_rec)


def activation_terms(shape: dict, model_cfg, seq_len: int, device: str = "cuda", quantization: str = "none") -> dict:
    """Bytes autograd keeps for the backward pass, per token of a padded [B, L] batch.

    Returns {"layer": {term: bytes} for one decoder layer, "fixed": {term: bytes} once per
    model}, and "shared": {term: bytes} per decoder layer per step, whatever the batch size.
    ``device`` "cpu" or "cuda" picks the dropout kernel and whether attention gets a mask
    (see below). Hidden states are bf16 (2 bytes), or fp32 with int8 / nf4: k-bit preparation
    upcasts the embeddings, so the residual stream and every bitsandbytes output are fp32.
    """
    h, i = shape["hidden_size"], shape["intermediate_size"]
    heads = shape["num_attention_heads"]
    head_dim = h // heads
    lora = model_cfg.lora_config
    dims = linear_dims(shape)
    targets = [n for n in lora.target_modules if n in dims] if lora.use_lora else []
    adapter_trains = lora.use_lora and not model_cfg.freeze_lora
    # LoRA's dropout keeps a mask of its fp32 input: CUDA's fused dropout a bool mask (1 byte),
    # the CPU's composite dropout its scaled noise tensor in the input's dtype (fp32, 4 bytes).
    mask_bytes = (1 if device == "cuda" else 4) if lora.dropout > 0 else 0
    act = 2 if quantization == "none" else 4  # bytes of one hidden-state value
    # Right-padded prompts need no padding mask: none on the CPU, the causal [1, 1, L, L] on CUDA
    # (models/collm.py body_mask). Without a mask SDPA takes grouped k / v heads as they are;
    # with one transformers expands them to every query head first (repeat_kv).
    masked = device != "cpu"
    kv_width = h if masked else shape.get("num_key_value_heads", heads) * head_dim

    def lora_bytes(names, input_grad):
        total = 0
        for n in names:
            width = dims[n][0]
            if input_grad:  # the dropout's backward needs its mask only when a gradient reaches the input
                total += mask_bytes * width
            if adapter_trains:  # lora_A's and lora_B's weight gradients need their fp32 inputs
                total += 4 * width + 4 * lora.r
        return total

    norm = 4 * h + 4  # LlamaRMSNorm upcasts to fp32: its backward keeps the fp32 input and 1/rms per token
    layer = {
        "norms": 2 * norm,
        # q and k after RoPE, v, and the output: what SDPA's backward reads (k and v kv_width
        # wide, see above); plus the fp32 log-sum-exp per head (flash-style kernels keep that
        # instead of the L x L probabilities).
        "attention": act * (2 * h + 2 * kv_width) + 4 * heads,
        # SiLU's input (gate), its output and up's output (the product's backward needs both
        # factors); down_proj is frozen, so its input is not kept.
        "mlp": act * 3 * i,
        "lora": lora_bytes(targets, True),
    }
    # No final norm: CoLLM runs the body with its final norm skipped and norms only the
    # positions it reads, in fp32 (models/collm.py hidden_states / answer_logits).
    fixed = {"rope": act * 2 * head_dim}  # cos and sin (in the hidden dtype), shared by every layer's q and k
    if not inputs_need_grad(model_cfg):  # stage 1: layer 0's input has no gradient to carry
        fixed["first_layer"] = -norm - (layer["lora"] - lora_bytes(targets, False))
    # Not counted: the loss path ([B] floats), the projector's and CF lookups' few
    # [B, d] tensors, and the last-position logits (the frozen head keeps nothing).
    # On CUDA SDPA turns the boolean causal mask into an additive one in q's dtype on every call
    # and the backward keeps that copy: [L, L] per layer, one for the whole batch.
    shared = {"mask": act * seq_len * seq_len} if masked else {}
    return {"layer": layer, "fixed": fixed, "shared": shared}


def estimate(shape: dict, model_cfg, quantization: str, distributed: str, batch: int, seq_len: int,
             gpus: int = 1, overhead_gib: float = OVERHEAD_GIB, cf_rows: int = 0, device: str = "cuda") -> dict:
    """Bytes per GPU by part, and the total, for one training step at ``batch`` x ``seq_len``.

    cf_rows: users + items of the CF model's fp32 tables (stage 2), when known; the
    command line does not read the data, and ML-1M's MF (64-d) is 2.5 MB. device: see
    activation_terms (bench/act_memory.py compares with CPU measurements).
    """
    layers = shape["num_hidden_layers"]
    w = weight_bytes(shape, quantization)
    t = trainable_params(shape, model_cfg)
    terms = activation_terms(shape, model_cfg, seq_len, device, quantization)
    per_layer = sum(terms["layer"].values())
    if model_cfg.gradient_checkpointing:  # each layer keeps its input; one layer is recomputed at a time
        per_token = (2 if quantization == "none" else 4) * shape["hidden_size"] * layers + per_layer
    else:
        per_token = per_layer * layers
    per_sample = (per_token + sum(terms["fixed"].values())) * seq_len
    # kept once per layer whatever the batch (checkpointed: by the one layer being recomputed)
    shared = sum(terms["shared"].values()) * (1 if model_cfg.gradient_checkpointing else layers)
    shards = gpus if distributed == "fsdp" else 1
    parts = {
        "weights": (w["layer"] * layers + w["root"]) / shards
        + (4 * cf_rows * cf_dim(model_cfg) if not model_cfg.freeze_proj else 0),
        "trainable": (16 * t["trained"] + 4 * t["frozen_adapter"]) / shards,
        "gathered": 2 * w["layer"] + w["root"] if distributed == "fsdp" and gpus > 1 else 0.0,
        "activations": per_sample * batch + shared,
        "overhead": overhead_gib * GIB,
    }
    return {"parts": parts, "total": sum(parts.values()), "per_sample": per_sample, "shared": shared}


def largest_batch(est: dict, batch: int, budget_bytes: float) -> int:
    """The largest batch whose estimate stays within ``budget_bytes`` (0 when none does)."""
    fixed = est["total"] - est["parts"]["activations"] + est["shared"]
    return max(0, math.floor((budget_bytes - fixed) / est["per_sample"]))


def plan(shape: dict, model_cfg, batch: int, seq_len: int, gpus: int, gib: float) -> list:
    """One row per (quantization, distributed): estimate at ``batch``, largest batch within ``gib``."""
    rows = []
    for quantization in QUANTIZATIONS:
        for distributed in DISTRIBUTED:
            row = {"quantization": quantization, "distributed": distributed, "gpus": gpus, "batch": batch,
                   "seq_len": seq_len}
            if distributed == "fsdp" and quantization != "none":
                row["note"] = "not supported (bitsandbytes weights are not sharded)"
            elif distributed == "fsdp" and gpus < 2:
                row["note"] = "needs 2+ GPUs"
            else:
                est = estimate(shape, model_cfg, quantization, distributed, batch, seq_len, gpus)
                row.update({k: round(v / GIB, 2) for k, v in est["parts"].items()})
                row["total_gib"] = round(est["total"] / GIB, 2)
                row["fits"] = est["total"] <= gib * GIB
                row["max_batch"] = largest_batch(est, batch, gib * GIB)
            rows.append(row)
    return rows


def table_lines(rows: list, gib: float) -> list:
    head = (f"{'quant':>5} {'dist':>4} | {'weights':>7} {'train':>6} {'gather':>6} {'activ':>6} {'other':>5} | "
            f"{'GiB/GPU':>7} {'fits ' + format(gib, 'g'):>8} {'max batch':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "note" in r:
            lines.append(f"{r['quantization']:>5} {r['distributed']:>4} | {r['note']}")
            continue
        lines.append(f"{r['quantization']:>5} {r['distributed']:>4} | {r['weights']:>7.2f} {r['trainable']:>6.2f} "
                     f"{r['gathered']:>6.2f} {r['activations']:>6.2f} {r['overhead']:>5.2f} | "
                     f"{r['total_gib']:>7.2f} {'yes' if r['fits'] else 'no':>8} {r['max_batch']:>9}")
    return lines
