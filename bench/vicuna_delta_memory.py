"""Peak memory of ``collm-prepare vicuna`` against the whole-model sum (FastChat's way).

Writes a random LLaMA-shaped base and a v0-style delta (one extra row in
embed_tokens / lm_head, fp16, ``.bin`` shards + index as lmsys ships them, or
safetensors), then runs, each in a fresh process: (a) apply_delta, (b) the
yardstick: load both models whole, add, save. Prints one JSON line with each
process's peak resident memory above its own start (torch imported), sampled
every 2 ms: all of it (memory-mapped shard pages included) and its anonymous part, the size
of one model and of its largest shard, and the ratio.

  python bench/vicuna_delta_memory.py --hidden 512 --layers 8 --shards 4
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llama_state(vocab: int, hidden: int, layers: int, inter: int, seed: int):
    """HF LLaMA tensor names and shapes, random fp16."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(torch.float16)  # noqa: E731
    state = {"model.embed_tokens.weight": rnd(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = rnd(hidden, hidden)
        state[p + "mlp.gate_proj.weight"] = rnd(inter, hidden)
        state[p + "mlp.up_proj.weight"] = rnd(inter, hidden)
        state[p + "mlp.down_proj.weight"] = rnd(hidden, inter)
        state[p + "input_layernorm.weight"] = rnd(hidden)
        state[p + "post_attention_layernorm.weight"] = rnd(hidden)
    state["model.norm.weight"] = rnd(hidden)
    state["lm_head.weight"] = rnd(vocab, hidden)
    return state


def write(state: dict, out: str, shards: int, layout: str) -> int:
    """Shards of about equal bytes + index; return the largest shard's bytes."""
    from safetensors.torch import save_file

    os.makedirs(out)
    total = sum(t.numel() * t.element_size() for t in state.values())
    groups, size = [[]], 0
    for name, t in state.items():
        if size >= total / shards and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += t.numel() * t.element_size()
    weight_map, largest = {}, 0
    for i, names in enumerate(groups, 1):
        ext = "bin" if layout == "bin" else "safetensors"
        file = f"{'pytorch_model' if layout == 'bin' else 'model'}-{i:05d}-of-{len(groups):05d}.{ext}"
        part = {n: state[n] for n in names}
        if layout == "bin":
            torch.save(part, os.path.join(out, file))
        else:
            save_file(part, os.path.join(out, file))
        largest = max(largest, sum(t.numel() * t.element_size() for t in part.values()))
        weight_map.update({n: file for n in names})
    index = "pytorch_model.bin.index.json" if layout == "bin" else "model.safetensors.index.json"
    with open(os.path.join(out, index), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump({"model_type": "llama", "vocab_size": state["lm_head.weight"].shape[0]}, fh)
    with open(os.path.join(out, "tokenizer.json"), "w") as fh:
        fh.write("{}")  # copied, never loaded here
    return largest


def rss_bytes():
    """(resident set, its anonymous part) in bytes: the first counts memory-mapped shard
    pages too (file-backed, reclaimable), the second what the process allocated itself."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "RssAnon:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["RssAnon"]


class PeakRSS(threading.Thread):
    """Samples the resident set every few milliseconds; ``peak`` is the largest seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss_bytes(), True

    def sample(self):
        now = rss_bytes()
        self.peak = tuple(max(a, b) for a, b in zip(self.peak, now))

    def run(self):
        while self.running:
            self.sample()
            time.sleep(0.002)


def child(mode: str, base: str, delta: str, out: str) -> None:
    """Runs in a fresh process; prints its peak RSS growth in bytes."""
    start = rss_bytes()
    sampler = PeakRSS()
    sampler.start()
    if mode == "ours":
        from collm_faissret.data_prep.vicuna import apply_delta

        apply_delta(base, delta, out, progress=False, max_shard_bytes=int(os.environ["MAX_SHARD_BYTES"]))
    else:
        from safetensors.torch import save_file

        from collm_faissret.data_prep.vicuna import Weights, add

        b, d = Weights(base, "base"), Weights(delta, "delta")
        whole_b = {n: b.get(n).clone() for n in b.names}
        whole_d = {n: d.get(n).clone() for n in d.names}
        b.close()
        d.close()
        summed = {n: add(n, whole_b[n], whole_d[n]).contiguous() for n in whole_d}
        os.makedirs(out)
        save_file(summed, os.path.join(out, "model.safetensors"))
    sampler.running = False
    sampler.join()
    sampler.sample()
    print(json.dumps({"rss": sampler.peak[0] - start[0], "anon": sampler.peak[1] - start[1]}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000, help="base rows; the delta has one more")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--layout", choices=("bin", "safetensors"), default="bin")
    ap.add_argument("--max-shard-mib", type=float, default=16.0, help="apply_delta's output shard cap")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "BASE", "DELTA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    inter = args.hidden * 8 // 3
    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="vicuna_bench.") as tmp:
        base, delta = os.path.join(tmp, "base"), os.path.join(tmp, "delta")
        write(llama_state(args.vocab, args.hidden, args.layers, inter, 0), base, args.shards, args.layout)
        delta_state = llama_state(args.vocab + 1, args.hidden, args.layers, inter, 1)
        model_bytes = sum(t.numel() * t.element_size() for t in delta_state.values())
        largest = write(delta_state, delta, args.shards, args.layout)
        del delta_state
        peaks = {}
        for mode in ("ours", "whole"):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, base, delta,
                                   os.path.join(tmp, f"out_{mode}")], capture_output=True, text=True,
                                  cwd=REPO, check=True, env=dict(os.environ, PYTHONPATH=REPO,
                                                                 MAX_SHARD_BYTES=str(int(args.max_shard_mib * mib))))
            peaks[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    row = {"layout": args.layout, "model_mib": round(model_bytes / mib, 1), "input_shards": args.shards,
           "largest_input_shard_mib": round(largest / mib, 1), "max_output_shard_mib": args.max_shard_mib}
    for kind in ("rss", "anon"):
        row[f"peak_{kind}_mib_apply_delta"] = round(peaks["ours"][kind] / mib, 1)
        row[f"peak_{kind}_mib_whole_model_sum"] = round(peaks["whole"][kind] / mib, 1)
        row[f"{kind}_ratio"] = round(peaks["ours"][kind] / peaks["whole"][kind], 3) if peaks["whole"][kind] else None
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
