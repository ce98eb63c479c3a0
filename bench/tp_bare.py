"""The yardstick's bare transformers + peft LoRA loop, with two changes that make the
comparison with our steps fair and let it run at a real checkpoint's shape:

* the LM head runs at the last position only (``logits_to_keep=1``), as ours does:
  the shared yardstick computes [B, L, vocab] logits and reads one column, which at
  SmolLM2's 49k vocabulary is a large share of its time;
* ``shape`` may be a checkpoint directory: its config and weights are loaded with
  ``from_pretrained`` (named shapes are the yardstick's SIZES, random weights).

Everything else is the yardstick's: fixed-length random ids, LoRA r=8 on q/v,
BCE on the Yes logit, AdamW, the same warm-up / timed steps and FLOP count.
"""
import os
import time

import torch

from collm_faissret.models.backbone import DTYPES


def build(shape: str, sizes: dict, dtype: torch.dtype, device: torch.device, quantization: str = "none"):
    """(LoRA model, vocab size): a directory loaded with from_pretrained, else the yardstick's shape.

    quantization int8 / nf4 (a directory only): the plain QLoRA recipe of transformers and
    peft, with the settings our model.quantization uses (nf4: double quantization, bf16
    compute on CUDA), then peft's k-bit preparation without gradient checkpointing."""
    from peft import LoraConfig, get_peft_model
    from tp_setup import llama_of_shape, loaded_backbone

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


def run(args, mode: str, batch_size: int, sizes: dict) -> dict:
    """One measurement; args: shape, device, dtype (bf16/fp16/fp32), seq_len, steps, warmup."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model, vocab = build(args.shape, sizes, dtype, device, getattr(args, "quantization", "none"))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    yes_id = 8241 % vocab
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        ids = torch.randint(3, vocab, (batch_size, args.seq_len), device=device)
        labels = torch.randint(0, 2, (batch_size,), device=device).float()
        if mode == "train":
            model.train()
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1, yes_id].float()
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids, logits_to_keep=1).logits[:, -1, yes_id].float()

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
    tokens = batch_size * args.seq_len
    per_tok = (4 if mode == "train" else 2) * frozen
    out = dict(reference="bare_loop_last_position", shape=args.shape, mode=mode, dtype=args.dtype,
               batch_size=batch_size, seq_len=args.seq_len, steps=args.steps, sec_per_step=round(dt, 5),
               samples_per_s=round(batch_size / dt, 2), tokens_per_s=round(tokens / dt, 1),
               model_tflops=round(per_tok * tokens / dt / 1e12, 4))
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out
