"""``collm-prepare vicuna --base LLAMA_DIR --delta DELTA_DIR --out DIR``: Vicuna weights
from LLaMA weights plus lmsys's delta, without FastChat.

Every tensor of the result is ``base + delta`` (in the delta's dtype). Vicuna
v0 deltas carry one more row in ``embed_tokens`` and ``lm_head`` than LLaMA
(32,001 vs 32,000: a pad token); there the base is added into the first rows
and the extra rows are the delta's own. v1.1 deltas have equal shapes.

The delta is read shard by shard and each base tensor is fetched on its own
(safetensors lazily, ``.bin`` shards memory-mapped); output shards are capped
(``--max-shard-gib``), so the process holds about one shard, not two whole models. Names must match one to one. The
result is safetensors shards + ``model.safetensors.index.json`` and the delta's
config, generation config and tokenizer files; it is written to a temporary
directory next to ``--out`` and renamed at the end, so a failure leaves no
half-written model. An ``--out`` that exists and is not empty is refused.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys

from ..staging import staged_dir

INDEXES = (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin"))
SINGLES = (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin"))
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# Buffers older transformers saved with the weights (LLaMA's rotary frequencies): derived
# from config.json, ignored by today's loaders, and not to be summed (2x the frequencies).
DERIVED = (".rotary_emb.inv_freq",)


class DeltaError(ValueError):
    """Inputs that cannot make a model (missing files, names or shapes that do not match)."""


class Weights:
    """The tensors of one save_pretrained directory, fetched one by one.

    names: tensor name -> shard file name. A shard is opened when first asked
    for (safetensors: lazily; .bin: memory-mapped) and kept until ``close``.
    """

    def __init__(self, directory: str, label: str):
        self.dir, self.label = directory, label
        if not os.path.isdir(directory):
            raise DeltaError(f"{label} {directory}: directory not found")
        self._open = {}
        self.names, self.kind, self.index_file = self._find()

    def _find(self):
        for index, kind in INDEXES:
            path = os.path.join(self.dir, index)
            if os.path.isfile(path):
                try:
                    with open(path, encoding="utf-8") as fh:
                        weight_map = json.load(fh)["weight_map"]
                except (OSError, ValueError, KeyError) as err:
                    raise DeltaError(f"{self.label} {path}: unreadable weight index ({err})") from None
                for shard in sorted(set(weight_map.values())):
                    if not os.path.isfile(os.path.join(self.dir, shard)):
                        raise DeltaError(f"{self.label} {self.dir}: shard {shard} named by {index} is missing")
                return dict(weight_map), kind, index
        for single, kind in SINGLES:
            if os.path.isfile(os.path.join(self.dir, single)):
                return {name: single for name in self._shard(single).keys()}, kind, single
        raise DeltaError(f"{self.label} {self.dir}: no weights (model.safetensors[.index.json] or "
                         "pytorch_model.bin[.index.json])")

    def _shard(self, file: str):
        """An opened shard: a safetensors handle or a dict of (memory-mapped) tensors."""
        if file not in self._open:
            path = os.path.join(self.dir, file)
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                self._open[file] = safe_open(path, framework="pt", device="cpu")
            else:
                self._open[file] = _load_bin(path, self.label)
        return self._open[file]

    def get(self, name: str):
        shard = self._shard(self.names[name])
        return shard.get_tensor(name) if hasattr(shard, "get_tensor") else shard[name]

    def shards(self):
        """Shard file names in order, each with its tensor names in index order."""
        order = {}
        for name, file in self.names.items():
            order.setdefault(file, []).append(name)
        return sorted(order.items())

    def other_files(self):
        """Files that are not weights (config, tokenizer, ...)."""
        weights = set(self.names.values()) | {self.index_file}
        return sorted(f for f in os.listdir(self.dir)
                      if os.path.isfile(os.path.join(self.dir, f)) and f not in weights and not f.startswith("."))

    def close(self):
        self._open.clear()


def _load_bin(path: str, label: str) -> dict:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped: read it whole
        pass
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise DeltaError(f"{label} {path}: unreadable ({type(err).__name__}: {err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise DeltaError(f"{label} {path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def check_names(base: Weights, delta: Weights) -> None:
    """Every tensor name in both, or a one-line error naming the first that is not."""
    only_delta = sorted(set(delta.names) - set(base.names))
    only_base = sorted(set(base.names) - set(delta.names))
    if only_delta:
        raise DeltaError(f"tensor {only_delta[0]} is in the delta but not in the base "
                         f"({len(only_delta)} such; another model family?)")
    if only_base:
        raise DeltaError(f"tensor {only_base[0]} is in the base but not in the delta ({len(only_base)} such)")


def add(name: str, base, delta):
    """base + delta in the delta's dtype; a delta with more rows (v0's pad row) keeps its extra rows."""
    base = base.to(delta.dtype)
    if base.shape == delta.shape:
        return delta + base
    if base.dim() != delta.dim() or base.shape[1:] != delta.shape[1:] or base.shape[0] > delta.shape[0]:
        raise DeltaError(f"tensor {name}: base shape {tuple(base.shape)} does not fit delta shape "
                         f"{tuple(delta.shape)} (only extra delta rows are allowed)")
    out = delta.clone()
    out[:base.shape[0]] += base
    return out


class ShardWriter:
    """Output tensors gathered into safetensors shards of at most ``max_bytes`` (a larger
    tensor gets a shard of its own); named ``model-0000i-of-0000n`` once n is known."""

    def __init__(self, directory: str, max_bytes: int):
        self.dir, self.max_bytes = directory, max_bytes
        self.pending, self.pending_bytes, self.files, self.weight_map, self.total = {}, 0, [], {}, 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        file = f"part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, os.path.join(self.dir, file), metadata={"format": "pt"})
        self.weight_map.update({name: file for name in self.pending})
        self.files.append(file)
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> int:
        """Flush, give the shards their final names, write the index; return the shard count."""
        self.flush()
        n = len(self.files)
        final = {f: f"model-{i:05d}-of-{n:05d}.safetensors" for i, f in enumerate(self.files, 1)}
        for old, new in final.items():
            os.replace(os.path.join(self.dir, old), os.path.join(self.dir, new))
        weight_map = {name: final[f] for name, f in sorted(self.weight_map.items())}
        with open(os.path.join(self.dir, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
            json.dump({"metadata": {"total_size": self.total}, "weight_map": weight_map}, fh, indent=2)
        return n


def apply_delta(base_dir: str, delta_dir: str, out_dir: str, progress: bool = True,
                max_shard_bytes: int = 2 << 30) -> dict:
    """Write base + delta to ``out_dir``; return a summary (tensors, shards, padded names).

    Memory: one output shard (at most ``max_shard_bytes``) plus the pages of the
    input shard being read (the delta's and the base's are released shard by shard).
    """
    import torch
    from tqdm import tqdm

    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DeltaError(f"--out {out_dir} exists and is not empty; choose a new directory")
    base, delta = Weights(base_dir, "--base"), Weights(delta_dir, "--delta")
    check_names(base, delta)
    extras = delta.other_files()
    if "config.json" not in extras:
        raise DeltaError(f"--delta {delta_dir}: no config.json")
    if not any(f in extras for f in TOKENIZER_FILES):
        raise DeltaError(f"--delta {delta_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    padded, derived = [], []
    bar = tqdm(total=len(delta.names), desc="apply delta", unit="tensor", disable=not progress)
    with staged_dir(out_dir) as tmp, contextlib.closing(bar):  # out_dir is empty or absent (checked above)
        writer = ShardWriter(tmp, max_shard_bytes)
        for _, names in delta.shards():
            with torch.no_grad():
                for name in names:
                    bar.update(1)
                    if name.endswith(DERIVED):
                        derived.append(name)
                        continue
                    d, b = delta.get(name), base.get(name)
                    if b.shape != d.shape:
                        padded.append(name)
                    writer.add(name, add(name, b, d))
            delta.close()
            base.close()
        n_shards = writer.finish()
        for f in extras:
            shutil.copy2(os.path.join(delta_dir, f), os.path.join(tmp, f))
    return {"tensors": len(writer.weight_map), "shards": n_shards, "padded": padded, "derived": derived,
            "copied": extras}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="collm-prepare vicuna", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, metavar="LLAMA_DIR", help="LLaMA weights (save_pretrained layout)")
    ap.add_argument("--delta", required=True, metavar="DELTA_DIR", help="Vicuna delta (e.g. vicuna-7b-delta-v0)")
    ap.add_argument("--out", required=True, metavar="DIR", help="new directory for the Vicuna weights")
    ap.add_argument("--max-shard-gib", type=float, default=2.0,
                    help="output shard size cap in GiB; peak memory is about one such shard (default 2)")
    args = ap.parse_args(argv)
    if args.max_shard_gib <= 0:
        print("error: --max-shard-gib must be > 0", file=sys.stderr)
        return 2
    try:
        summary = apply_delta(args.base, args.delta, args.out, max_shard_bytes=int(args.max_shard_gib * (1 << 30)))
    except DeltaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pad = (f"; extra delta rows kept in {', '.join(summary['padded'])}" if summary["padded"] else "")
    if summary["derived"]:
        pad += f"; {len(summary['derived'])} rotary inv_freq buffers left out (computed from config.json)"
    print(f"wrote {args.out}: {summary['tensors']} tensors in {summary['shards']} shards{pad}; "
          f"copied {', '.join(summary['copied'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
