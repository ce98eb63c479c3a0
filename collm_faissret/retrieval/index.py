"""Item index for maximum-inner-product search over item embeddings.

``ItemIndex`` wraps a faiss index (IndexFlatIP, IndexIVFFlat or IndexIVFPQ, all
with the inner-product metric) or an exact torch matmul + topk, and maps faiss's
row positions back to the catalog's item ids. Saved indexes carry a
``meta.json`` so that loading one built for other embeddings fails loudly
instead of returning wrong items (the files and their checks: ``index_files.py``; the
faiss-gpu resources a GPU index is placed with: ``faiss_gpu.py``).

Shapes: embeddings float32 [N, d], ids int64 [N], queries float32 [Q, d],
results (scores float32 [Q, k], ids int64 [Q, k]).
"""
import dataclasses
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import faiss
import numpy as np
import torch

from ..errors import ConfigError
from ..schema import Choice, setting
from .faiss_gpu import faiss_gpu_available, gpu_resources
from .index_files import EMB_FILE, FAISS_FILE, IDS_FILE, check_expected, check_size, existing, read_meta, write_meta


class IndexType(Choice):
    auto = "auto"
    flat = "flat"
    ivf_flat = "ivf_flat"
    ivf_pq = "ivf_pq"
    torch_exact = "torch_exact"


INDEX_TYPES = tuple(t.value for t in IndexType)
IVF_KINDS = ("ivf_flat", "ivf_pq")
# faiss warns below 39 training points per centroid; the auto nlist stays above it.
MIN_POINTS_PER_LIST = 39
# Fixed so that a rebuilt index over the same embeddings trains on the same sample.
TRAIN_SAMPLE_SEED = 0
# faiss's GPU top-k kernels stop at k = 2048: a deeper search of a GPU index goes to an
# exact torch copy of it (``ItemIndex._exact_copy``).
GPU_MAX_K = 2048
# torch_exact scores one query batch at a time: batch * N floats stay under this.
TORCH_SCORE_ELEMENTS = 2 ** 27


@dataclass
class IndexSettings:
    """The index's schema: its keys as the config's ``retrieval`` section holds them
    (RetrievalConfig adds what only code sets, and validates them)."""
    index_type: IndexType = setting(IndexType.auto, "`auto` (flat below `flat_threshold` items, IVF-Flat above; "
                                                    "exact torch on CUDA without faiss-gpu), `flat`, `ivf_flat`, "
                                                    "`ivf_pq`, `torch_exact`")
    nlist: int = setting(0, "IVF lists; 0: about 4*sqrt(items), at least 39 training points per list")
    nprobe: int = setting(16, "IVF lists visited per query")
    pq_m: int = setting(8, "IVF-PQ sub-quantizers")
    pq_nbits: int = setting(8, "IVF-PQ bits per code")
    flat_threshold: int = setting(50000, "`auto` uses an exact flat index below this many items")
    use_gpu: bool = setting(True, "put the index on a GPU when faiss-gpu sees one (never required)")
    k: int = setting(10, "candidates retrieved per user, each scored by the LLM")


@dataclass
class RetrievalConfig(IndexSettings):
    """How to build and search an ItemIndex: the IndexSettings keys (documented there) plus
    train_sample, set by code only: 0 = all vectors train the IVF quantizer, else a seeded
    sample of this many."""

    train_sample: int = 0

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index_type {self.index_type!r}; "
                             f"choose one of {', '.join(INDEX_TYPES)}")
        for name in ("nprobe", "pq_m", "pq_nbits", "k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RetrievalConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "flat_threshold", "train_sample"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RetrievalConfig.{name} must be >= 0, got {getattr(self, name)}")


def index_settings(section) -> RetrievalConfig:
    """The IndexSettings keys of a config section (the ``retrieval`` section: the
    retrieve-then-rank index and the cold-start neighbour indexes use them) as an
    ItemIndex config; a bad value is a ConfigError naming its key."""
    try:
        return RetrievalConfig(**{f.name: section[f.name] for f in fields(IndexSettings)})
    except ValueError as err:
        raise ConfigError(f"retrieval: {err}") from None


