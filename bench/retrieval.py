"""Recall@10 and queries/s of the project's ItemIndex kinds against exact search.

For each item count: exact faiss IndexFlatIP ("flat", the yardstick), IVF-Flat
at several nlist x nprobe settings, and exact torch matmul + topk
("torch_exact"), all through collm_faissret.retrieval.ItemIndex. Recall@10 is
the fraction of flat's top-10 ids an index returns; speedup_vs_flat is its qps
over flat's qps in the same run.

Data: "clustered" (a seeded Gaussian mixture with skewed cluster sizes,
L2-normalised, like learned embeddings; queries from the same mixture),
"random" (uniform on the sphere: no structure, the worst case for any ANN
index, reported as a side note only), "ml1m" (item embeddings from
--ml1m-embeddings; queries are sampled items, i.e. item-to-item retrieval).

  python bench/retrieval.py --items 100000 1000000 --dim 64 --json /tmp/retrieval_bench.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

# Run as a script from a checkout: make the package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collm_faissret.retrieval import ItemIndex, RetrievalConfig, auto_nlist  # noqa: E402
from collm_faissret.retrieval.index import MIN_POINTS_PER_LIST  # noqa: E402

K = 10
# A timed search repeats until this much wall clock has passed, so fast indexes get a stable qps.
MIN_TIMED_S = 0.5
SIDE_NOTE_NPROBE = 16


def clustered(n, nq, dim, centers, spread, seed):
    """Gaussian mixture with lognormal cluster sizes: items [n, dim], queries [nq, dim]."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, dim), dtype=np.float32)
    weights = rng.lognormal(0.0, 1.0, centers)
    weights /= weights.sum()

    def draw(m):
        x = mu[rng.choice(centers, size=m, p=weights)]
        x += spread * rng.standard_normal((m, dim), dtype=np.float32)
        faiss.normalize_L2(x)
        return x

    return draw(n), draw(nq)


