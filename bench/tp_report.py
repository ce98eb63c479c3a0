"""Rows and the printed table of bench/train_throughput.py; the JSON file of every bench."""
import json
import os


def write_json(path, rows):
    """``rows`` to ``path`` (nothing without one), whole or not at all."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(rows, fh, indent=1)
        os.replace(path + ".tmp", path)


def row(args, stage, mode, batch_size, clock, shape, n_flop, extra) -> dict:
    """One measurement as a JSON-ready dict; clock None when the run did not finish (out of memory).

    model_tflops counts as the yardstick does: (4 train / 2 eval) * backbone
    weights * padded tokens per second (LoRA adds ~nothing; our LM head runs
    at one position, so the head's share of the count is a slight overcount).
    """
    out = {"mode": mode, "stage": stage, "batch_size": batch_size, "samples_per_s": None,
           "bare_samples_per_s": None, "ratio_vs_bare": None, "peak_mem_gib": None,
           "padding_fraction": round(shape["padding_fraction"], 4), "seq_len": round(shape["mean_width"], 2),
           "tokens_per_s": None, "real_tokens_per_s": None, "model_tflops": None, "sec_per_step": None,
           "shape": args.shape, "device": args.device, "grad_ckpt": args.grad_ckpt,
           "quantization": getattr(args, "quantization", "none"),
           "bucketing": not args.no_bucketing, "num_workers": args.num_workers, **extra}
    if clock is not None:
        sec = clock.seconds
        timed = max(clock.calls - clock.skip, 1)
        per_tok = (2 if mode == "eval" else 4) * n_flop
        out.update(samples_per_s=round(shape["rows"] / sec, 2), tokens_per_s=round(shape["padded_tokens"] / sec, 1),
                   real_tokens_per_s=round(shape["real_tokens"] / sec, 1), sec_per_step=round(sec / timed, 5),
                   model_tflops=round(per_tok * shape["padded_tokens"] / sec / 1e12, 4),
                   peak_mem_gib=None if clock.peak_gib is None else round(clock.peak_gib, 2))
    return out


def _f(value, fmt):
    """format(value, fmt), or a dash of the same width for a missing value."""
    if value is None:
        width = "".join(c for c in fmt.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 1))
    return format(value, fmt)


def print_table(args, rows, env):
    """Human-readable summary: one line per measurement, then padding and memory notes."""
    device = env.device
    name = "cpu"
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
    print(f"\nshape {args.shape} on {name}; quantization {getattr(args, 'quantization', 'none')} (bare alike); "
          f"{args.steps} timed + {args.warmup} warm-up batches; "
          f"num_workers {args.num_workers}; grad_ckpt {args.grad_ckpt}; bucketing {not args.no_bucketing}")
    head = (f"{'stage':>5} {'mode':>10} {'bs':>4} | {'samples/s':>9} {'bare':>9} {'ratio':>6} | "
            f"{'tokens/s':>10} {'bare':>10} | {'TFLOP/s':>8} {'bare':>8} | {'peakGiB':>7} {'bare':>6} | "
            f"{'len':>6} {'pad':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['stage']:>5} {r['mode']:>10} {r['batch_size']:>4} | {_f(r['samples_per_s'], '9.1f')} "
              f"{_f(r.get('bare_samples_per_s'), '9.1f')} {_f(r['ratio_vs_bare'], '6.3f')} | "
              f"{_f(r['tokens_per_s'], '10.0f')} {_f(r.get('bare_tokens_per_s'), '10.0f')} | "
              f"{_f(r['model_tflops'], '8.4f')} {_f(r.get('bare_model_tflops'), '8.4f')} | "
              f"{_f(r['peak_mem_gib'], '7.2f')} {_f(r.get('bare_peak_mem_gib'), '6.2f')} | "
              f"{r['seq_len']:>6.1f} {100 * r['padding_fraction']:>5.1f}%")
    for r in rows:
        if r["mode"] == "train":
            print(f"stage {r['stage']} train bs {r['batch_size']}: padding over a full pass "
                  f"{100 * r['padding_fraction_pass_bucketed']:.1f}% with length bucketing, "
                  f"{100 * r['padding_fraction_pass_unbucketed']:.1f}% without")
        elif r["mode"] == "eval":
            print(f"stage {r['stage']} eval bs {r['batch_size']}: padding over the whole valid split "
                  f"{100 * r['padding_fraction_full_split']:.1f}% (rows sorted by length)")
        if r.get("sync_debug") and r is next(x for x in rows if x["stage"] == r["stage"]):
            print(f"stage {r['stage']} host-device syncs (file:line -> count): {r['sync_debug']}")
    for stage in sorted({r["stage"] for r in rows if r["mode"] == "mem_search"}):
        tried = [r for r in rows if r["mode"] == "mem_search" and r["stage"] == stage]
        fit = [r["batch_size"] for r in tried if r["fits"]]
        limit = tried[0]["limit_gib"]
        parts = []
        for r in tried:
            peak = "" if r["peak_mem_gib"] is None else f" ({r['peak_mem_gib']} GiB)"
            parts.append(f"bs {r['batch_size']} {'fits' if r['fits'] else 'OOM'}{peak}")
        cap = f"cap {limit} GiB" if limit else "no cap on CPU"
        print(f"stage {stage} memory search (longest prompts, grad_ckpt {args.grad_ckpt}, {cap}): "
              f"{', '.join(parts)} -> largest fitting: {max(fit) if fit else None}")
