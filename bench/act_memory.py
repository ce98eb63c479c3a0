"""Training memory at a named backbone shape (e.g. 7B), estimated on a CPU: the weights
plus what autograd keeps for the backward pass, for the project's own stage-1/2 step
and, in the same run, for the bare transformers+peft loop (bench/tp_bare.py, the yardstick).

For researchers sizing a GPU they do not have at hand (the seed's 24 GB cards):

  python bench/act_memory.py --shape 7b --data data/ml-1m --batch-size 4 --stages 2 --limit-gib 22

Method. The backbone is built in bf16 (what CUDA runs use) with 1 and with 2
decoder layers; one training step runs on the batch of the ``batch-size``
longest training prompts (worst case), and the bytes of the distinct storages
autograd saves for the backward pass are summed (parameters excluded). Two
depths give a per-layer part and a fixed part, extrapolated to the shape's
depth; weights, gradients and AdamW state are extrapolated the same way.

Not counted: the caching allocator's slack, cuBLAS workspaces and the transient
tensors of the backward pass. The attention kernels also differ (CPU flash /
math kernels here, CUDA flash / memory-efficient there). So the figure is an
estimate: compare it with the bare loop's row, whose peak on a GPU
``python bench/tp_bare.py --shape 7b --batch-size 4 --seq-len 256 --modes train --full-logits``
measures (docs/benchmarks.md has the figures taken so far). The bare row here computes logits
at every position, as that command does.

Beside each of our rows: the memory planner's estimate (collm_faissret/planner.py,
what ``python -m collm_faissret.env --plan`` prints) for the same shape, stage,
batch and padded length, with its CPU kernels and without its CUDA allowance:
the total and plan / measured ("plan/est"), and its activation part alone
against the saved tensors measured here ("saved MiB", "plan MiB", "p/m"), since at
large shapes the weights dominate the total and would hide an activation error.
"""
import argparse
import os
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import torch
from torch.autograd.graph import saved_tensors_hooks

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (HERE, os.path.dirname(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import tp_harness as H  # noqa: E402
import tp_setup as S  # noqa: E402
from tp_report import write_json  # noqa: E402

from collm_faissret import planner  # noqa: E402

GIB = 2 ** 30
CPU = torch.device("cpu")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(S.SHAPES), default="7b", help="backbone shape (bench/tp_setup.py SHAPES)")
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM-format data directory")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[4])
    ap.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[2])
    ap.add_argument("--max-txt-len", type=int, default=256, help="model.max_txt_len")
    ap.add_argument("--bare-seq-len", type=int, default=256, help="the bare loop's sequence length")
    ap.add_argument("--no-bare", action="store_true", help="skip the yardstick loop")
    ap.add_argument("--limit-gib", type=float, default=22.0, help="the memory budget the estimate is held against")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", help="write the rows here (a JSON list)")
    return ap.parse_args(argv)


