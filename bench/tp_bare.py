"""The yardstick: a bare transformers + peft LoRA training / scoring loop.

The project's own steps (bench/train_throughput.py, bench/act_memory.py) are measured
against it in the same run, on the same device, at the same batch size and tokens per
row. It has no data pipeline: random token ids, --seq-len per row (train_throughput.py
gives it the padded width of each of its own batches instead, step by step), LoRA (r=8, alpha 16,
dropout 0.05, q_proj / v_proj) on a LLaMA-shaped model, BCE on the "Yes" logit at the
last position, AdamW at lr 1e-4. Speed and memory do not depend on the weight values, so
a named shape (tiny, 1b, 7b, 13b: bench/tp_setup.py's SHAPES) gets random weights; a
checkpoint directory is loaded with from_pretrained.

The LM head runs at the last position only (``logits_to_keep=1``), as ours does;
``--full-logits`` computes [B, L, vocab] logits and reads one column instead (what a
loop written without that option does; at a 49k vocabulary it is a large share of the
time, and it adds the logits to the peak memory).

``--cf N_USERS N_ITEMS DIM`` makes it the yardstick of a stage-2 step (CoLLM's projector
tuned, LoRA frozen), the same model work written in plain torch: frozen user and item
embedding tables of that size, a projector of FECE's architecture (Linear DIM ->
DIM * --proj-mid-times, ReLU, Dropout, Linear -> hidden * --proj-token-num), one
projector call over the batch's users and items, its rows written into the input
embeddings at --proj-token-num user and as many item positions per row, the forward
from inputs_embeds, and in training the backward through every layer down to those
positions into the projector, AdamW on the projector alone. Without it (stage 1) the
LoRA weights are what trains and there is no CF model.

  python bench/tp_bare.py --shape tiny --device cpu --steps 3
  python bench/tp_bare.py --shape tiny --device cpu --steps 3 --cf 6040 3706 64
  python bench/tp_bare.py --shape 7b --batch-size 4 16 --seq-len 256 --full-logits

Prints one JSON line per measurement.
"""
import argparse
import contextlib
import json
import os
import time

import torch

from collm_faissret.models.backbone import DTYPES


def build(shape: str, sizes: dict, dtype: torch.dtype, device: torch.device, quantization: str = "none"):
    """(LoRA model, vocab size): a directory loaded with from_pretrained, else ``sizes[shape]``
    (LlamaConfig keyword arguments) with random weights.

    quantization int8 / nf4 (a directory only): the plain QLoRA recipe of transformers and
    peft, with the settings our model.quantization uses (nf4: double quantization, bf16
    compute on CUDA), then peft's k-bit preparation without gradient checkpointing."""
    from tp_setup import llama_of_shape, loaded_backbone

    from collm_faissret.models.backbone import bitsandbytes_notice_muted

    # bitsandbytes' notice about its optional CPU kernel matters only when it quantizes
    with bitsandbytes_notice_muted() if quantization == "none" else contextlib.nullcontext():
        from peft import LoraConfig, get_peft_model

    if quantization != "none":
        model = quantized_backbone(shape, quantization, dtype, device)
    elif os.path.isdir(shape):
        model = loaded_backbone(shape, dtype, device)
    else:
        model = llama_of_shape(sizes[shape], dtype, device)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), model.config.vocab_size


def quantized_backbone(path: str, quantization: str, dtype: torch.dtype, device: torch.device):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization == "int8":
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = torch.bfloat16 if device.type == "cuda" else dtype
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=bnb, device_map={"": device})
    model.config._attn_implementation = "sdpa"
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


class SlotInputs(torch.nn.Module):
    """Stage 2's inputs in plain torch: frozen CF tables [n_users, dim] / [n_items, dim] and a
    projector dim -> dim * mid_times -> hidden * token_num (FECE's layers).

    forward(emb [B, L, H], uid [B], iid [B]) -> emb with token_num columns mid-row and token_num
    near its end (where a CoLLM prompt has its user and item slots) set to the projections of
    each row's user and item."""

    def __init__(self, n_users: int, n_items: int, dim: int, hidden: int, token_num: int, mid_times: int,
                 drop: float):
        super().__init__()
        self.user, self.item = torch.nn.Embedding(n_users, dim), torch.nn.Embedding(n_items, dim)
        self.user.weight.requires_grad_(False)
        self.item.weight.requires_grad_(False)
        self.proj = torch.nn.Sequential(torch.nn.Linear(dim, dim * mid_times), torch.nn.ReLU(),
                                        torch.nn.Dropout(drop), torch.nn.Linear(dim * mid_times, hidden * token_num))
        self.k, self.hidden = token_num, hidden

    def forward(self, emb, uid, iid):
        n, width, k = emb.shape[0], emb.shape[1], self.k
        tok = self.proj(torch.cat([self.user(uid), self.item(iid)])).view(2, n, k, self.hidden).to(emb.dtype)
        user = width // 2
        item = min(max(width - 16 - k, user + k), width - k)
        emb[:, user:user + k] = tok[0]
        emb[:, item:item + k] = tok[1]
        return emb


