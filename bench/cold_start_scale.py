"""Cold start at catalog scale: time and peak memory of ColdStartCF on synthetic clustered data.

Builds a synthetic world of --users users and --items items (default 1M each)
in --dim dimensions: item vectors from a seeded Gaussian mixture with skewed
cluster sizes (as bench/retrieval.py), each user a mixture cluster whose
vector is its cluster centre plus noise, and a history of --history items
drawn from that cluster. The last --cold-share of users and of items are
cold (no training row; a cold item keeps a random vector and gets a synthetic
title of its cluster's words). One training row per warm user. Then, through
the project's own ColdStartCF with IVF indexes (``retrieval.index_type
ivf_flat``): the wrapper's construction (user index over warm users' history
representations, history map fit, cold items' title index and borrowing),
then borrowed vectors for every cold user's history. Reports seconds per
phase and the process's peak RSS after each (ru_maxrss), and as a sanity
check the cosine between each cold user's borrowed vector and its cluster
centre, against that of a random warm user.

  python bench/cold_start_scale.py --users 1000000 --items 1000000 --json /tmp/cold_start_scale.json
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tp_report import write_json  # noqa: E402

from collm_faissret.models.cf import CFConfig, build_cf  # noqa: E402
from collm_faissret.models.cf.cold_start import ColdStartCF  # noqa: E402
from collm_faissret.models.cf.cold_start_config import ColdStartConfig  # noqa: E402
from collm_faissret.retrieval.index import RetrievalConfig  # noqa: E402

QUERY_BATCH = 65536  # cold users' histories sent to cold_users at once


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def world(n_users, n_items, dim, history, centers, cold_share, seed):
    """Synthetic tables, training rows and titles; see the module docstring."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, dim), dtype=np.float32)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    p = rng.lognormal(0.0, 1.0, centers)
    p /= p.sum()
    item_cluster = rng.choice(centers, size=n_items, p=p)
    item_cluster[0] = -1  # id 0 is history padding
    items = mu[np.maximum(item_cluster, 0)] + 0.5 * rng.standard_normal((n_items, dim), dtype=np.float32)
    user_cluster = rng.choice(centers, size=n_users, p=p)
    users = mu[user_cluster] + 0.5 * rng.standard_normal((n_users, dim), dtype=np.float32)
    n_warm_items = int(n_items * (1 - cold_share))
    n_warm_users = int(n_users * (1 - cold_share))
    # Histories: items of the user's cluster (warm items only, as a training split would hold).
    order = np.argsort(item_cluster[1:n_warm_items], kind="stable") + 1
    sorted_clusters = item_cluster[order]
    starts = np.searchsorted(sorted_clusters, np.arange(centers))
    ends = np.searchsorted(sorted_clusters, np.arange(centers), side="right")
    size = np.maximum(ends - starts, 1)
    pick = starts[user_cluster][:, None] + (rng.random((n_users, history + 1)) * size[user_cluster][:, None]).astype(
        np.int64)
    his = order[np.minimum(pick, len(order) - 1)]  # [n_users, history + 1]: history, then a target
    titles = {i: f"w{item_cluster[i]}a w{item_cluster[i]}b w{rng.integers(1000)}x" for i in range(1, n_items)}
    train = pd.DataFrame({"uid": np.arange(n_warm_users), "iid": his[:n_warm_users, -1],
                          "label": np.ones(n_warm_users, dtype=np.int64),
                          "his": list(his[:n_warm_users, :-1])})
    return SimpleNamespace(users=users, items=items, mu=mu, user_cluster=user_cluster, his=his[:, :-1],
                           titles=titles, train=train, n_warm_users=n_warm_users)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--history", type=int, default=20, help="history items per user")
    ap.add_argument("--centers", type=int, default=2000, help="mixture clusters")
    ap.add_argument("--cold-share", type=float, default=0.1, help="share of users and of items that are cold")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--train-sample", type=int, default=200_000, help="vectors that train each IVF quantizer")
    ap.add_argument("--title-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    report = {"users": args.users, "items": args.items, "dim": args.dim, "history": args.history,
              "cold_share": args.cold_share, "nprobe": args.nprobe, "phases": []}

    def phase(name, t0, **extra):
        row = {"phase": name, "seconds": round(time.time() - t0, 1), "peak_rss_gb": round(peak_rss_gb(), 2), **extra}
        report["phases"].append(row)
        print(json.dumps(row), flush=True)

    t0 = time.time()
    w = world(args.users, args.items, args.dim, args.history, args.centers, args.cold_share, 0)
    phase("synthetic data", t0)
    data = SimpleNamespace(splits={"train": w.train}, n_users=args.users, n_items=args.items)
    mf = build_cf(OmegaConf.structured(CFConfig(embedding_size=args.dim)), data, torch.device("cpu"), name="MF")
    with torch.no_grad():
        mf.user.weight.copy_(torch.from_numpy(w.users))
        mf.item.weight.copy_(torch.from_numpy(w.items))
    index_cfg = RetrievalConfig(index_type="ivf_flat", nprobe=args.nprobe, train_sample=args.train_sample,
                                use_gpu=False)
    cs = ColdStartConfig(enabled=True, user_repr="item_mean", neighbors_weight=1.0, map_weight=1.0,
                         history_len=args.history, n_neighbors=50, item_neighbors=10, title_dim=args.title_dim)
    t0 = time.time()
    cf = ColdStartCF(mf.eval(), data, cs, index_cfg, titles=w.titles)
    phase("ColdStartCF build (user IVF index, history map, cold items by title IVF)", t0,
          user_index=cf._user_index.kind)
    t0 = time.time()
    cold_his = w.his[w.n_warm_users:]
    out = np.concatenate([cf.cold_users(cold_his[s:s + QUERY_BATCH]) for s in range(0, len(cold_his), QUERY_BATCH)])
    n_cold = len(cold_his)
    phase("borrowed vectors for every cold user", t0, cold_users=n_cold,
          users_per_s=round(n_cold / max(time.time() - t0, 1e-9)))
    unit = out / np.linalg.norm(out, axis=1, keepdims=True)
    own = (unit * w.mu[w.user_cluster[w.n_warm_users:]]).sum(1).mean()
    other = (unit * w.mu[np.random.default_rng(1).permutation(w.user_cluster[w.n_warm_users:])]).sum(1).mean()
    report["cosine_to_own_cluster"] = round(float(own), 3)
    report["cosine_to_random_cluster"] = round(float(other), 3)
    print(f"cold users' borrowed vectors: cosine to own cluster centre {own:.3f}, to a random one {other:.3f}")
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