def step_memory(model, step) -> dict:
    """Bytes of one training step: {"saved": autograd's saved storages, "weights", "trainable"}.

    step() returns the loss; its backward runs here so the hooks see a complete step.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:  # a frozen weight kept for the backward is not new memory
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"saved": sum(saved.values()),
            "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
            # a gradient of each trainable weight, and AdamW's two fp32 moments
            "trainable": sum(p.numel() * (p.element_size() + 8) for p in trainable)}


def extrapolate(one: dict, two: dict, depth: int) -> dict:
    """Per-layer = two - one; full depth = one + (depth - 1) * per-layer, for every entry."""
    out = {k: one[k] + (depth - 1) * (two[k] - one[k]) for k in one}
    out["saved_per_layer"] = two["saved"] - one["saved"]
    return out


def ours(env, stage, batch_size, depth_layers):
    """Bytes of the project's step at ``depth_layers`` decoder layers, the batch's shape, and the config."""
    cfg = S.stage_config(stage, env.args.data, env.tmp, "cpu", env.args.max_txt_len, batch_size, batch_size, 1, 0,
                         False, True, env.mf_path, dtype="bf16")
    sizes = dict(env.sizes, num_hidden_layers=depth_layers)
    task = H.BenchTask(cfg, env.data, (S.random_backbone(sizes, env.tokenizer, torch.bfloat16, CPU), env.tokenizer))
    model = task.build_model(CPU)
    key = (stage, batch_size)
    if key not in env.batches:  # the prompts do not depend on the depth: tokenised once
        rows = H.longest_rows(task, task.build_datasets(model)["train"], batch_size)
        env.batches[key] = model.collate_fn(rows.__getitems__(list(range(batch_size))))
    batch = env.batches[key]
    shape = {"seq_len": int(batch["input_ids"].shape[1]), "tokens": int(batch["attention_mask"].sum()), "cfg": cfg}
    return step_memory(model, lambda: task.train_step(model, batch)), shape


def bare(env, batch_size, depth_layers):
    """Bytes of the yardstick's training step (its model and loss, logits at every position)
    at ``depth_layers`` layers."""
    from tp_bare import build

    model, vocab = build("bare", {"bare": dict(env.sizes, num_hidden_layers=depth_layers)}, torch.bfloat16, CPU)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch_size, env.args.bare_seq_len), generator=gen)
    labels = torch.randint(0, 2, (batch_size,), generator=gen).float()
    yes_id = 8241 % vocab  # the yardstick's answer token

    def step():
        logits = model(input_ids=ids).logits[:, -1, yes_id].float()
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

    return step_memory(model, step), {"seq_len": env.args.bare_seq_len, "tokens": batch_size * env.args.bare_seq_len}


def measure(env, who, stage, batch_size, fn):
    t0 = time.time()
    one, shape = fn(1)
    two, _ = fn(2)
    full = extrapolate(one, two, env.sizes["num_hidden_layers"])
    total = full["weights"] + full["trainable"] + full["saved"]
    cfg = shape.pop("cfg", None)
    plan = {}
    if cfg is not None:  # the planner at the same shape, stage, batch and padded length; CF tables as built
        est = planner.estimate(planner_shape(env.sizes), cfg.model, "none", "ddp", batch_size, shape["seq_len"],
                               overhead_gib=0.0, cf_rows=env.data.n_users + env.data.n_items, device="cpu")
        plan = {"plan_gib": round(est["total"] / GIB, 3), "plan_ratio": round(est["total"] / total, 3),
                "plan_saved_mib": round(est["parts"]["activations"] / 2 ** 20, 2),
                "plan_saved_ratio": round(est["parts"]["activations"] / full["saved"], 3)}
    return {"who": who, "stage": stage, "batch_size": batch_size, **shape, "shape": env.args.shape, **plan,
            "saved_per_layer_mib": round(full["saved_per_layer"] / 2 ** 20, 2),
            "saved_gib": round(full["saved"] / GIB, 3), "saved_mib": round(full["saved"] / 2 ** 20, 2),
            "weights_gib": round(full["weights"] / GIB, 3),
            "grads_adam_gib": round(full["trainable"] / GIB, 4), "estimate_gib": round(total / GIB, 3),
            "limit_gib": env.args.limit_gib, "fits": total / GIB < env.args.limit_gib,
            "seconds": round(time.time() - t0, 1)}


def planner_shape(sizes: dict) -> dict:
    """A SHAPES entry with LlamaConfig's defaults made explicit."""
    return {"num_key_value_heads": sizes["num_attention_heads"], "tie_word_embeddings": False, **sizes}


def print_table(rows):
    head = (f"{'who':>5} {'stage':>5} {'bs':>4} {'len':>5} {'tokens':>7} | {'saved/layer MiB':>15} "
            f"{'saved GiB':>9} {'weights GiB':>11} {'grad+Adam':>9} | {'estimate GiB':>12} {'limit':>6} {'fits':>5} "
            f"| {'plan GiB':>8} {'plan/est':>8} {'saved MiB':>9} {'plan MiB':>8} {'p/m':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['who']:>5} {str(r['stage'] or '-'):>5} {r['batch_size']:>4} {r['seq_len']:>5} {r['tokens']:>7} | "
              f"{r['saved_per_layer_mib']:>15.1f} {r['saved_gib']:>9.3f} {r['weights_gib']:>11.3f} "
              f"{r['grads_adam_gib']:>9.4f} | {r['estimate_gib']:>12.3f} {r['limit_gib']:>6.1f} "
              f"{'yes' if r['fits'] else 'no':>5} | {r.get('plan_gib', float('nan')):>8.3f} "
              f"{r.get('plan_ratio', float('nan')):>8.3f} {r['saved_mib']:>9.2f} "
              f"{r.get('plan_saved_mib', float('nan')):>8.2f} {r.get('plan_saved_ratio', float('nan')):>6.3f}")


def main(argv=None) -> int:
    from collm_faissret.tasks.rec_task import RecTask

    args = parse_args(argv)
    # peft reads transformers' renamed checkpointing flag on every forward: a notice about
    # library internals that would bury the table
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="collm_mem.") as tmp:
        cfg = S.stage_config(1, args.data, tmp, "cpu", args.max_txt_len, 1, 1, 1, 0, False, True)
        data = RecTask(cfg).load_data()
        sizes = dict(S.SHAPES[args.shape])
        env = SimpleNamespace(args=args, tmp=tmp, data=data, sizes=sizes, batches={},
                              tokenizer=S.build_tokenizer(data, sizes["vocab_size"]),
                              mf_path=S.write_random_mf(data, 64, os.path.join(tmp, "mf_random.pth")))
        for bs in args.batch_size:
            for stage in args.stages:
                rows.append(measure(env, "ours", stage, bs, lambda n: ours(env, stage, bs, n)))
            if not args.no_bare:
                rows.append(measure(env, "bare", None, bs, lambda n: bare(env, bs, n)))
    print(f"\nshape {args.shape}, bf16, estimated on CPU from 1- and 2-layer builds "
          f"({sizes['num_hidden_layers']} layers); ours on the longest training prompts")
    print_table(rows)
    if args.json:
        write_json(args.json, rows)
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