def embedding_hash(array) -> str:
    """Short sha256 (16 hex chars) of an array's float32 bytes, e.g. as a model_hash."""
    data = _float32(array)
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def _float32(array) -> np.ndarray:
    """A numpy array or a torch tensor (any float dtype, any device) as contiguous float32 numpy."""
    if isinstance(array, torch.Tensor):
        # numpy has no bf16 (a tensor made under autocast), and reads host memory only
        array = array.detach().float().cpu()
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def auto_nlist(n_items: int, n_train: Optional[int] = None) -> int:
    """About 4*sqrt(n_items) as a power of two, halved until each list gets
    >= MIN_POINTS_PER_LIST of the n_train training points (default n_items)."""
    n_train = n_items if n_train is None else n_train
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n_items)))))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n_train:
        nlist //= 2
    return nlist


def _resolve_kind(cfg: RetrievalConfig, n_items: int) -> str:
    if cfg.index_type != "auto":
        return cfg.index_type
    # Without faiss-gpu, an exact matmul on a CUDA device beats any CPU faiss index.
    if cfg.use_gpu and torch.cuda.is_available() and not faiss_gpu_available():
        return "torch_exact"
    return "flat" if n_items < cfg.flat_threshold else "ivf_flat"


def _as_embeddings(embeddings) -> np.ndarray:
    x = _float32(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d [N, d] array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"cannot build an index over embeddings of shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf values")
    return x