def run(args, mode: str, batch_size: int, sizes: dict) -> dict:
    """One measurement; args: shape, device, dtype (bf16/fp16/fp32), seq_len, steps, warmup
    (and optionally quantization, full_logits, and cf = (n_users, n_items, dim) with
    proj_token_num / proj_mid_times / proj_drop for a stage-2 step). ``sizes``: the named shapes."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model, vocab = build(args.shape, sizes, dtype, device, getattr(args, "quantization", "none"))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    yes_id = 8241 % vocab  # any fixed id: " Yes" in LLaMA's vocabulary
    keep = {} if getattr(args, "full_logits", False) else {"logits_to_keep": 1}
    cf = getattr(args, "cf", None)
    slots = None
    if cf:  # stage 2: the projector trains, the LoRA stays as it is
        n_users, n_items, dim = cf
        hidden = model.get_input_embeddings().embedding_dim
        slots = SlotInputs(n_users, n_items, dim, hidden, getattr(args, "proj_token_num", 1),
                           getattr(args, "proj_mid_times", 10), getattr(args, "proj_drop", 0.0))
        slots.to(device)  # fp32, as ours keeps its projector and casts its output
        for p in model.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(slots.proj.parameters(), lr=1e-4)
    else:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    embed = model.get_input_embeddings()
    n_users, n_items = (cf[0], cf[1]) if cf else (1, 1)

    def inputs(ids):
        if slots is None:
            return {"input_ids": ids}
        uid = torch.randint(0, n_users, (batch_size,), device=device)
        iid = torch.randint(0, n_items, (batch_size,), device=device)
        return {"inputs_embeds": slots(embed(ids), uid, iid)}

    # Once, as a training loop or an evaluation does (and as ours does: once per epoch / pass);
    # per step, the walk over its 75 modules cost 0.2 ms: 2-4% of a tiny model's step, charged to bare alone.
    model.train(mode == "train")
    if slots is not None:
        slots.train(mode == "train")

    # the padded width of each warm-up and timed step: ``widths`` when given (the widths of the
    # batches of the loop measured against this one, in order), else seq_len throughout
    widths = list(getattr(args, "widths", None) or [args.seq_len] * (args.warmup + args.steps))
    if len(widths) != args.warmup + args.steps:
        raise ValueError(f"{len(widths)} widths for {args.warmup} + {args.steps} steps")
    step_widths = iter(widths)

    def step():
        ids = torch.randint(3, vocab, (batch_size, next(step_widths)), device=device)
        labels = torch.randint(0, 2, (batch_size,), device=device).float()
        if mode == "train":
            logits = model(**inputs(ids), **keep).logits[:, -1, yes_id].float()
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(**inputs(ids), **keep).logits[:, -1, yes_id].float()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    tokens = batch_size * sum(widths[args.warmup:]) / args.steps
    # matmul FLOPs per token: 2 x frozen parameters forward; LoRA training adds about as much
    # again for the activation gradients (frozen weights get no weight gradients)
    per_tok = (4 if mode == "train" else 2) * frozen
    kind = "bare_loop_full_logits" if not keep else "bare_loop_last_position"
    if slots is not None:
        kind += "_projector"
    out = dict(reference=kind, shape=args.shape, mode=mode, dtype=args.dtype,
               batch_size=batch_size, seq_len=round(tokens / batch_size, 2), steps=args.steps,
               sec_per_step=round(dt, 5),
               samples_per_s=round(batch_size / dt, 2), tokens_per_s=round(tokens / dt, 1),
               model_tflops=round(per_tok * tokens / dt / 1e12, 4))
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        out["device"] = torch.cuda.get_device_name()
    return out


def main(argv=None) -> int:
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    for p in (here, os.path.dirname(here)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from tp_setup import SHAPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="7b", help=f"a named shape ({', '.join(SHAPES)}) or a checkpoint directory")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[4])
    ap.add_argument("--modes", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                    help="load --shape DIR through bitsandbytes (QLoRA)")
    ap.add_argument("--full-logits", action="store_true", help="logits at every position, one column read")
    ap.add_argument("--cf", type=int, nargs=3, metavar=("N_USERS", "N_ITEMS", "DIM"),
                    help="a stage-2 step: frozen CF tables of this size feed a projector that trains (LoRA frozen)")
    ap.add_argument("--proj-token-num", type=int, default=1, help="with --cf: slot tokens per ID")
    ap.add_argument("--proj-mid-times", type=int, default=10, help="with --cf: the projector's hidden width / DIM")
    args = ap.parse_args(argv)
    if args.shape not in SHAPES and not os.path.isdir(args.shape):
        ap.error(f"--shape {args.shape!r}: neither {' / '.join(SHAPES)} nor a checkpoint directory")
    if args.quantization != "none" and not os.path.isdir(args.shape):
        ap.error("--quantization needs --shape DIR (bench/random_checkpoint.py writes random weights)")
    for mode in args.modes:
        for bs in args.batch_size:
            print(json.dumps(run(args, mode, bs, SHAPES)), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next measurement's peak is its own
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
