"""Peak host memory (RSS) of loading a backbone checkpoint the project's way, against
one full fp32 copy of its weights and a naive load, as ratios.

  python bench/load_memory.py --shape 1b [--dtype bf16] [--json rows.json]

Each step runs in a fresh Python process, so one step's peak cannot hide another's:

  save     a random-weight LLaMA of the shape (tp_setup.llama_of_shape, a named
           shape of tp_setup.SHAPES), built in the checkpoint dtype and written with save_pretrained
           (safetensors) into a temporary directory, with a small word tokenizer
           (load_backbone checks for one; the weights do not depend on it).
  project  collm_faissret.models.backbone.load_backbone(dir, dtype, cpu): transformers'
           from_pretrained with device_map, weights read from the safetensors file
           straight into their place on the device; on the CPU they stay backed by the
           memory-mapped file until read, so every weight page is then read once
           (touch) and the resident figure includes them.
  naive    the load this replaces: LlamaForCausalLM(config) built in fp32, the whole
           file read into a state dict (safetensors.torch.load_file), load_state_dict,
           then cast to the dtype.

In each child the kernel's peak-RSS counter is reset after the imports (writing 5 to
/proc/self/clear_refs), so VmHWM is the peak from the start of the load; "base" is the
RSS the imports left (interpreter, torch, transformers), and "load" = peak - base is
what loading added. A sampling thread (every 2 ms) also records the peaks of anonymous
memory and of file-backed pages (a memory-mapped safetensors file counts there: page
cache the kernel can drop, not a private copy). The yardstick is one fp32 copy of the
weights (4 bytes per parameter): loading must stay well under it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

GIB = 2 ** 30
STEPS = ("save", "project", "naive")


def parse_args(argv=None):
    import tp_setup as S

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1b", choices=list(S.SHAPES), help="a named shape (bench/tp_setup.py SHAPES)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                    help="checkpoint and load dtype (LLaMA / Vicuna checkpoints are 16-bit)")
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary checkpoint (default: the system's)")
    ap.add_argument("--json", help="write the rows here (a JSON list)")
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def status_kib(*keys) -> dict:
    """Fields of /proc/self/status in KiB (VmRSS, VmHWM, RssAnon, RssFile)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    return out


class PeakSampler:
    """Peaks of RssAnon and RssFile, sampled every 2 ms on a thread (VmHWM has only their sum)."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k, v in status_kib("RssAnon", "RssFile").items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def touch(model) -> None:
    """Read one value in every 4 KiB page of every weight.

    On the CPU, from_pretrained leaves the weights backed by the memory-mapped file:
    they become resident only when first read (the first forward). Reading them here
    puts that cost inside the measured peak, as a training run would meet it.
    """
    import torch

    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().view(-1)
            flat[::max(1, 4096 // flat.element_size())].float().sum()


def child(args) -> dict:
    """One step in this (fresh) process; returns its figures in bytes."""
    import torch
    import tp_setup as S

    torch.set_num_threads(2)
    sizes = S.SHAPES[args.shape]
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401  (imports count in base, not in load)

    from collm_faissret.models.backbone import DTYPES, load_backbone

    dtype = DTYPES[args.dtype]

    base = status_kib("VmRSS")["VmRSS"]
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM: the peak from here on
        fh.write("5")
    t0 = time.time()
    with PeakSampler() as sampler:
        if args.child == "save":
            from collm_faissret.tiny_backbone import build_tokenizer

            torch.manual_seed(0)
            params = S.save_random_checkpoint(sizes, build_tokenizer(["Yes No"], 16), dtype, torch.device("cpu"),
                                              args.dir)
        elif args.child == "project":
            model, _ = load_backbone(args.dir, dtype, torch.device("cpu"))
            touch(model)
        else:
            from safetensors.torch import load_file

            config = LlamaConfig.from_pretrained(args.dir)
            model = LlamaForCausalLM(config)  # fp32, the default dtype
            state = {}
            for name in sorted(os.listdir(args.dir)):  # one file or save_pretrained's shards
                if name.endswith(".safetensors"):
                    state.update(load_file(os.path.join(args.dir, name)))
            model.load_state_dict(state, strict=True)
            del state
            model = model.to(dtype)
    seconds = time.time() - t0
    if args.child != "save":
        params = sum(p.numel() for p in model.parameters())
    after = status_kib("VmRSS", "VmHWM")
    return {"step": args.child, "shape": args.shape, "dtype": args.dtype, "params": params,
            "base": base * 1024, "peak": after["VmHWM"] * 1024, "load": (after["VmHWM"] - base) * 1024,
            "after": after["VmRSS"] * 1024, "peak_anon": sampler.peak["RssAnon"] * 1024,
            "peak_file": sampler.peak["RssFile"] * 1024, "seconds": round(seconds, 1)}


def run_child(step: str, args, ckpt: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", step, "--dir", ckpt, "--shape", args.shape,
           "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"load_memory: step {step} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows, fp32_copy: float):
    print(f"\nshape {rows[0]['shape']}: {rows[0]['params']:,} parameters, {rows[0]['dtype']} checkpoint; "
          f"one fp32 copy of the weights = {fp32_copy / GIB:.2f} GiB (the yardstick)")
    head = (f"{'step':>8} | {'base GiB':>8} {'peak GiB':>8} {'load GiB':>8} {'load/fp32':>9} | "
            f"{'anon peak':>9} {'file peak':>9} {'after GiB':>9} {'s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['step']:>8} | {r['base'] / GIB:>8.2f} {r['peak'] / GIB:>8.2f} {r['load'] / GIB:>8.2f} "
              f"{r['load'] / fp32_copy:>9.3f} | {r['peak_anon'] / GIB:>9.2f} {r['peak_file'] / GIB:>9.2f} "
              f"{r['after'] / GIB:>9.2f} {r['seconds']:>6.1f}")
    by = {r["step"]: r for r in rows}
    if "project" in by and "naive" in by:
        print(f"project load / naive load: {by['project']['load'] / by['naive']['load']:.3f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="collm_load.", dir=args.tmp) as ckpt:
        rows = [run_child(step, args, ckpt) for step in STEPS]
    fp32_copy = 4 * rows[0]["params"]
    for r in rows:
        r["fp32_copy"] = fp32_copy
        r["load_over_fp32"] = round(r["load"] / fp32_copy, 4)
    print_table(rows, fp32_copy)
    if args.json:
        from tp_report import write_json

        write_json(args.json, rows)
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
