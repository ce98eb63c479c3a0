"""Tests for collm_faissret.retrieval.index (CPU only, a few seconds)."""
import numpy as np
import pytest

from collm_faissret.retrieval import IndexMismatchError, ItemIndex, RetrievalConfig, auto_nlist, embedding_hash


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
