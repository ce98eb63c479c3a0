"""Tests for collm_faissret.retrieval.index (CPU only, a few seconds)."""
import faiss
import numpy as np
import pytest
import torch

import collm_faissret.retrieval.faiss_gpu as faiss_gpu_module
from collm_faissret.retrieval import IndexMismatchError, ItemIndex, RetrievalConfig, auto_nlist, embedding_hash
from collm_faissret.retrieval.faiss_gpu import GPU_TEMP_MEMORY
from collm_faissret.retrieval.index import GPU_MAX_K


def clustered(n, dim, centers, seed, spread=0.3):
    """Gaussian-mixture vectors [n, dim], L2-normalised, like learned embeddings."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(1234).standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found, truth):
    """Fraction of the true top-k ids [Q, k] present in found [Q, k]."""
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


def brute_force(x, ids, q, k):
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture(scope="module")
def small():
    """Random vectors [300, 16], non-contiguous ids, queries [20, 16]."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    ids = rng.choice(10 ** 9, size=300, replace=False).astype(np.int64)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    return x, ids, q


def test_flat_equals_numpy_brute_force(small):
    x, ids, q = small
    index = ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False))
    scores, found = index.search(q, 10)
    want_scores, want_ids = brute_force(x, ids, q, 10)
    assert found.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_ids_map_non_contiguous_and_pad_with_minus_one(small):
    x, _, q = small
    ids_few = np.array([1000, 7, 42], dtype=np.int64)
    _, want = brute_force(x[:3], ids_few, q, 3)
    for kind in ("flat", "torch_exact"):
        index = ItemIndex.build(x[:3], ids_few, RetrievalConfig(index_type=kind, use_gpu=False))
        scores, found = index.search(q, 5)  # k > n_items: the tail is padding
        np.testing.assert_array_equal(found[:, :3], want)
        assert (found[:, 3:] == -1).all()
        assert np.isneginf(scores[:, 3:]).all()


def test_torch_exact_equals_flat(small):
    x, ids, q = small
    flat = ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False))
    exact = ItemIndex.build(x, ids, RetrievalConfig(index_type="torch_exact", use_gpu=False))
    s_flat, i_flat = flat.search(q, 10)
    s_exact, i_exact = exact.search(q, 10, batch_size=7)  # several batches
    np.testing.assert_array_equal(i_exact, i_flat)
    np.testing.assert_allclose(s_exact, s_flat, rtol=1e-5, atol=1e-5)


def test_ivf_recall_against_flat():
    x = clustered(20000, 32, centers=200, seed=1)
    q = clustered(300, 32, centers=200, seed=2)
    ids = np.arange(20000, dtype=np.int64) * 5 + 3
    flat = ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False))
    ivf = ItemIndex.build(x, ids, RetrievalConfig(index_type="ivf_flat", nprobe=8, use_gpu=False))
    assert ivf.kind == "ivf_flat" and ivf.nlist == auto_nlist(20000)
    _, truth = flat.search(q, 10)
    _, found = ivf.search(q, 10)
    assert recall(found, truth) >= 0.9


def test_ivf_pq_returns_catalog_ids():
    x = clustered(5000, 32, centers=50, seed=3)
    ids = np.arange(5000, dtype=np.int64) + 10 ** 6
    cfg = RetrievalConfig(index_type="ivf_pq", nlist=32, nprobe=8, pq_m=16, use_gpu=False)
    _, found = ItemIndex.build(x, ids, cfg).search(x[:100], 10)
    assert np.isin(found, ids).all()
    # PQ codes are lossy, so only ask that an item usually retrieves itself.
    assert (found == ids[:100, None]).any(axis=1).mean() >= 0.7


def test_auto_picks_flat_below_threshold_and_ivf_above():
    x = clustered(2000, 16, centers=20, seed=4)
    ids = np.arange(2000)
    below = ItemIndex.build(x, ids, RetrievalConfig(flat_threshold=5000, use_gpu=False))
    above = ItemIndex.build(x, ids, RetrievalConfig(flat_threshold=1000, use_gpu=False))
    assert below.kind == "flat"
    assert above.kind == "ivf_flat"
    assert above.nlist * 39 <= 2000  # auto nlist keeps >= 39 training points per list


def test_auto_nlist_rule():
    assert auto_nlist(1_000_000) == 4096
    assert auto_nlist(100_000) == 1024
    assert auto_nlist(1_000_000, n_train=100_000) == 2048  # 4096 lists would get < 39 each


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "torch_exact"])
def test_save_load_round_trip(tmp_path, small, kind):
    x, ids, q = small
    cfg = RetrievalConfig(index_type=kind, nlist=4, nprobe=2, use_gpu=False)
    index = ItemIndex.build(x, ids, cfg, model_hash=embedding_hash(x))
    index.save(str(tmp_path))
    loaded = ItemIndex.load(str(tmp_path), expected_dim=16, expected_n_items=300,
                            expected_model_hash=embedding_hash(x))
    assert (loaded.kind, loaded.nlist, loaded.cfg.nprobe) == (index.kind, index.nlist, 2)
    for got, want in zip(loaded.search(q, 10), index.search(q, 10)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("field, kwargs", [
    ("dim", dict(expected_dim=32)),
    ("n_items", dict(expected_n_items=301)),
    ("model_hash", dict(expected_model_hash="0123456789abcdef")),
])
def test_load_mismatch_names_field(tmp_path, small, field, kwargs):
    x, ids, _ = small
    ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False),
                    model_hash="feedfacefeedface").save(str(tmp_path))
    with pytest.raises(IndexMismatchError, match=field) as err:
        ItemIndex.load(str(tmp_path), **kwargs)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_load_missing_file_names_it(tmp_path, small):
    x, ids, _ = small
    ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False)).save(str(tmp_path))
    (tmp_path / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        ItemIndex.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="meta.json"):
        ItemIndex.load(str(tmp_path / "nowhere"))


