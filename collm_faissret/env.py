"""What this machine offers the framework, and whether a config can run on it.

  python -m collm_faissret.env [--cfg-path CONFIG [--options KEY=VALUE ...]]

Prints the versions of torch / transformers / peft / faiss / omegaconf, the
CUDA devices and their memory, whether faiss has GPU support, bf16 support,
and what a run picks by default here (device, model dtype, item index type).
With --cfg-path it also checks what that config needs: CUDA for run.device
cuda, bf16 for dtype / AMP on CUDA, the backbone directory, the data files,
prompt, checkpoints. Exit status: 0 when nothing is missing, 1 when something
is (one ``missing:`` line each), 2 when the config itself does not load.

  python -m collm_faissret.env --cfg-path CONFIG --plan [--shape 7b|13b] [--gpus N --gib 24] [--tokenizer DIR]

prints instead the estimated training memory per GPU of that config (its
backbone's config.json, or a named shape) for each quantization x distribution,
and the largest batch that fits (collm_faissret/planner.py says how). Prompts are
as long as the longest training prompt of the config's data, tokenised by the
backbone's tokenizer (or --tokenizer DIR's) and capped at model.max_txt_len; without
the data or a tokenizer, model.max_txt_len. The first lines say which length was used.
"""
import argparse
import os
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "peft", "faiss-cpu", "faiss-gpu", "omegaconf", "bitsandbytes")


