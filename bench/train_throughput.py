"""Training and evaluation throughput of the project's own CoLLM steps against the bare
transformers + peft LoRA loop (bench/tp_bare.py, the yardstick), in one process.

Ours: stage 1 (LoRA, text prompt) and stage 2 (FECE projector, <UserID>/<TargetItemID>
slots) built from train_configs/collm_stage{1,2}*.yaml through the real config loader,
RecTask and RunnerBase: real ML-1M prompts tokenised in DataLoader workers, length
bucketing, AMP on CUDA, AdamW, LM head at the answer position only; the backbone is a
random-weight LLaMA of a named shape (tiny / 1b / 7b / 13b, bench/tp_setup.py) with a word tokenizer
trained on the data's titles. Bare: the yardstick's loop at the same batch size, each step at
the padded width of our batch of that step (warm-up included): the same tensor shapes in the
same order. At one fixed width, our batches' mean (--bare-fixed-width: equal tokens, other
shapes), the bare loop ran between 1% slower and 6% faster at the tiny shape on CPU,
depending on the row (docs/benchmarks.md): each width has its own kernel costs, and a loop
over real prompts meets the widths they have. Scoring runs every prompt whole
(run.shared_prefix=off): packed rows would compute about a fifth fewer tokens than the
yardstick is given (bench/score_throughput.py measures sharing). For stage 2 the yardstick
does CoLLM's own model work in plain torch (tp_bare.py --cf): frozen CF tables of our CF
checkpoint's sizes, a projector of ours' architecture and size, its rows written at as many
slot positions per row as our prompt has, the forward from inputs_embeds and, in training,
the backward down to those positions into the projector (LoRA frozen, as in our stage 2);
so stage 2's ratio, like stage 1's, measures what the framework adds around the same arithmetic.

  python bench/train_throughput.py --shape tiny --device cpu --data data/ml-1m --batch-size 32
  python bench/train_throughput.py --shape 7b --device cuda --data data/ml-1m --batch-size 16 \\
      --eval-batch-size 16 64 --json /tmp/tp.json
  python bench/train_throughput.py --shape 7b --device cuda --data data/ml-1m --stages 2 --modes train \\
      --grad-ckpt --mem-search 16 32 64 128 --mem-limit-gib 22 --no-bare

--mem-search trains a few steps per batch size on the longest prompts (worst-case
memory) under a CUDA memory cap of --mem-limit-gib and reports the largest that fits.
"""
import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):  # run as a script or imported by path (tests)
    if _p not in sys.path:
        sys.path.insert(0, _p)

import tp_harness as H  # noqa: E402
import tp_setup as S  # noqa: E402
from tp_report import print_table, row, write_json  # noqa: E402

from collm_faissret.models.backbone import DTYPES  # noqa: E402

