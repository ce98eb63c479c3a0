"""Stage-1 and stage-2 training and scoring on the CPU: today's fp32 path against each speed-up
and all of them together, in one run, through the framework's own runner and task.

Today's path (before 6 December 2026): fp32 (run.amp was CUDA-only), every training prompt
whole, the study's batch sizes (training 4, scoring 16), shared prompt prefixes when scoring.
The changes, each alone and then together:

  bf16      run.cpu_amp=true: bf16 autocast on a CPU with bf16 units (AMX / AVX512-BF16); scoring
            under it too (run.amp_scoring=on), the answer logits in fp32 either way
  frozen    run.frozen_prefix=auto: stage 2's prompt before the first ID slot runs once
            without gradients (stage 1 trains LoRA on every token: not applicable there)
  batch16   training batch 16 (scoring batch 64)
  compile   run.compile=on: the LM's decoder layers compiled (torch.compile)

Stage 1 trains LoRA (r 8, q/v) on the text prompt; stage 2 the FECE projector with 8 tokens
per ID (MF 64-d, random weights: the cost does not depend on them), LoRA frozen. Scoring is
stage 2's model on a seeded subset of whole prefix groups of the test split and on K=50
random candidates per user (bench/score_throughput.py's cases). Each figure is rows per
second over the timed batches (the first --warmup batches of each measurement untimed), the
best of --repeats; ratios are against today's row of the same stage and mode in this run.

Goals on 2 idle cores (the project's targets for CPU training speed): stage-2 training >= 4x
today's (moonshot 6x), stage-1 training >= 2x, scoring >= 2.5x on the test split and at K=50.

  python bench/cpu_speedups.py --shape data/smollm2 --data data/ml-1m --json /tmp/speedups.json
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import score_throughput as ST  # noqa: E402
import tp_harness as H  # noqa: E402
import tp_setup as S  # noqa: E402
import train_throughput as TT  # noqa: E402
from tp_report import write_json  # noqa: E402

# change -> (run options, training batch size or None for the base one)
CHANGES = {
    "bf16": (["run.amp=true", "run.cpu_amp=true"], None),
    "frozen": (["run.frozen_prefix=auto"], None),
    "batch16": ([], 16),
    "compile": (["run.compile=on"], None),
}
TODAY = ["run.amp=false", "run.frozen_prefix=off", "run.compile=off"]
GOALS = {(2, "train"): 4.0, (1, "train"): 2.0, ("score", "test"): 2.5, ("score", "rr50"): 2.5}
MOONSHOT = {(2, "train"): 6.0}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="data/smollm2", help="a checkpoint directory or tiny (random weights)")
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM-format data directory")
    ap.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    ap.add_argument("--changes", nargs="+", choices=list(CHANGES), default=["bf16", "frozen", "batch16"],
                    help="speed-ups timed alone and all together (compile: add it to time it)")
    ap.add_argument("--base-batch", type=int, default=4, help="today's training batch (the study's)")
    ap.add_argument("--train-rows", type=int, default=96, help="timed training rows per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches before the timed ones")
    ap.add_argument("--score", nargs="*", default=["test", "rr50"], help="scoring cases (none: skip scoring)")
    ap.add_argument("--score-rows", type=int, default=240, help="rows per scoring case")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per row, best kept")
    ap.add_argument("--max-txt-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here (a JSON list)")
    ap.add_argument("--force-bf16", action="store_true",
                    help="time the bf16 rows on a CPU without bf16 units too (emulated: slower than fp32)")
    args = ap.parse_args(argv)
    from collm_faissret.precision import cpu_bf16_units

    args.bf16 = bool(cpu_bf16_units()) or args.force_bf16
    if not args.bf16 and "bf16" in args.changes:
        print("this CPU has no bf16 units (run.amp stays fp32 here): the bf16 rows are skipped "
              "(--force-bf16 times them anyway)")
        args.changes = [c for c in args.changes if c != "bf16"]
    if args.shape not in S.SHAPES and not os.path.isdir(args.shape):
        ap.error(f"--shape {args.shape!r}: neither {' / '.join(S.SHAPES)} nor a checkpoint directory")
    return args


def variants(stage, changes, base_batch):
    """[(name, options, batch)]: today, each change alone, all together (changes that apply)."""
    usable = [c for c in changes if not (c == "frozen" and stage == 1)]
    out = [("today", [], base_batch)]
    for c in usable:
        out.append((c, CHANGES[c][0], CHANGES[c][1] or base_batch))
    if len(usable) > 1:
        opts = [o for c in usable for o in CHANGES[c][0]]
        batch = max(CHANGES[c][1] or base_batch for c in usable)
        out.append(("all: " + " + ".join(usable), opts, batch))
    return out


def train_rows(args, env, stage, tmp):
    """One training row per variant of ``stage``: samples/s over the timed batches."""
    rows = []
    stage_opts = ["model.proj_token_num=8", "model.lora_config.use_lora=true", "model.freeze_lora=true"] \
        if stage == 2 else []
    cfg0 = None
    runner = task = None
    for name, opts, bs in variants(stage, args.changes, args.base_batch):
        steps = max(2, args.train_rows // bs)
        cfg = S.stage_config(stage, args.data, tmp, "cpu", args.max_txt_len, bs, 16, args.warmup + steps, 0, False,
                             True, env.mf_path, options=env.model_options + stage_opts + TODAY + opts
                             + ["run.log_freq=1000"])
        if runner is None:
            cfg0 = cfg
            task = H.BenchTask(cfg, env.data, (env.make_backbone(), env.tokenizer))
            runner = H.BenchRunner(cfg, task, env.device)
            runner._build()
            state = {k: v.clone() for k, v in runner.model.state_dict().items()}
        runner.model.load_state_dict(state)  # every variant starts from the same weights
        runner.use_config(cfg)
        best = None
        for _ in range(args.repeats):
            clock = runner.timed_train(args.warmup)
            lengths = runner.datasets["train"].lengths()
            batches = H.train_batches(lengths, bs, cfg.run.seed, True, args.warmup + steps)
            n = sum(len(b) for b in batches[args.warmup:])
            rate = n / clock.seconds
            best = rate if best is None else max(best, rate)
        rows.append({"stage": stage, "mode": "train", "case": "train", "variant": name, "batch": bs,
                     "options": opts, "rows_per_s": round(best, 3)})
        print(f"stage {stage} train {name} (batch {bs}): {best:.2f} samples/s", flush=True)
    del cfg0, runner, task
    return rows


def score_rows(args, tmp):
    """Scoring rows: stage 2's model (fp32 weights) on each case, today's fp32 against bf16
    autocast and a larger batch, through RecTask.predict with shared prefixes."""
    task, model, data = _score_model(args, tmp)
    rows = []
    for case in args.score:
        if case == "test":
            ds, _, _ = ST.test_case(task, model, data, args.score_rows, 0)
        else:
            k = int(case[2:])
            ds = ST.rr_case(task, model, data, k, max(1, args.score_rows // k), 0)
        base = None
        cases = [("today", False, 16), ("bf16", True, 16), ("batch64", False, 64), ("all: bf16 + batch64", True, 64)]
        for name, amp, bs in [c for c in cases if args.bf16 or not c[1]]:
            sec, scores = _timed_score(task, model, ds, bs, amp, args.repeats)
            rate = len(ds) / sec
            if base is None:
                base = scores
            rows.append({"stage": 2, "mode": "score", "case": case, "variant": name, "batch": bs,
                         "options": ["run.amp_scoring=on"] if amp else [], "rows_per_s": round(rate, 3),
                         "rows": len(ds), "max_abs_dscore": float(np.abs(scores - base).max())})
            print(f"score {case} {name} (batch {bs}): {rate:.2f} rows/s", flush=True)
    return rows


def _score_model(args, tmp):
    """(task, stage-2 model with 8 tokens per ID in fp32, data), as bench/score_throughput.py's
    build() makes it."""
    from collm_faissret import datasets, models, tasks  # noqa: F401  (fill the registries)
    from collm_faissret.models.backbone import load_tokenizer
    from collm_faissret.models.collm import CoLLM
    from collm_faissret.tasks.rec_task import RecTask

    device = torch.device("cpu")
    mf = os.path.join(tmp, "mf_score.pth")
    cfg = S.stage_config(2, args.data, tmp, "cpu", args.max_txt_len, 1, 16, 1, 0, False, True, mf,
                         dtype="fp32", options=["model.proj_token_num=8"])
    task = RecTask(cfg)
    data = task.load_data()
    S.write_random_mf(data, 64, mf)
    if os.path.isdir(args.shape):
        tok = load_tokenizer(args.shape)
        llm = S.loaded_backbone(args.shape, torch.float32, device)
    else:
        sizes = dict(S.SHAPES[args.shape])
        tok = S.build_tokenizer(data, sizes["vocab_size"])
        llm = S.random_backbone(sizes, tok, torch.float32, device)
    torch.manual_seed(0)
    model = CoLLM.from_config(cfg, data, device, backbone=(llm, tok))
    return task, model.eval(), data


def _timed_score(task, model, ds, batch_size, amp, repeats):
    from collm_faissret.datasets.sampler import eval_batches
    from collm_faissret.models.shared_prefix import attention_ratio, kv_min_group

    ds.share_prefix = True
    ds.pack_ratio = attention_ratio(model.llm.config)
    ds.kv_min_group = kv_min_group(model)[0]
    batches = eval_batches(ds.lengths(), batch_size, groups=ds.prefix_groups())

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    task.predict(model, ds, [batches[0][:4]], torch.device("cpu"), ctx)  # warm-up
    best, scores = None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, scores = task.predict(model, ds, batches, torch.device("cpu"), ctx)
        sec = time.perf_counter() - t0
        best = sec if best is None else min(best, sec)
    return best, scores


def report(rows):
    """The table with ratios against today's row of the same stage/mode/case, and the goals."""
    print("\n| stage | mode | case | variant | batch | rows/s | vs today |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    lines = []
    for r in rows:
        today = next(t for t in rows if (t["stage"], t["mode"], t["case"]) == (r["stage"], r["mode"], r["case"])
                     and t["variant"] == "today")
        r["vs_today"] = round(r["rows_per_s"] / today["rows_per_s"], 3)
        print(f"| {r['stage']} | {r['mode']} | {r['case']} | {r['variant']} | {r['batch']} | {r['rows_per_s']:.2f} "
              f"| {r['vs_today']:.2f}x |")
    for key, goal in GOALS.items():
        if key[0] == "score":
            best = [r for r in rows if r["mode"] == "score" and r["case"] == key[1]]
            label = f"scoring {key[1]}"
        else:
            best = [r for r in rows if r["mode"] == "train" and r["stage"] == key[0]]
            label = f"stage-{key[0]} training"
        if not best:
            continue
        top = max(best, key=lambda r: r["vs_today"])
        line = f"goal {label} >= {goal}x today: {'met' if top['vs_today'] >= goal else 'NOT met'} " \
               f"({top['vs_today']:.2f}x, {top['variant']})"
        if key in MOONSHOT:
            line += f"; moonshot {MOONSHOT[key]}x: {'met' if top['vs_today'] >= MOONSHOT[key] else 'not met'}"
        lines.append(line)
        print(line)
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="collm_speed.") as tmp:
        log = TT.quiet_logging(tmp)
        try:
            tt_args = TT.parse_args(["--shape", args.shape, "--data", args.data, "--device", "cpu",
                                     "--threads", str(args.threads)])
            env = TT.setup(tt_args, tmp)
            for stage in args.stages:
                out = os.path.join(tmp, f"stage{stage}")
                os.makedirs(out, exist_ok=True)
                rows += train_rows(args, env, stage, out)
                write_json(args.json, rows)
            if args.score:
                rows += score_rows(args, tmp)
                write_json(args.json, rows)
        finally:
            for handler in log.handlers:
                handler.close()
            log.handlers.clear()
    from collm_faissret.precision import cpu_bf16_units

    print(f"shape {args.shape}; {args.threads} threads; CPU bf16 units: {cpu_bf16_units() or 'none'}; "
          f"load at start {load:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    report(rows)
    write_json(args.json, rows)
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