def _as_ids(ids, n_items: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n_items:
        raise ValueError(f"ids must be a 1-d array of {n_items} item ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if (ids < 0).any():
        raise ValueError("ids must be >= 0 (-1 marks a missing result)")
    if np.unique(ids).shape[0] != n_items:
        raise ValueError("ids contain duplicates")
    return ids


def _train_rows(x: np.ndarray, train_sample: int) -> np.ndarray:
    """Rows that train the IVF quantizer: all of x, or a seeded sample [train_sample, d]."""
    if train_sample == 0 or train_sample >= x.shape[0]:
        return x
    rng = np.random.default_rng(TRAIN_SAMPLE_SEED)
    rows = np.sort(rng.choice(x.shape[0], size=train_sample, replace=False))
    return x[rows]


def _build_faiss(kind: str, x: np.ndarray, cfg: RetrievalConfig) -> Tuple[faiss.Index, int]:
    """Build and fill a CPU faiss index over x [N, d]; returns (index, nlist)."""
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, 0
    train = _train_rows(x, cfg.train_sample)
    nlist = cfg.nlist or auto_nlist(n, train.shape[0])
    if nlist > train.shape[0]:
        raise ValueError(f"nlist {nlist} needs at least {nlist} training vectors, "
                         f"got {train.shape[0]}")
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if d % cfg.pq_m != 0:
            raise ValueError(f"ivf_pq needs pq_m to divide the dim: pq_m {cfg.pq_m}, dim {d}")
        if train.shape[0] < 2 ** cfg.pq_nbits:
            raise ValueError(f"ivf_pq with pq_nbits {cfg.pq_nbits} needs at least "
                             f"{2 ** cfg.pq_nbits} training vectors, got {train.shape[0]}")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, cfg.pq_nbits,
                                 faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.add(x)
    return index, nlist


class ItemIndex:
    """Inner-product top-k over an item catalog, returning item ids.

    Build with ``ItemIndex.build`` or ``ItemIndex.load``; attributes: cfg, kind
    ("flat" | "ivf_flat" | "ivf_pq" | "torch_exact"), dim, n_items, nlist (0
    unless IVF), ids int64 [N], model_hash, device ("cpu" | "cuda"). On the GPU
    it is on the current CUDA device when built or loaded (each rank's own).
    """

    def __init__(self, cfg: RetrievalConfig, kind: str, ids: np.ndarray, dim: int,
                 model_hash: str = "", nlist: int = 0):
        self.cfg = cfg
        self.kind = kind
        self.ids = ids
        self.dim = dim
        self.n_items = int(ids.shape[0])
        self.model_hash = model_hash
        self.nlist = nlist
        self.device = "cpu"
        self._index = None  # faiss index (CPU or GPU); None for torch_exact
        self._gpu_res = None  # the GPU resources the faiss index is on; None on the CPU
        self._emb = None  # torch tensor [N, d] for torch_exact
        self._exact = None  # torch_exact copy of a GPU faiss index, for searches deeper than GPU_MAX_K

    # ---- construction -------------------------------------------------
    @classmethod
    def build(cls, embeddings, ids, cfg: Optional[RetrievalConfig] = None,
              model_hash: str = "") -> "ItemIndex":
        """Index embeddings [N, d] (float32) under item ids [N] (int64, any unique values >= 0)."""
        cfg = cfg or RetrievalConfig()
        x = _as_embeddings(embeddings)
        item_ids = _as_ids(ids, x.shape[0])
        kind = _resolve_kind(cfg, x.shape[0])
        if kind == "torch_exact":
            self = cls(cfg, kind, item_ids, x.shape[1], model_hash)
            self._place_torch(x)
            return self
        index, nlist = _build_faiss(kind, x, cfg)
        self = cls(cfg, kind, item_ids, x.shape[1], model_hash, nlist)
        self._place_faiss(index)
        return self

    def _place_torch(self, x: np.ndarray):
        use_cuda = self.cfg.use_gpu and torch.cuda.is_available()
        self.device = "cuda" if use_cuda else "cpu"
        # copy=True: on the CPU the tensor would otherwise alias the caller's array.
        self._emb = torch.from_numpy(x).to(self.device, copy=True)

    def _place_faiss(self, index):
        self._index = index
        self.device = "cpu"
        if self.cfg.use_gpu and faiss_gpu_available():
            # The current device, not GPU 0: under torchrun each rank has its own (dist.py sets it).
            device = torch.cuda.current_device()
            res = gpu_resources(device)
            try:
                self._index = faiss.index_cpu_to_gpu(res, device, index)
            except RuntimeError as err:
                # Some settings (e.g. large pq_m) have no GPU kernel; CPU still works.
                reason = (str(err).strip().splitlines() or ["unknown error"])[0]
                warnings.warn(f"faiss {self.kind} index stays on the CPU, "
                              f"GPU copy failed: {reason}")
            else:
                self._gpu_res = res
                self.device = "cuda"
        self.set_nprobe(self.cfg.nprobe)

    # ---- search -------------------------------------------------------
    def set_nprobe(self, nprobe: int):
        """Lists visited per query by an IVF index (clamped to nlist); no-op otherwise."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self.cfg = dataclasses.replace(self.cfg, nprobe=int(nprobe))
        if self.kind not in IVF_KINDS:
            return
        effective = min(int(nprobe), self.nlist)
        if self._gpu_res is not None:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", effective)
        else:
            faiss.extract_index_ivf(self._index).nprobe = effective

    def search(self, queries, k: Optional[int] = None,
               batch_size: int = 16384) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product for queries [Q, d] (numpy or torch, any float dtype).

        Returns (scores float32 [Q, k], ids int64 [Q, k]), best first; where fewer
        than k items are found the id is -1 and the score -inf. On a GPU faiss
        index, k > GPU_MAX_K searches an exact torch copy of the index's vectors.
        """
        k = self.cfg.k if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._gpu_res is not None and k > GPU_MAX_K:
            return self._exact_copy().search(queries, k, batch_size)
        q = _float32(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape [Q, {self.dim}], got {q.shape}")
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        if self._emb is not None:
            # A [batch, N] score matrix is the peak memory; bound it, not the query count.
            batch_size = max(1, min(batch_size, TORCH_SCORE_ELEMENTS // self.n_items))
        for start in range(0, q.shape[0], batch_size):
            part = slice(start, start + batch_size)
            s, r = self._search_rows(q[part], k)
            scores[part, :s.shape[1]] = s
            rows[part, :r.shape[1]] = r
        found = rows >= 0
        scores[~found] = -np.inf
        item_ids = np.where(found, self.ids[np.where(found, rows, 0)], -1)
        return scores, item_ids

    def _search_rows(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Search one batch q [B, d]; returns (scores [B, k'], row positions [B, k'])."""
        if self._emb is None:
            return self._index.search(q, k)
        k_eff = min(k, self.n_items)
        # fp32 whatever autocast the caller runs under (a cold user's neighbour search inside the
        # runner's bf16 autocast): bf16 scores would reorder close neighbours, and numpy has no bf16.
        with torch.no_grad(), torch.autocast(self._emb.device.type, enabled=False):
            qt = torch.from_numpy(q).to(self._emb.device)
            vals, rows = torch.topk(qt @ self._emb.T, k_eff, dim=1)
        return vals.cpu().numpy(), rows.cpu().numpy().astype(np.int64)

    def _exact_copy(self) -> "ItemIndex":
        """A torch_exact ItemIndex over the vectors this GPU faiss index stores (IVF-PQ: their
        decoded codes), built on the first search deeper than GPU_MAX_K and kept: retrieval asks
        the same depth for every query batch. It holds [N, d] float32 on the current device."""
        if self._exact is None:
            cpu = faiss.index_gpu_to_cpu(self._index)
            if self.kind in IVF_KINDS:
                # IVF indexes can only reconstruct a row once they have its id -> list map.
                faiss.extract_index_ivf(cpu).make_direct_map()
            vectors = cpu.reconstruct_n(0, cpu.ntotal)
            self._exact = ItemIndex.build(vectors, self.ids, dataclasses.replace(self.cfg, index_type="torch_exact"),
                                          self.model_hash)
        return self._exact

    # ---- persistence --------------------------------------------------
    def save(self, path_dir: str):
        """Write index.faiss (or embeddings.npy for torch_exact), ids.npy and meta.json."""
        os.makedirs(path_dir, exist_ok=True)
        if self._emb is not None:
            np.save(os.path.join(path_dir, EMB_FILE), self._emb.cpu().numpy())
        else:
            cpu_index = self._index
            if self._gpu_res is not None:
                cpu_index = faiss.index_gpu_to_cpu(self._index)
            faiss.write_index(cpu_index, os.path.join(path_dir, FAISS_FILE))
        np.save(os.path.join(path_dir, IDS_FILE), self.ids)
        write_meta(path_dir, dict(config=dataclasses.asdict(self.cfg), index_kind=self.kind, nlist=self.nlist,
                                  dim=self.dim, n_items=self.n_items, model_hash=self.model_hash,
                                  metric="inner_product", faiss_version=faiss.__version__))

    @classmethod
    def load(cls, path_dir: str, expected_dim: Optional[int] = None,
             expected_n_items: Optional[int] = None,
             expected_model_hash: Optional[str] = None,
             use_gpu: Optional[bool] = None) -> "ItemIndex":
        """Load a saved index; raise IndexMismatchError if an expected value differs.

        use_gpu: None keeps the saved config's choice.
        """
        meta = read_meta(path_dir)
        check_expected(path_dir, meta, expected_dim, expected_n_items, expected_model_hash)
        cfg = RetrievalConfig(**meta["config"])
        if use_gpu is not None:
            cfg = dataclasses.replace(cfg, use_gpu=use_gpu)
        ids = np.load(existing(path_dir, IDS_FILE))
        check_size(path_dir, IDS_FILE, ids.shape[0], meta["n_items"])
        self = cls(cfg, meta["index_kind"], ids.astype(np.int64), int(meta["dim"]),
                   meta["model_hash"], int(meta["nlist"]))
        if self.kind == "torch_exact":
            emb = np.load(existing(path_dir, EMB_FILE))
            check_size(path_dir, EMB_FILE, emb.shape[0], meta["n_items"])
            self._place_torch(np.ascontiguousarray(emb, dtype=np.float32))
        else:
            index = faiss.read_index(existing(path_dir, FAISS_FILE))
            check_size(path_dir, FAISS_FILE, index.ntotal, meta["n_items"])
            self._place_faiss(index)
        return self

    def __repr__(self):
        return (f"ItemIndex(kind={self.kind!r}, n_items={self.n_items}, dim={self.dim}, "
                f"nlist={self.nlist}, nprobe={self.cfg.nprobe}, device={self.device!r})")