def test_bad_inputs_raise_clear_errors(small):
    x, ids, q = small
    with pytest.raises(ValueError, match="index_type"):
        RetrievalConfig(index_type="hnsw")
    with pytest.raises(ValueError, match="duplicates"):
        ItemIndex.build(x[:2], np.array([5, 5]), RetrievalConfig(use_gpu=False))
    index = ItemIndex.build(x, ids, RetrievalConfig(index_type="flat", use_gpu=False))
    with pytest.raises(ValueError, match=r"\[Q, 16\]"):
        index.search(q[:, :8], 10)


def test_embedding_hash_is_short_and_content_based(small):
    x, _, _ = small
    assert embedding_hash(x) == embedding_hash(x.astype(np.float64))
    assert embedding_hash(x) != embedding_hash(x + 1e-3)
    assert len(embedding_hash(x)) == 16


def test_torch_exact_searches_in_fp32_under_bf16_autocast(small):
    """Under the runner's bf16 autocast the exact torch search still scores in fp32 (same ids and
    scores as without autocast), and takes bf16 tensor queries."""
    x, ids, q = small
    index = ItemIndex.build(x, ids, RetrievalConfig(index_type="torch_exact", use_gpu=False))
    want_scores, want_ids = index.search(q, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, found = index.search(q, 10)
        _, found_bf16 = index.search(torch.from_numpy(q).bfloat16(), 10)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    # a bf16 query is searched as its fp32 value
    _, want_bf16 = index.search(torch.from_numpy(q).bfloat16().float().numpy(), 10)
    np.testing.assert_array_equal(found_bf16, want_bf16)


class FakeGpuResources:
    """Stands in for faiss.StandardGpuResources: records the temporary memory asked for."""

    def __init__(self):
        self.temp_memory = None  # None: faiss's default (18% of the card, up to 1.5 GiB)

    def setTempMemory(self, size):  # noqa: N802 (faiss's name)
        self.temp_memory = size


class FakeGpuIndex:
    """A "GPU" copy of a CPU faiss index: answers with the CPU index, recording each search's k,
    and refuses k > GPU_MAX_K as faiss-gpu's kernels do."""

    def __init__(self, res, device, cpu_index):
        self.res, self.device, self.cpu_index, self.ks = res, device, cpu_index, []

    def search(self, q, k):
        if k > GPU_MAX_K:
            raise RuntimeError(f"k {k} above the GPU limit")
        self.ks.append(k)
        return self.cpu_index.search(q, k)


class FakeGpuParameterSpace:
    def set_index_parameter(self, index, name, value):
        faiss.ParameterSpace().set_index_parameter(index.cpu_index, name, value)


@pytest.fixture
def fake_gpu(monkeypatch):
    """faiss-gpu faked on a CPU machine whose current CUDA device is 3; returns the list of
    indexes placed on the "GPU"."""
    placed = []

    def index_cpu_to_gpu(res, device, index):
        placed.append(FakeGpuIndex(res, device, index))
        return placed[-1]

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeGpuResources, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", FakeGpuParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: index.cpu_index, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(faiss_gpu_module, "_GPU_RESOURCES", {})  # none made before this test
    return placed


def test_faiss_gpu_indexes_share_the_current_devices_resources(small, fake_gpu, monkeypatch):
    """Indexes go to the current CUDA device (a torchrun rank's own, not GPU 0) and share that
    device's one resources object, whose temporary memory is bounded."""
    x, ids, q = small
    assert faiss_gpu_module.faiss_gpu_available()  # the module's own check sees the fake GPUs
    first = ItemIndex.build(x, ids, RetrievalConfig(index_type="flat"))
    second = ItemIndex.build(x, ids, RetrievalConfig(index_type="ivf_flat", nlist=4, nprobe=4))
    assert (first.device, second.device) == ("cuda", "cuda")
    assert [p.device for p in fake_gpu] == [3, 3]
    assert fake_gpu[0].res is fake_gpu[1].res
    assert fake_gpu[0].res.temp_memory == GPU_TEMP_MEMORY <= 256 * 2 ** 20
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    ItemIndex.build(x, ids, RetrievalConfig(index_type="flat"))
    assert fake_gpu[2].device == 1 and fake_gpu[2].res is not fake_gpu[0].res  # one per device
    scores, found = first.search(q, 10)
    assert fake_gpu[0].ks == [10]  # searched on the "GPU"
    want_scores, want_ids = brute_force(x, ids, q, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat"])
def test_search_deeper_than_the_gpu_limit_goes_to_exact_torch(fake_gpu, kind):
    """k = GPU_MAX_K is searched on the GPU index; a deeper k (retrieval asks k + the most seen
    items) by an exact torch copy of the index's vectors, with the exact answer."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((GPU_MAX_K + 500, 8)).astype(np.float32)
    ids = rng.choice(10 ** 9, size=x.shape[0], replace=False).astype(np.int64)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    index = ItemIndex.build(x, ids, RetrievalConfig(index_type=kind, nlist=16, nprobe=16))
    index.search(q, GPU_MAX_K)
    deep = GPU_MAX_K + 100
    scores, found = index.search(q, deep)
    assert fake_gpu[0].ks == [GPU_MAX_K]  # the deep search never reached the GPU index
    assert index._exact.kind == "torch_exact"
    want_scores, want_ids = brute_force(x, ids, q, deep)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