def package_versions() -> dict:
    """Installed version of each package, None when absent; read from metadata,
    so peft and transformers (seconds to import) are not imported."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict:
    """CUDA devices, bf16, faiss GPU support and the defaults a run would pick."""
    import faiss
    import torch

    from .models.backbone import DTYPES, resolve_dtype
    from .precision import cpu_bf16_units, cuda_bf16_native
    from .retrieval.faiss_gpu import faiss_gpu_available
    from .retrieval.index import RetrievalConfig, _resolve_kind

    cuda = torch.cuda.is_available()
    devices = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        devices.append(f"cuda:{i} {props.name}, {props.total_memory / 2 ** 30:.1f} GiB")
    device = torch.device("cuda" if cuda else "cpu")
    retrieval = RetrievalConfig()
    small, large = (_resolve_kind(retrieval, n) for n in (1, retrieval.flat_threshold))
    index = small if small == large else f"{small} below {retrieval.flat_threshold} items, {large} above"
    return {
        "cuda": cuda,
        "devices": devices,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "bf16_native": bool(cuda and cuda_bf16_native()),
        "cpu_bf16": cpu_bf16_units(),
        "faiss_version": getattr(faiss, "__version__", "?"),
        "faiss_gpu": faiss_gpu_available(),
        "device": device.type,
        "dtype": {v: k for k, v in DTYPES.items()}[resolve_dtype("auto", device)],
        "index": index + (" (on GPU)" if retrieval.use_gpu and faiss_gpu_available() else ""),
    }


def _split_file(path: str, stem: str) -> bool:
    return any(os.path.isfile(os.path.join(path, stem + ext)) for ext in (".parquet", ".pkl"))


def config_problems(cfg, facts: dict, versions: dict) -> list:
    """What ``cfg`` needs that this machine or file system lacks (one line each)."""
    problems = []
    m, run = cfg.model, cfg.run
    if run.device == "cuda" and not facts["cuda"]:
        problems.append("run.device is cuda but torch sees no CUDA device")
    on_cuda = facts["cuda"] and run.device in ("auto", "cuda")
    if on_cuda and not facts["bf16_native"] and m.dtype == "bf16":
        problems.append("model.dtype bf16 but this GPU only emulates bf16 (slowly); use model.dtype auto (fp16 "
                        "here) or fp32")
    if on_cuda and not facts["bf16_native"] and run.distributed == "fsdp" and (m.dtype in ("auto", "fp16")
                                                                                 or run.amp):
        problems.append("run.distributed fsdp computes in fp16 on this GPU (no native bf16), which needs loss "
                        "scaling FSDP runs here do not do; use run.distributed ddp")
    if m.arch == "collm":
        for pkg in ("transformers",) + (("peft",) if m.lora_config.use_lora else ()):
            if versions[pkg] is None:
                problems.append(f"package {pkg} is not installed (model.arch collm)")
        if (m.quantization != "none" or m.low_resource) and versions["bitsandbytes"] is None:
            problems.append("package bitsandbytes is not installed (model.quantization / model.low_resource)")
        if not m.llama_model:
            problems.append("model.llama_model is not set (model.arch collm needs a save_pretrained directory)")
        elif not os.path.isfile(os.path.join(m.llama_model, "config.json")):
            problems.append(f"model.llama_model {m.llama_model}: no such save_pretrained directory (config.json)")
    files = {"model.prompt_path": m.prompt_path, "model.ckpt": m.ckpt,
             "model.rec_config.pretrained_path": m.rec_config.get("pretrained_path"),
             "model.hybrid_cf_path": m.get("hybrid_cf_path"), "run.resume_ckpt_path": run.resume_ckpt_path}
    problems += [f"{key} {path}: no such file" for key, path in files.items() if path and not os.path.isfile(path)]
    for name, ds in cfg.datasets.items():
        if not os.path.isdir(ds.path):
            problems.append(f"datasets.{name}.path {ds.path}: no such directory")
            continue
        for stem in (ds.train_file, ds.valid_file, ds.test_file):
            if not _split_file(ds.path, stem):
                problems.append(f"datasets.{name}.path {ds.path}: no {stem}.parquet or {stem}.pkl")
    return problems


def report_lines(versions: dict, facts: dict) -> list:
    faiss_pkg = "faiss-gpu" if versions["faiss-gpu"] else "faiss-cpu"
    lines = [f"{name}: {versions[name] or 'not installed'}" for name in ("torch", "transformers", "peft")]
    lines.append(f"faiss: {facts['faiss_version']} ({faiss_pkg})")
    lines.append(f"omegaconf: {versions['omegaconf'] or 'not installed'}")
    lines.append(f"bitsandbytes: {versions['bitsandbytes'] or 'not installed'} (model.quantization int8 / nf4)")
    lines.append("CUDA devices: " + ("; ".join(facts["devices"]) if facts["devices"] else "none"))
    lines.append(f"faiss GPU support: {'yes' if facts['faiss_gpu'] else 'no'}")
    if not facts["cuda"]:
        cuda_line = "no (no CUDA)"
    elif facts["bf16_native"]:
        cuda_line = "yes (native): model.dtype auto and run.amp compute in bf16"
    else:
        cuda_line = ("emulated only: model.dtype auto and run.amp compute in fp16 (loss scaling in training)"
                     if facts["bf16"] else "no: model.dtype auto and run.amp compute in fp16")
    lines.append(f"bf16 on CUDA: {cuda_line}")
    cpu = facts["cpu_bf16"]
    cpu_line = (f"yes ({cpu}): run.cpu_amp=true trains under bf16 autocast" if cpu
                else "no (run.amp stays fp32 on the CPU)")
    lines.append(f"bf16 on this CPU: {cpu_line}")
    lines.append(f"defaults here: device {facts['device']}, model dtype {facts['dtype']}, "
                 f"item index {facts['index']}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg-path", default=None, help="check what this YAML config needs")
    ap.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as for training")
    ap.add_argument("--plan", action="store_true", help="estimate training memory per GPU (needs --cfg-path)")
    ap.add_argument("--shape", choices=["7b", "13b"], help="plan for this backbone shape instead of the config's")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to plan for (default: those here, at least 1)")
    ap.add_argument("--gib", type=float, default=None, help="memory per GPU in GiB (default: the first GPU's, or 24)")
    ap.add_argument("--tokenizer", default=None, metavar="DIR",
                    help="--plan: tokenise the data's prompts with this directory's tokenizer "
                         "(default: model.llama_model's)")
    args = ap.parse_args(argv)
    if args.plan and not args.cfg_path:
        ap.error("--plan needs --cfg-path (batch size, prompt length and stage come from the config)")
    cfg = None
    if args.cfg_path:
        from .config_loader import ConfigError, load_config

        try:
            cfg = load_config(args.cfg_path, args.options)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.plan:
        return print_plan(cfg, args)
    versions, facts = package_versions(), machine()
    print("\n".join(report_lines(versions, facts)))
    if cfg is None:
        return 0
    problems = config_problems(cfg, facts, versions)
    for line in problems:
        print(f"missing: {line}")
    print(f"config {args.cfg_path}: " + (f"{len(problems)} problem(s)" if problems else "OK"))
    return 1 if problems else 0


def print_plan(cfg, args) -> int:
    """The planner's table for ``cfg``; 2 when the backbone's shape cannot be read."""
    from . import planner

    if args.shape:
        shape, source = planner.SHAPES[args.shape], f"named shape {args.shape}"
    else:
        try:
            shape, source = planner.shape_from_config_json(cfg.model.llama_model or ""), cfg.model.llama_model
        except (OSError, KeyError, ValueError) as err:
            print(f"error: model.llama_model {cfg.model.llama_model}: cannot read the shape from config.json "
                  f"({type(err).__name__}: {err}); pass --shape 7b or 13b", file=sys.stderr)
            return 2
    gpus, gib = args.gpus, args.gib
    if gpus is None or gib is None:
        import torch

        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = gpus or max(cuda, 1)
        gib = gib or (torch.cuda.get_device_properties(0).total_memory / planner.GIB if cuda else 24.0)
    batch = cfg.run.batch_size_train
    seq_len, length_source = prompt_length(cfg, args.tokenizer)
    rows = planner.plan(shape, cfg.model, batch, seq_len, gpus, gib)
    print(f"backbone: {source} ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
          f"intermediate {shape['intermediate_size']}, vocab {shape['vocab_size']})")
    print(f"prompt length: {seq_len} tokens, {length_source}")
    print(f"per GPU at run.batch_size_train {batch}, prompts of {seq_len} tokens, "
          f"{gpus} GPU(s) of {gib:g} GiB; estimates in GiB (planner.py), not measurements")
    print("\n".join(planner.table_lines(rows, gib)))
    return 0


def prompt_length(cfg, tokenizer_dir=None):
    """(tokens, where the figure comes from) for the planner: the longest training prompt of
    the config's data (history cut to max_his, oldest titles dropped beyond model.max_txt_len,
    as training builds it) tokenised by ``tokenizer_dir`` or the backbone's tokenizer; else
    model.max_txt_len, with the reason."""
    from .config import dataset_config

    cap = cfg.model.max_txt_len
    fallback = "model.max_txt_len (the cap): {}; the data's longest prompt is usually much shorter"
    _, ds_cfg = dataset_config(cfg)
    train = [os.path.join(ds_cfg.path, ds_cfg.train_file + ext) for ext in (".parquet", ".pkl")]
    if not any(os.path.isfile(p) for p in train):
        return cap, fallback.format(f"no training data at {ds_cfg.path}")
    tok_dir = tokenizer_dir or cfg.model.llama_model
    if not tok_dir or not os.path.isdir(tok_dir):
        return cap, fallback.format(f"no tokenizer directory (model.llama_model {tok_dir!r} is not one): "
                                    "pass --tokenizer DIR (a checkpoint of the same family) to measure the data's")
    from .datasets import RecRows, load_collm_splits
    from .models.backbone import load_tokenizer
    from .prompts import PromptBuilder, load_template

    try:
        tok = load_tokenizer(tok_dir)
    except (OSError, ValueError) as err:
        return cap, fallback.format(f"the tokenizer of {tok_dir} does not load ({type(err).__name__}: {err})")
    builder = PromptBuilder(tok, load_template(cfg.model.prompt_path), cfg.model.proj_token_num, cap)
    rows = RecRows(load_collm_splits(ds_cfg).splits["train"], ds_cfg.max_his, builder, name="train", his_len=0)
    longest = int(rows.lengths().max())
    return longest, (f"the longest of {len(rows):,} training prompts in {ds_cfg.path} ({cfg.model.prompt_path}, "
                     f"tokenizer of {tok_dir}; model.max_txt_len {cap} caps it)")


if __name__ == "__main__":
    sys.exit(main())