DEFAULT_SEARCH = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny",
                    help="backbone: tiny / 1b / 7b / 13b (named shapes, random weights and a word tokenizer) or "
                         "a checkpoint directory (its weights and tokenizer, e.g. data/smollm2)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM-format data directory (train/valid/test_ood2)")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8], help="training batch sizes")
    ap.add_argument("--eval-batch-size", type=int, nargs="+", help="evaluation batch sizes (default: --batch-size)")
    ap.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    ap.add_argument("--modes", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    ap.add_argument("--steps", type=int, default=10, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches before them")
    ap.add_argument("--max-txt-len", type=int, default=256, help="model.max_txt_len (oldest titles dropped beyond)")
    ap.add_argument("--num-workers", type=int, help="run.num_workers (default: 4 on CUDA, 0 on CPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads on --device cpu (1: steady on shared cores)")
    ap.add_argument("--no-bucketing", action="store_true", help="time with run.length_bucketing=false")
    ap.add_argument("--grad-ckpt", action="store_true", help="model.gradient_checkpointing=true (and a memory search)")
    ap.add_argument("--mem-search", type=int, nargs="*", help="batch sizes to try on the longest prompts "
                    f"(default with --grad-ckpt: {' '.join(map(str, DEFAULT_SEARCH))})")
    ap.add_argument("--mem-stages", type=int, nargs="+", choices=[1, 2], default=[2],
                    help="stages the memory search runs for")
    ap.add_argument("--mem-limit-gib", type=float, default=22.0, help="CUDA memory cap of the memory search")
    ap.add_argument("--sync-debug", action="store_true", help="CUDA: list host-device syncs of 2 training steps")
    ap.add_argument("--no-bare", action="store_true", help="skip the yardstick loop")
    ap.add_argument("--bare-fixed-width", action="store_true",
                    help="run the yardstick at one width, our batches' mean, instead of each batch's own width "
                         "(the yardstick before 3 December 2026; docs/benchmarks.md compares the two)")
    ap.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                    help="model.quantization for ours, the same BitsAndBytesConfig for the bare loop; needs --shape "
                         "DIR (bench/random_checkpoint.py writes a random one): bitsandbytes quantizes while loading")
    ap.add_argument("--repeats", type=int, help="runs per measurement, best kept (default: 3 on CPU, 1 on CUDA)")
    ap.add_argument("--json", help="write the rows here (a JSON list)")
    args = ap.parse_args(argv)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if args.repeats is None:
        args.repeats = 1 if args.device == "cuda" else 3
    if args.num_workers is None:
        args.num_workers = 4 if args.device == "cuda" else 0
    if args.mem_search is None:
        args.mem_search = DEFAULT_SEARCH if args.grad_ckpt else []
    if args.shape not in S.SHAPES and not os.path.isdir(args.shape):
        ap.error(f"--shape {args.shape!r}: neither {' / '.join(S.SHAPES)} nor a checkpoint directory")
    if not os.path.isfile(os.path.join(args.data, "train_ood2.pkl")) and \
            not os.path.isfile(os.path.join(args.data, "train_ood2.parquet")):
        ap.error(f"--data {args.data}: no train_ood2.pkl or .parquet there (CoLLM's ML-1M split: unzip ml-1m.zip "
                 "into data/, or make it with collm-prepare ml1m)")
    if args.quantization != "none" and not os.path.isdir(args.shape):
        ap.error(f"--quantization {args.quantization} needs --shape DIR, a checkpoint directory "
                 "(python bench/random_checkpoint.py --shape 7b --out DIR writes random weights)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    return args


def quiet_logging(out_dir):
    """The runner's log file and warnings only: its per-interval INFO lines would clutter the table."""
    from collm_faissret.runners.runner_base import log, setup_logging

    setup_logging(out_dir)
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    return log


def flops_params(model) -> int:
    """Backbone weights that do matmul work per token (the yardstick counts its frozen ones)."""
    return sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n)


def measure_stage(args, env, stage, out_dir):
    """Rows of one stage: train and eval (the yardstick interleaved on CPU), syncs, memory search."""
    configs = {}

    def cfg_of(bs, ebs, iters):
        """The stage's config at these batch sizes and epoch length (loading one takes ~0.3 s: kept)."""
        key = (bs, ebs, iters)
        if key not in configs:
            configs[key] = S.stage_config(stage, args.data, out_dir, args.device, args.max_txt_len, bs, ebs, iters,
                                          args.num_workers, args.grad_ckpt, not args.no_bucketing, env.mf_path,
                                          options=env.model_options)
        return configs[key]

    iters = args.warmup + args.steps
    cfg = cfg_of(args.batch_size[0], args.eval_batch_size[0], iters)
    # quantized: None, so the model loads model.llama_model through load_backbone as a run does
    backbone = (env.make_backbone(), env.tokenizer) if args.quantization == "none" else None
    task = H.BenchTask(cfg, env.data, backbone)
    runner = H.BenchRunner(cfg, task, env.device)
    runner._build()
    del backbone
    n_flop = flops_params(runner.model)
    bare_cf = bare_cf_spec(runner.model)
    train_ds = runner.datasets["train"]
    lengths = train_ds.lengths()
    rows = []
    if "train" in args.modes:
        for bs in args.batch_size:
            runner.use_config(cfg_of(bs, args.eval_batch_size[0], iters))
            batches = H.train_batches(lengths, bs, cfg.run.seed, not args.no_bucketing, iters)
            shape = H.batch_shape_stats(lengths, batches[args.warmup:])
            passes = H.pass_padding(lengths, bs, cfg.run.seed)
            extra = {f"padding_fraction_pass_{k}": v for k, v in passes.items()} | bare_cf
            extra["bare_widths"] = H.widths(lengths, batches)
            rows.append(best_of(args, env, "train", bs, extra, lambda: row(
                args, stage, "train", bs, runner.timed_train(args.warmup), shape, n_flop, extra)))
    if "eval" in args.modes:
        valid = runner.datasets["valid"]
        for ebs in args.eval_batch_size:
            runner.use_config(cfg_of(args.batch_size[0], ebs, iters))
            batches = H.eval_batch_list(valid.lengths(), ebs, iters)
            shape = H.batch_shape_stats(valid.lengths(), batches[args.warmup:])
            full = H.batch_shape_stats(valid.lengths(), H.eval_batch_list(valid.lengths(), ebs, len(valid)))
            extra = {"padding_fraction_full_split": full["padding_fraction"]} | bare_cf
            extra["bare_widths"] = H.widths(valid.lengths(), batches)
            rows.append(best_of(args, env, "eval", ebs, extra, lambda: row(
                args, stage, "eval", ebs, runner.timed_eval("valid", args.warmup, iters), shape, n_flop, extra)))
    if args.sync_debug and env.device.type == "cuda":
        from tp_syncs import sync_report

        runner.use_config(cfg_of(args.batch_size[0], args.eval_batch_size[0], 3))
        report = sync_report(runner)
        for r in rows:
            r["sync_debug"] = report
    if args.mem_search and stage in args.mem_stages:
        runner.use_config(cfg_of(args.batch_size[0], args.eval_batch_size[0], 3))
        rows += mem_search(args, runner, task, stage, n_flop, cfg_of)
    runner.model = task.backbone = None
    runner = task = None  # drop the last references: the next stage builds its own
    H.free_cuda()
    return rows


def mem_search(args, runner, task, stage, n_flop, cfg_of):
    """Train 1 + 2 steps per batch size on the longest prompts under a CUDA memory cap.

    The cap (torch's per-process memory fraction) turns "needs more than the
    limit" into a real out-of-memory error, so a batch size that fits has its
    peak allocated memory under the limit whatever the card's size.
    """
    device, full = runner.device, runner.datasets["train"]
    cap = None
    if device.type == "cuda":
        cap = args.mem_limit_gib * 2 ** 30 / torch.cuda.get_device_properties(device).total_memory
    rows, base = [], runner.cfg
    for bs in sorted(args.mem_search):
        cfg = cfg_of(bs, args.eval_batch_size[0], 3)
        runner.use_config(cfg)
        runner.datasets["train"] = H.longest_rows(task, full, 3 * bs)
        H.free_cuda()
        if cap is not None:
            torch.cuda.set_per_process_memory_fraction(min(cap, 1.0), device)
        clock, fits = None, True
        try:
            clock = runner.timed_train(1)
        except torch.cuda.OutOfMemoryError:  # the name torch 2.x has always had
            fits = False
        finally:
            if cap is not None:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            runner.datasets["train"] = full
        H.free_cuda()
        lengths = H.longest_rows(task, full, 3 * bs).lengths()
        shape = H.batch_shape_stats(lengths, H.train_batches(lengths, bs, cfg.run.seed, True, 3)[1:])
        r = row(args, stage, "mem_search", bs, clock, shape, n_flop, {})
        r.update(fits=fits, limit_gib=args.mem_limit_gib if cap is not None else None)
        rows.append(r)
        if not fits:
            break  # larger batches need more memory still
    runner.use_config(base)
    return rows


def bare_cf_spec(model) -> dict:
    """{"bare_cf": [n_users, n_items, dim], "bare_proj": [token_num, mid_times, dropout]} for the
    yardstick of a model with ID slots (its CF tables' and projector's sizes; the yardstick fills
    token_num user and token_num item positions per row, as the stage-2 prompt has); {} without."""
    if not model.use_slots:
        return {}
    tables = [tuple(p.shape) for p in model.cf.parameters() if p.dim() == 2]
    k = model.proj.token_num
    if len(tables) != 2 or (model.prompts.n_user_slots, model.prompts.n_item_slots) != (k, k):
        raise ValueError("the stage-2 yardstick has a user and an item table and one <UserID> and one "
                         "<TargetItemID> in the prompt; this model differs")
    first, drop = model.proj.mlp[0], model.proj.mlp[2]
    return {"bare_cf": [tables[0][0], tables[1][0], tables[0][1]],
            "bare_proj": [k, first.out_features // first.in_features, drop.p]}


def best_of(args, env, mode, batch_size, spec, measure):
    """Our row with the most samples/s of args.repeats runs; with the yardstick interleaved
    (CPU: shared cores make single runs noisy) its best run is attached. spec: what the
    yardstick needs (``bare_spec``)."""
    ours, bares = [], []
    for _ in range(args.repeats):
        ours.append(measure())
        if env.interleave and not args.no_bare:
            bares.append(bare_run(args, env, mode, batch_size, spec))
    best = max(ours, key=lambda r: r["samples_per_s"])
    best["repeats"] = args.repeats
    if bares:
        attach_bare(best, max(bares, key=lambda b: b["samples_per_s"]))
    return best


def bare_spec(r) -> dict:
    """What the yardstick needs from one of our rows: the widths of our warm-up and timed batches
    and, for stage 2, the CF and projector sizes (``bare_cf_spec``)."""
    return {k: r[k] for k in ("bare_widths", "bare_cf", "bare_proj") if k in r}


def bare_run(args, env, mode, batch_size, spec) -> dict:
    """The bare loop (bench/tp_bare.py) once, at our batch size and dtype, step by step at the
    padded widths of our batches (``spec["bare_widths"]``: the same tensor shapes, in order);
    with ``spec["bare_cf"]`` a stage-2 step of the same CF and projector sizes."""
    from tp_bare import run

    dtype = next(name for name, dt in DTYPES.items() if dt == env.dtype)
    widths = spec["bare_widths"]
    ns = SimpleNamespace(shape=args.shape, device=args.device, dtype=dtype, seq_len=max(widths), widths=widths,
                         steps=args.steps, warmup=args.warmup, quantization=args.quantization)
    if args.bare_fixed_width:
        ns.seq_len, ns.widths = int(round(sum(widths[args.warmup:]) / args.steps)), None
    if "bare_cf" in spec:
        ns.cf = spec["bare_cf"]
        ns.proj_token_num, ns.proj_mid_times, ns.proj_drop = spec["bare_proj"]
    with contextlib.redirect_stdout(io.StringIO()):
        bare = run(ns, mode, batch_size, S.SHAPES)
    H.free_cuda()
    return bare


def attach_bare(r, bare):
    r.update(bare_samples_per_s=bare["samples_per_s"], bare_tokens_per_s=bare["tokens_per_s"],
             bare_model_tflops=bare["model_tflops"], bare_peak_mem_gib=bare.get("peak_mem_gib"),
             bare_seq_len=bare["seq_len"])
    r["ratio_vs_bare"] = round(r["samples_per_s"] / bare["samples_per_s"], 3)


def bare_rows(args, env, rows):
    """CUDA: the yardstick after our model is freed (its peak memory is then its own)."""
    for r in rows:
        if r["mode"] in ("train", "eval") and r.get("bare_samples_per_s") is None:
            bests = [bare_run(args, env, r["mode"], r["batch_size"], bare_spec(r)) for _ in range(args.repeats)]
            attach_bare(r, max(bests, key=lambda b: b["samples_per_s"]))


def setup(args, tmp):
    """Data, tokenizer, shape and random MF weights used by every stage."""
    from collm_faissret import dist
    from collm_faissret.models.backbone import load_tokenizer, resolve_dtype
    from collm_faissret.tasks.rec_task import RecTask

    device = dist.init(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = S.stage_config(1, args.data, tmp, args.device, args.max_txt_len, 1, 1, 1, 0, False, True)
    data = RecTask(cfg).load_data()
    dtype = resolve_dtype("auto", device)
    if os.path.isdir(args.shape):  # a real checkpoint: its tokenizer makes the prompts
        tokenizer = load_tokenizer(args.shape)
        make_backbone = lambda: S.loaded_backbone(args.shape, dtype, device)  # noqa: E731
    else:
        sizes = dict(S.SHAPES[args.shape])
        tokenizer = S.build_tokenizer(data, sizes["vocab_size"])
        make_backbone = lambda: S.random_backbone(sizes, tokenizer, dtype, device)  # noqa: E731
    mf_path = S.write_random_mf(data, 64, os.path.join(tmp, "mf_random.pth"))
    model_options = []
    if args.quantization != "none":
        model_options = [f"model.llama_model={os.path.abspath(args.shape)}", f"model.quantization={args.quantization}"]
    # CPU: the bare loop runs right after each of our runs (same load on the shared cores);
    # CUDA: after our model is freed, so each side's peak memory is its own.
    return SimpleNamespace(device=device, data=data, tokenizer=tokenizer, make_backbone=make_backbone,
                           dtype=dtype, mf_path=mf_path, interleave=device.type == "cpu", model_options=model_options)


def main(argv=None) -> int:
    args = parse_args(argv)
    # transformers' renames (gradient -> activation checkpointing): notices about library
    # internals, raised on every checkpointed forward, that would bury the table
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="collm_tp.") as tmp:
        log = quiet_logging(tmp)
        try:
            env = setup(args, tmp)
            for stage in args.stages:
                out_dir = os.path.join(tmp, f"stage{stage}")
                os.makedirs(out_dir, exist_ok=True)
                stage_rows = measure_stage(args, env, stage, out_dir)
                if not args.no_bare:
                    bare_rows(args, env, stage_rows)
                rows += stage_rows
                write_json(args.json, rows)  # after each stage: a run cut short keeps what it measured
        finally:
            for handler in log.handlers:  # its log file lives in the temporary directory
                handler.close()
            log.handlers.clear()
    print_table(args, rows, env)
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