def uniform(n, nq, dim, seed):
    """Uniform directions on the unit sphere: items [n, dim], queries [nq, dim]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + nq, dim), dtype=np.float32)
    faiss.normalize_L2(x)
    return x[:n], x[n:]


def ml1m(path, nq, seed):
    """Item embeddings [N, d] from a .npy; queries [nq, d] are sampled items."""
    x = np.ascontiguousarray(np.load(path), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{path} must hold a 2-d [items, dim] array, got shape {x.shape}")
    rows = np.random.default_rng(seed).choice(x.shape[0], size=min(nq, x.shape[0]), replace=False)
    return x, x[rows]


def timed_search(index, q):
    """(ids [Q, K], qps): warm up on a few queries, then search q until MIN_TIMED_S passes."""
    index.search(q[:64], K)
    done, t0 = 0, time.perf_counter()
    while True:
        _, ids = index.search(q, K)
        done += q.shape[0]
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_TIMED_S:
            return ids, done / elapsed


def recall_at_k(found, truth):
    """Fraction of the exact ids truth [Q, K] (ignoring -1) present in found [Q, K]."""
    hit = (found[:, :, None] == truth[:, None, :]).any(axis=1) & (truth >= 0)
    return float(hit.sum() / max(1, (truth >= 0).sum()))


def timed_build(xb, ids, cfg):
    t0 = time.perf_counter()
    index = ItemIndex.build(xb, ids, cfg)
    return index, time.perf_counter() - t0


def ivf_nlists(requested, n, n_train):
    """The requested nlists that get >= MIN_POINTS_PER_LIST training points each, else auto."""
    ok = [nl for nl in requested if nl * MIN_POINTS_PER_LIST <= n_train]
    for nl in sorted(set(requested) - set(ok)):
        print(f"  note: skipping nlist {nl} for {n} items: {n_train} training points give "
              f"fewer than {MIN_POINTS_PER_LIST} per list", file=sys.stderr)
    return ok or [auto_nlist(n, n_train)]


def bench_one(data, xb, xq, args, side_note):
    """All rows for one data set: items xb [N, d], queries xq [Q, d]."""
    n, dim = xb.shape
    ids = np.arange(n, dtype=np.int64)
    use_gpu = args.device == "cuda"
    base = dict(data=data, items=n, dim=dim, threads=faiss.omp_get_max_threads())
    rows = []

    def emit(name, index, recall, qps, build_s, n_queries):
        row = dict(index=name, **base, recall_at_10=round(recall, 4), qps=round(qps, 1),
                   speedup_vs_flat=round(qps / flat_qps, 2), build_s=round(build_s, 2),
                   device=index.device, queries=n_queries)
        print(f"  {data:9s} {n:>8d} {name:22s} recall@10 {row['recall_at_10']:.4f}  "
              f"qps {row['qps']:>10.1f}  x{row['speedup_vs_flat']}", file=sys.stderr, flush=True)
        rows.append(row)

    # Exact search costs O(N) per query: time it on fewer queries; qps is per query all the same.
    n_exact = min(xq.shape[0], args.exact_queries)
    flat, build_s = timed_build(xb, ids, RetrievalConfig(index_type="flat", use_gpu=use_gpu))
    _, flat_qps = timed_search(flat, xq[:n_exact])
    _, truth = flat.search(xq, K)  # ground truth for every query, untimed
    emit("flat", flat, 1.0, flat_qps, build_s, n_exact)
    del flat

    if not side_note:
        exact, build_s = timed_build(xb, ids, RetrievalConfig(index_type="torch_exact",
                                                              use_gpu=use_gpu))
        found, qps = timed_search(exact, xq[:n_exact])
        emit("torch_exact", exact, recall_at_k(found, truth[:n_exact]), qps, build_s, n_exact)
        del exact

    n_train = min(n, args.train_sample) if args.train_sample else n
    nlists = ivf_nlists(args.nlist, n, n_train)
    nprobes = [SIDE_NOTE_NPROBE] if side_note else args.nprobe
    for nlist in nlists[:1] if side_note else nlists:  # side note: the cheapest build
        cfg = RetrievalConfig(index_type="ivf_flat", nlist=nlist, train_sample=args.train_sample,
                              use_gpu=use_gpu)
        ivf, build_s = timed_build(xb, ids, cfg)
        for nprobe in nprobes:
            ivf.set_nprobe(nprobe)
            found, qps = timed_search(ivf, xq)
            emit(f"ivf{nlist},nprobe{nprobe}", ivf, recall_at_k(found, truth), qps, build_s,
                 xq.shape[0])
        del ivf
        if args.pq and not side_note:
            pq_m = args.pq_m or max(1, dim // 4)
            cfg = RetrievalConfig(index_type="ivf_pq", nlist=nlist, pq_m=pq_m,
                                  train_sample=args.train_sample, use_gpu=use_gpu)
            ivfpq, build_s = timed_build(xb, ids, cfg)
            for nprobe in nprobes:
                ivfpq.set_nprobe(nprobe)
                found, qps = timed_search(ivfpq, xq)
                emit(f"ivf{nlist},pq{pq_m},nprobe{nprobe}", ivfpq, recall_at_k(found, truth),
                     qps, build_s, xq.shape[0])
            del ivfpq
    return rows


def print_table(rows):
    head = ("data", "items", "dim", "index", "device", "recall@10", "qps", "speedup", "build_s")
    fmt = "{:<9} {:>8} {:>4} {:<24} {:<6} {:>9} {:>11} {:>9} {:>8}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(r["data"], r["items"], r["dim"], r["index"], r["device"],
                         f"{r['recall_at_10']:.4f}", f"{r['qps']:.1f}",
                         f"{r['speedup_vs_flat']:.2f}x", f"{r['build_s']:.2f}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--exact-queries", type=int, default=500,
                    help="queries timed for the exact indexes (flat, torch_exact)")
    ap.add_argument("--data", nargs="+", default=["clustered", "random"],
                    choices=["clustered", "random", "ml1m"])
    ap.add_argument("--ml1m-embeddings",
                    help=".npy of item embeddings [items, dim] for --data ml1m")
    ap.add_argument("--nlist", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--train-sample", type=int, default=200_000,
                    help="vectors that train the IVF quantizer (0 = all)")
    ap.add_argument("--pq", action="store_true", help="also IVF-PQ at each nlist")
    ap.add_argument("--pq-m", type=int, default=0, help="PQ sub-quantizers (0 = dim // 4)")
    ap.add_argument("--centers", type=int, default=0,
                    help="mixture components (0 = max(1000, items // 500))")
    ap.add_argument("--spread", type=float, default=0.3, help="per-cluster std per dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda given but torch sees no CUDA device")

    print(f"# faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}, "
          f"{args.queries} queries ({args.exact_queries} timed for exact indexes)", flush=True)
    rows = []
    for data in args.data:
        if data == "ml1m":
            if not args.ml1m_embeddings:
                print("note: --data ml1m skipped, no --ml1m-embeddings file given", flush=True)
                continue
            xb, xq = ml1m(args.ml1m_embeddings, args.queries, args.seed)
            rows += bench_one(data, xb, xq, args, side_note=False)
            continue
        for n in args.items:
            if data == "clustered":
                centers = args.centers or max(1000, n // 500)
                xb, xq = clustered(n, args.queries, args.dim, centers, args.spread, args.seed)
            else:
                xb, xq = uniform(n, args.queries, args.dim, args.seed)
            rows += bench_one(data, xb, xq, args, side_note=(data == "random"))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"# wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
