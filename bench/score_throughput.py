"""Scoring rows/s with shared prompt prefixes against every prompt whole, in the same run.

Stage-2 prompts (history titles, <UserID>, target title, <TargetItemID>) on
ML-1M, scored through the framework's own task (RecTask.predict) with
``run.shared_prefix`` off (plain) and auto (shared):

* ``test``: the test split's rows; a seeded subset of whole prefix groups
  (``--test-rows`` rows; groups as on the full split, 1.77 rows per group)
  so that the CPU run stays short.
* ``rrK``: retrieve-then-rank at K candidates per user: ``--rr-rows`` / K
  test users (seeded), each with K items drawn at random from the catalog (what
  retrieval returns changes only the titles, not the cost).

Per case and path: rows/s (best of ``--repeats``), LM tokens computed per
row, and shared/plain. Goals: >= 1.4x on the test split, >= 4.5x at K=50 and
more at K=100, and no case below 0.95x.

  python bench/score_throughput.py --shape tiny --dtype fp32 bf16
  python bench/score_throughput.py --shape data/smollm2 --dtype fp32
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tp_setup as S  # noqa: E402

GOALS = {"test": 1.4, "rr50": 4.5}
# path -> (share prefixes, groups of how many rows take the prefix cache: None as auto chooses, 0 never)
PATHS = {"plain": (False, 0), "shared": (True, None), "packed": (True, 0), "kv": (True, 2)}
FLOOR = 0.95


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", help="tiny (random weights, word tokenizer) or a checkpoint directory")
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM-format data directory")
    ap.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    ap.add_argument("--cases", nargs="+", default=["test", "rr10", "rr50", "rr100"])
    ap.add_argument("--batch-size", type=int, default=64, help="run.batch_size_eval (rows per batch, both paths)")
    ap.add_argument("--test-rows", type=int, default=600, help="rows of the test-split case (whole groups)")
    ap.add_argument("--rr-rows", type=int, default=200,
                    help="rows per retrieve-then-rank case: max(1, rr_rows // K) users with K candidates each")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per path, best kept")
    ap.add_argument("--paths", nargs="+", default=["plain", "shared"], choices=sorted(PATHS),
                    help="scoring paths, each timed on the same rows; the first is the yardstick of the ratios. "
                         "shared: as run.shared_prefix auto chooses; packed: every group packed; kv: every "
                         "shared group over a cache of its prefix")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# The throughput bench's tiny shape (its SIZES["tiny"]), used when tp_setup does not export SIZES.
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)


def tiny_sizes():
    return dict(getattr(S, "SIZES", {}).get("tiny", TINY))


def build(args, dtype_name, tmp):
    """(task, model, data) for a stage-2 model of the shape, in ``dtype_name``."""
    from collm_faissret import datasets, models, tasks  # noqa: F401  (fill the registries)
    from collm_faissret.models.backbone import load_tokenizer, resolve_dtype
    from collm_faissret.models.collm import CoLLM
    from collm_faissret.tasks.rec_task import RecTask

    device = torch.device("cpu")
    cfg = S.stage_config(2, args.data, tmp, "cpu", 256, 1, args.batch_size, 1, 0, False, True,
                         os.path.join(tmp, "mf.pth"), dtype=dtype_name)
    task = RecTask(cfg)
    data = task.load_data()
    if not os.path.exists(os.path.join(tmp, "mf.pth")):
        S.write_random_mf(data, 64, os.path.join(tmp, "mf.pth"))
    dtype = resolve_dtype(dtype_name, device)
    if os.path.isdir(args.shape):
        tok = load_tokenizer(args.shape)
        llm = S.loaded_backbone(args.shape, dtype, device)
    else:
        sizes = tiny_sizes()
        tok = S.build_tokenizer(data, sizes["vocab_size"])
        llm = S.random_backbone(sizes, tok, dtype, device)
    torch.manual_seed(0)
    model = CoLLM.from_config(cfg, data, device, backbone=(llm, tok))
    model.eval()
    return task, model, data


def test_case(task, model, data, n_rows, seed):
    """RecRows of a seeded subset of whole prefix groups of the test split (about n_rows rows)."""
    full = task.rows(data.splits["test"], "test", model)
    groups = full.prefix_groups()
    order = np.random.RandomState(seed).permutation(groups.max() + 1)
    sizes = np.bincount(groups)
    keep_groups = order[:np.searchsorted(np.cumsum(sizes[order]), n_rows) + 1]
    keep = np.flatnonzero(np.isin(groups, keep_groups))
    df = data.splits["test"].iloc[keep].reset_index(drop=True)
    return task.rows(df, "test", model), len(full), len(np.unique(groups))


def rr_case(task, model, data, k, n_users, seed):
    """K random catalog items for each of n_users test users (their first test row's history)."""
    rng = np.random.RandomState(seed)
    test = data.splits["test"]
    first = test.drop_duplicates("uid", keep="first")
    users = first.iloc[rng.choice(len(first), n_users, replace=False)]
    titles = dict(zip(data.splits["train"]["iid"], data.splits["train"]["title"]))
    catalog = np.array(sorted(titles))
    frames = []
    for _, u in users.iterrows():
        items = rng.choice(catalog, k, replace=False)
        frames.append(pd.DataFrame({"uid": u["uid"], "iid": items, "label": rng.randint(0, 2, k), "not_cold": 1,
                                    "title": [titles[i] for i in items], "his": [u["his"]] * k,
                                    "his_title": [u["his_title"]] * k}))
    return task.rows(pd.concat(frames, ignore_index=True), f"rr{k}", model)


def timed(task, model, ds, batch_size, path, repeats):
    """(best seconds, scores, tokens computed) of scoring every row of ds along ``path`` (PATHS)."""
    from collm_faissret.datasets.sampler import eval_batches
    from collm_faissret.models.shared_prefix import attention_ratio, kv_min_group

    shared, kv_min = PATHS[path]
    ds.share_prefix = shared
    ds.pack_ratio = attention_ratio(model.llm.config)
    ds.kv_min_group = kv_min_group(model)[0] if kv_min is None else kv_min
    groups = ds.prefix_groups() if shared else None
    batches = eval_batches(ds.lengths(), batch_size, groups=groups)
    nothing = torch.autocast("cpu", enabled=False)
    task.predict(model, ds, [batches[0][:4]], torch.device("cpu"), lambda: nothing)  # warm-up
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, scores = task.predict(model, ds, batches, torch.device("cpu"), lambda: nothing)
        sec = time.perf_counter() - t0
        best = sec if best is None else min(best, sec)
    return best, scores, ds.tokens_computed


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype_name in args.dtype:
            task, model, data = build(args, dtype_name, tmp)
            for case in args.cases:
                if case == "test":
                    ds, n_full, g_full = test_case(task, model, data, args.test_rows, args.seed)
                    note = f"{len(ds)} of {n_full} rows (whole groups; full split {n_full / g_full:.2f} rows/group)"
                else:
                    k = int(case[2:])
                    users = max(1, args.rr_rows // k)
                    ds = rr_case(task, model, data, k, users, args.seed)
                    note = f"{users} users x {k} candidates"
                groups = ds.prefix_groups()
                runs = {path: timed(task, model, ds, args.batch_size, path, args.repeats) for path in args.paths}
                base = args.paths[0]
                t0, s0, tok0 = runs[base]
                n = len(ds)
                for path in args.paths[1:]:
                    t1, s1, tok1 = runs[path]
                    rows.append({"dtype": dtype_name, "case": case, "rows": n, "note": note, "path": path,
                                 "group": n / len(np.unique(groups)), "plain": n / t0, "shared": n / t1,
                                 "tok_plain": tok0 / n, "tok_shared": tok1 / n,
                                 "ratio": t0 / t1, "max_dscore": float(np.abs(s0 - s1).max())})
                    r = rows[-1]
                    print(f"{dtype_name} {case}: {base} {r['plain']:.2f} -> {path} {r['shared']:.2f} rows/s "
                          f"({r['ratio']:.2f}x)", flush=True)
            del task, model
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    base = args.paths[0]
    print(f"\nshape {args.shape}; batch {args.batch_size}; threads {args.threads}; {when}")
    print(f"| dtype | case | rows | rows/group | path | {base} rows/s | path rows/s | path/{base} | tokens/row {base} "
          "| tokens/row path | max abs d score | rows |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dtype']} | {r['case']} | {r['rows']} | {r['group']:.2f} | {r['path']} | {r['plain']:.2f} "
              f"| {r['shared']:.2f} | {r['ratio']:.2f}x | {r['tok_plain']:.1f} | {r['tok_shared']:.1f} "
              f"| {r['max_dscore']:.1e} | {r['note']} |")
    print()
    if args.paths[:2] != ["plain", "shared"]:
        return 0  # the goals compare plain and shared
    for dtype_name in args.dtype:
        mine = {r["case"]: r for r in rows if r["dtype"] == dtype_name and r["path"] == "shared"}
        checks = []
        if "test" in mine:
            checks.append(("test split >= 1.4x", mine["test"]["ratio"] >= GOALS["test"]))
        if "rr50" in mine:
            checks.append(("K=50 >= 4.5x", mine["rr50"]["ratio"] >= GOALS["rr50"]))
            if "rr100" in mine:
                checks.append(("K=100 > K=50", mine["rr100"]["ratio"] > mine["rr50"]["ratio"]))
        checks.append((f"no case below {FLOOR}x", all(r["ratio"] >= FLOOR for r in mine.values())))
        for name, ok in checks:
            print(f"goal {dtype_name} {name}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
