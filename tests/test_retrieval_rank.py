"""Retrieve-then-rank and cold-start borrowing on hand-sized toys, checked against hand-computed values.

Toy data (3 users, items 1..6, 2-d MF vectors set by hand):
  train: user 1 liked 1, 2 (disliked 5); user 2 liked 4, 3, 2; user 3 is cold (test only).
  test positives: user 1 {3, 4}, user 2 {6}, user 3 {4}; item 6 is cold (not in train).
"""
import contextlib
import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

import collm_faissret.models.cf.borrowing as borrowing_module
import train_collm
from collm_faissret.config import Config
from collm_faissret.config_loader import load_config
from collm_faissret.datasets import load_interactions
from collm_faissret.datasets.sampler import eval_batches
from collm_faissret.metrics import auc_report
from collm_faissret.models.cf import CFConfig, attach_scoring_view
from collm_faissret.models.cf.borrowing import fit_history_map, history_bag, similarity_weighted_mean
from collm_faissret.models.cf.cold_start import ColdItemsCF, ColdStartCF, with_cold_start
from collm_faissret.models.cf.cold_start_config import ColdStartConfig, ColdStartError
from collm_faissret.models.cf.din import DIN, DINConfig
from collm_faissret.models.cf.mf import MF
from collm_faissret.models.cf.personalized_prompt import PersonalizedPrompt
from collm_faissret.models.cf.sasrec import SASRec, SASRecConfig
from collm_faissret.retrieval.index import ItemIndex, RetrievalConfig
from collm_faissret.retrieval.ranking import grouped_metrics, rerank
from collm_faissret.tasks import CFTask
from collm_faissret.tasks.retrieve_rank import RetrieveRankTask

TITLES = {1: "Star Wars (1977)", 2: "Toy Story (1995)", 3: "Heat (1995)", 4: "Alien (1979)",
          5: "Fargo (1996)", 6: "Star Wars Returns (1983)"}
ITEMS = np.array([[0, 0], [1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, -0.1], [0.5, 0.5]], dtype=np.float32)
USERS = np.array([[0, 0], [1, 0], [0, 1], [-1, 0.2]], dtype=np.float32)
IDF_RARE = math.log(3 / 2) + 1  # ln((1 + 2 warm users) / (1 + df 1)) + 1; item 2 (df 2) gets exactly 1


def _rows(rows):
    """(uid, iid, label, ts, his) tuples -> a CoLLM-format DataFrame."""
    out = []
    for uid, iid, label, ts, his in rows:
        his = [0] + his
        out.append({"uid": uid, "iid": iid, "label": label, "timestamp": ts, "his": np.array(his),
                    "his_title": [""] + [TITLES[i] for i in his[1:]], "title": TITLES[iid], "flag": 1.0,
                    "not_cold": int(uid in (1, 2) and iid != 6)})
    return pd.DataFrame(out)


@pytest.fixture
def toy(tmp_path):
    """Data dir, loaded InteractionData and an MF with the hand-set vectors."""
    splits = {
        "train": [(1, 1, 1, 1, []), (1, 2, 1, 2, [1]), (1, 5, 0, 3, [1, 2]),
                  (2, 4, 1, 1, []), (2, 3, 1, 2, [4]), (2, 2, 1, 3, [4, 3])],
        "valid": [(2, 5, 0, 5, [4, 3, 2])],
        "test": [(1, 6, 0, 10, [1, 2]), (1, 3, 1, 11, [1, 2]), (1, 4, 1, 12, [1, 2, 3]),
                 (2, 6, 1, 10, [4, 3, 2]), (2, 1, 0, 11, [4, 3, 2, 6]),
                 (3, 4, 1, 10, [2]), (3, 1, 0, 11, [2, 4])],
    }
    for name, rows in splits.items():
        _rows(rows).to_pickle(tmp_path / f"{name}_ood2.pkl")
    data = load_interactions(str(tmp_path), {s: f"{s}_ood2" for s in splits})
    mf = MF(data.n_users, data.n_items, CFConfig(embedding_size=2))
    with torch.no_grad():
        mf.user.weight.copy_(torch.from_numpy(USERS))
        mf.item.weight.copy_(torch.from_numpy(ITEMS))
    ckpt = tmp_path / "mf.pth"
    torch.save({"model": mf.state_dict()}, ckpt)
    return SimpleNamespace(path=tmp_path, data=data, mf=mf.eval(), ckpt=ckpt)


def _cfg_file(toy, model_extra="", retrieval_extra=""):
    lines = ["model: {arch: MF, rec_config: {embedding_size: 2}, ckpt: %s%s}" % (toy.ckpt, model_extra),
             "datasets: {movielens_ood: {path: %s}}" % toy.path,
             "run: {task: retrieve_rank, evaluate: true, output_dir: %s, valid_splits: [], device: cpu}"
             % (toy.path / "out"),
             "retrieval: {k: 3, metric_ks: [1, 3]%s}" % retrieval_extra]
    path = toy.path / "rr.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# Hand ranking (seen = training items + query-row history removed; k = 3):
#   user 1 (1, 0):     1 .8 .6 .5 0 -1 for items 1 2 3 6 4 5, seen {1,2,5} -> [3, 6, 4], relevant {3, 4}
#   user 2 (0, 1):     items 4 3 2 6 1 5, seen {2,3,4}               -> [6, 1, 5], relevant {6}
#   user 3 (-1, .2):   items 5 4 6 3 2 1, seen {2}                   -> [5, 4, 6], relevant {4}
CANDIDATES = [[3, 6, 4], [6, 1, 5], [5, 4, 6]]
L3 = 1 / math.log2(3)
NDCG3_USER1 = (1 + 1 / math.log2(4)) / (1 + L3)


def test_retrieval_metrics_match_hand_values(toy):
    assert train_collm.main(["--cfg-path", _cfg_file(toy)]) == 0
    metrics = json.loads((toy.path / "out" / "metrics.json").read_text())["test"]
    r = metrics["retrieval"]
    assert r["n_users"] == 3 and metrics["llm_calls"] == 0
    assert r["recall@3"] == pytest.approx(1.0)
    assert r["ndcg@3"] == pytest.approx((NDCG3_USER1 + 1 + L3) / 3)
    assert r["hit_rate@3"] == pytest.approx(1.0)
    assert r["recall@1"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["ndcg@1"] == pytest.approx(2 / 3)
    assert r["hit_rate@1"] == pytest.approx(2 / 3)
    assert r["cold_users"]["n_users"] == 1 and r["cold_users"]["ndcg@3"] == pytest.approx(L3)
    assert metrics["reranked"]["ndcg@3"] == pytest.approx(r["ndcg@3"])  # no LLM: same order


def test_reranking_by_llm_scores_matches_hand_values(toy):
    cfg = load_config(_cfg_file(toy))
    task = RetrieveRankTask(cfg)
    task.load_data()
    model = task.build_model(torch.device("cpu"))
    ds = task.build_datasets(model)["test"]
    assert ds.ranking["cand"].tolist() == CANDIDATES
    # LLM scores per candidate, re-ranked by hand: user 1 {3: .1, 6: .9, 4: .5} -> 6, 4, 3;
    # user 2 {6: .2, 1: .1, 5: .3} -> 5, 6, 1; user 3 {5: 0, 4: .7, 6: .7} (tie keeps 4 first) -> 4, 6, 5.
    llm = {(1, 3): .1, (1, 6): .9, (1, 4): .5, (2, 6): .2, (2, 1): .1, (2, 5): .3, (3, 5): 0., (3, 4): .7, (3, 6): .7}
    scores = np.array([llm[(int(u), int(i))] for u, i in zip(ds.uid, ds.iid)])
    out = task.report(ds, np.arange(len(ds)), scores)
    rr = out["reranked"]
    assert rr["recall@1"] == pytest.approx((0 + 0 + 1) / 3)
    assert rr["ndcg@3"] == pytest.approx(((L3 + 1 / math.log2(4)) / (1 + L3) + L3 + 1) / 3)
    assert rr["recall@3"] == pytest.approx(out["retrieval"]["recall@3"])  # same candidate set


def test_rerank_and_metrics_pure():
    cand = np.array([[2, 3, -1], [7, 8, 9]])
    order = rerank(cand, np.array([[0.1, 0.2, 5.0], [0.3, 0.3, 0.9]]))
    assert order.tolist() == [[3, 2, -1], [9, 7, 8]]  # pads last, ties keep retrieval order
    m = grouped_metrics(order, [{2}, {8}], [2], np.array([False, True]))
    assert m["ndcg@2"] == pytest.approx((L3 + 0) / 2)
    assert m["cold_users"]["hit_rate@2"] == 0.0 and m["warm_users"]["recall@2"] == 1.0


def test_similarity_weighted_mean_small_arrays():
    reprs = np.array([[1, 0], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    index = ItemIndex.build(reprs, np.array([0, 1, 2]), RetrievalConfig(index_type="flat"))
    table = np.array([[1, 2], [3, 4], [100, 100]], dtype=np.float32)
    queries = np.array([[0.8, 0.6], [0, -1]], dtype=np.float32)
    out = similarity_weighted_mean(index, queries, table, 3, fallback=np.array([-7, -7], dtype=np.float32))
    # query 1: sims 0.8, 0.96, -0.8 (negative -> weight 0): (0.8*[1,2] + 0.96*[3,4]) / 1.76
    np.testing.assert_allclose(out[0], (0.8 * table[0] + 0.96 * table[1]) / 1.76, rtol=1e-6)
    # query 2: sims 0, -0.8, 0 -> nothing positive -> fallback
    np.testing.assert_allclose(out[1], [-7, -7])


def test_cold_user_borrows_tfidf_neighbours(toy):
    cs = ColdStartConfig(enabled=True, n_neighbors=2, cold_items=False)
    cf = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig())
    # Warm documents: user 1 {1, 2}, user 2 {2, 3, 4}; idf 1 for item 2 (both), IDF_RARE otherwise.
    u1 = np.array([IDF_RARE, 1, 0, 0]) / math.hypot(IDF_RARE, 1)
    u2 = np.array([0, 1, IDF_RARE, IDF_RARE]) / math.sqrt(1 + 2 * IDF_RARE ** 2)
    q = np.array([0, 1, 0, IDF_RARE]) / math.hypot(1, IDF_RARE)  # cold user 3 with history {2, 4}
    s1, s2 = q @ u1, q @ u2
    expected = (s1 * USERS[1] + s2 * USERS[2]) / (s1 + s2)
    batch = {"uid": torch.tensor([3, 1]), "his": torch.tensor([[0, 2, 4], [0, 1, 2]]), "iid": torch.tensor([1, 1])}
    got = cf.user_embed(batch).numpy()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    np.testing.assert_allclose(got[1], USERS[1])  # warm user untouched with warm_alpha 0


def test_history_mix_and_warm_blend(toy):
    cs = ColdStartConfig(enabled=True, neighbors_weight=0, history_weight=1, global_weight=1, warm_alpha=0.5,
                         cold_items=False)
    cf = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig())
    batch = {"uid": torch.tensor([3, 1]), "his": torch.tensor([[0, 2, 4], [0, 1, 2]]), "iid": torch.tensor([1, 1])}
    got = cf.user_embed(batch).numpy()
    hist = (ITEMS[2] + ITEMS[4]) / 2
    mean_warm = (USERS[1] + USERS[2]) / 2
    np.testing.assert_allclose(got[0], (hist + mean_warm) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1], 0.5 * USERS[1] + 0.5 * (ITEMS[1] + ITEMS[2]) / 2, rtol=1e-6)


def test_cold_item_borrows_nearest_title(toy):
    cs = ColdStartConfig(enabled=True, item_neighbors=1, title_dim=0)
    cf = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig())
    items = cf.item_embed(torch.arange(7)).numpy()
    np.testing.assert_allclose(items[6], ITEMS[1])  # "Star Wars Returns (1983)" -> "Star Wars (1977)"
    np.testing.assert_allclose(items[:6], ITEMS[:6])  # warm items keep their vectors


def test_switch_off_keeps_original_embeddings(toy):
    assert with_cold_start(toy.mf, toy.data, ColdStartConfig(), RetrievalConfig()) is toy.mf
    cs = ColdStartConfig(enabled=True, cold_items=False)
    cf = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig())
    batch = {"uid": torch.tensor([1, 2, 2]), "his": torch.tensor([[0, 1, 2]] * 3), "iid": torch.tensor([3, 5, 6])}
    torch.testing.assert_close(cf.score(batch), toy.mf.score(batch))  # warm users, alpha 0: unchanged


def test_models_without_tables_are_refused(toy):
    pp = PersonalizedPrompt(toy.data.n_users, toy.data.n_items, CFConfig(embedding_size=2))
    with pytest.raises(ColdStartError, match="model.cold_start.enabled: personalized_prompt"):
        with_cold_start(pp, toy.data, ColdStartConfig(enabled=True), RetrievalConfig())
    sas = SASRec(toy.data.n_users, toy.data.n_items, SASRecConfig(embedding_size=2, n_heads=1))
    with pytest.raises(ColdStartError, match="no per-user table"):
        ColdStartCF(sas, toy.data, ColdStartConfig(enabled=True), RetrievalConfig())
    with pytest.raises(ColdStartError, match="model.cold_start.user_repr"):
        ColdStartCF(toy.mf, toy.data, ColdStartConfig(enabled=True, user_repr="bm25"), RetrievalConfig())
    with pytest.raises(ColdStartError, match="model.cold_start.map_ridge"):
        ColdStartConfig(enabled=True, map_ridge=0.0)


def test_history_bag_rows():
    x = history_bag(np.array([[0, 2, 4], [0, 0, 0]]), 5).toarray()
    np.testing.assert_allclose(x, [[0, 0, 0.5, 0, 0.5, 1], [0, 0, 0, 0, 0, 1]])


def _expected_map(ridge, history_len=50):
    """The history map of the toy by hand: bags of the 6 training rows -> their users' vectors."""
    his = [[], [1], [1, 2], [], [4], [4, 3]]
    uid = [1, 1, 1, 2, 2, 2]
    x = np.zeros((6, 8))
    for r, h in enumerate(his):
        h = h[-history_len:]
        x[r, h] = 1.0 / len(h) if h else 0.0
        x[r, 7] = 1.0
    y = USERS[uid]
    return np.linalg.solve(x.T @ x + ridge * np.eye(8), x.T @ y)


def test_cold_user_vector_follows_its_history(toy):
    """With the history map, a cold user's vector is bag(history) @ W (W fitted on warm rows), so
    it changes when the history does; a warm user keeps its own vector (warm_alpha 0)."""
    cs = ColdStartConfig(enabled=True, neighbors_weight=0, map_weight=1, map_ridge=0.5, cold_items=False)
    cf = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig())
    w = _expected_map(0.5)
    batch = {"uid": torch.tensor([3, 3, 1, 1]), "his": torch.tensor([[0, 2, 4], [0, 0, 1], [0, 1, 2], [0, 0, 4]]),
             "iid": torch.tensor([1, 1, 1, 1])}
    got = cf.user_embed(batch).numpy()
    np.testing.assert_allclose(got[0], 0.5 * w[2] + 0.5 * w[4] + w[7], rtol=1e-5)
    np.testing.assert_allclose(got[1], w[1] + w[7], rtol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # another history, another vector
    np.testing.assert_allclose(got[2], USERS[1])  # warm: its own vector, whatever its history
    np.testing.assert_allclose(got[3], USERS[1])


def test_warm_user_moves_only_with_warm_alpha(toy):
    batch = {"uid": torch.tensor([1, 1]), "his": torch.tensor([[0, 1, 2], [0, 0, 4]]), "iid": torch.tensor([1, 1])}
    for alpha in (0.0, 0.25):
        cs = ColdStartConfig(enabled=True, map_weight=1, warm_alpha=alpha, cold_items=False)
        got = ColdStartCF(toy.mf, toy.data, cs, RetrievalConfig()).user_embed(batch).numpy()
        np.testing.assert_allclose(got[0], (1 - alpha) * USERS[1] + alpha * (ITEMS[1] + ITEMS[2]) / 2, rtol=1e-6)
        np.testing.assert_allclose(got[1], (1 - alpha) * USERS[1] + alpha * ITEMS[4], rtol=1e-6)


def test_history_map_conjugate_gradients_match_direct_solve(monkeypatch):
    rng = np.random.default_rng(0)
    his = rng.integers(0, 40, size=(300, 6))
    x = history_bag(his, 40)
    y = rng.standard_normal((300, 3)).astype(np.float32)
    direct = fit_history_map(x, y, 0.3)
    monkeypatch.setattr(borrowing_module, "DIRECT_SOLVE_MAX", 0)
    np.testing.assert_allclose(fit_history_map(x, y, 0.3), direct, atol=1e-4)
    xd = x.toarray().astype(np.float64)
    np.testing.assert_allclose(direct, np.linalg.solve(xd.T @ xd + 0.3 * np.eye(41), xd.T @ y), atol=1e-4)


@pytest.mark.parametrize("arch", ["SASRec", "DIN"])
def test_history_models_get_cold_items_only(toy, arch):
    if arch == "SASRec":
        model = SASRec(toy.data.n_users, toy.data.n_items, SASRecConfig(embedding_size=2, n_heads=1, item_bias=True))
    else:
        model = DIN(toy.data.n_users, toy.data.n_items, DINConfig(embedding_size=2, item_bias=True))
    model.eval()
    with torch.no_grad():
        model.item_bias.copy_(torch.arange(7, dtype=torch.float32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cf = with_cold_start(model, toy.data, ColdStartConfig(enabled=True, item_neighbors=1, title_dim=0),
                         RetrievalConfig())
    assert isinstance(cf, ColdItemsCF)
    items = cf.item_embed(torch.arange(7))
    # "Star Wars Returns (1983)" (cold) borrows "Star Wars (1977)"'s row and bias; warm rows stay.
    torch.testing.assert_close(items[6], model.item.weight[1])
    torch.testing.assert_close(items[:6], model.item.weight[:6])
    assert float(cf.scorer.item_bias[6]) == 1.0
    for k, v in model.state_dict().items():  # the wrapped model itself is untouched
        torch.testing.assert_close(v, before[k])
    batch = {"uid": torch.tensor([1, 2]), "his": torch.tensor([[0, 1, 2], [4, 3, 2]]), "iid": torch.tensor([3, 6])}
    scored = cf.score(batch)
    torch.testing.assert_close(scored[0], model.score(batch)[0])  # a warm item scores as before
    assert cf.saved_state_dict().keys() == model.saved_state_dict().keys()


def _held_tensors(module):
    """Every tensor ``module`` and what it holds keep: parameters, buffers and plain tensor
    attributes, through registered submodules and modules kept as plain attributes alike."""
    seen, stack, out = set(), [module], []
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        values = [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]
        out += [v for v in values if isinstance(v, torch.Tensor)]
        stack += [*m._modules.values(), *(v for v in vars(m).values() if isinstance(v, torch.nn.Module))]
    return out


@pytest.mark.parametrize("arch", ["MF", "SASRec", "DIN"])
def test_cold_start_views_move_with_the_model_and_keep_its_names(toy, arch):
    """A cold-start view adds no parameter or state_dict entry (checkpoints keep the wrapped model's
    names), ``.to`` moves everything it computes with (FSDP places the same registered tensors), and
    its vectors come in the dtype of the wrapped model's parameters: bf16 when FSDP's CUDA policy
    hands the forward bf16 parameters, as the projector beside it gets, the borrowed fp32 vectors
    rounded once."""
    torch.manual_seed(0)
    if arch == "MF":
        base = MF(toy.data.n_users, toy.data.n_items, CFConfig(embedding_size=2, item_bias=True))
        base.load_state_dict(toy.mf.state_dict(), strict=False)
        cs = ColdStartConfig(enabled=True, n_neighbors=2, item_neighbors=1, title_dim=0)
    elif arch == "SASRec":
        base = SASRec(toy.data.n_users, toy.data.n_items, SASRecConfig(embedding_size=2, n_heads=1, item_bias=True))
        cs = ColdStartConfig(enabled=True, item_neighbors=1, title_dim=0)
    else:
        base = DIN(toy.data.n_users, toy.data.n_items, DINConfig(embedding_size=2, item_bias=True))
        cs = ColdStartConfig(enabled=True, item_neighbors=1, title_dim=0)
    cf = with_cold_start(base.eval(), toy.data, cs, RetrievalConfig())
    assert [n for n, _ in cf.named_parameters()] == [f"base.{n}" for n, _ in base.named_parameters()]
    assert list(cf.state_dict()) == [f"base.{k}" for k in base.state_dict()]
    # user 3 and item 6 are cold
    batch = {"uid": torch.tensor([1, 3]), "his": torch.tensor([[0, 1, 2], [0, 2, 4]]), "iid": torch.tensor([3, 6])}
    with torch.no_grad():
        users, items = cf.user_embed(batch), cf.item_embed(batch["iid"])
        cf.base.bfloat16()
        assert all(p.dtype == torch.bfloat16 for p in cf.base.parameters())
        assert torch.equal(cf.user_embed(batch), users.bfloat16())
        assert torch.equal(cf.item_embed(batch["iid"]), items.bfloat16())
    cf.to("meta")
    assert all(t.device.type == "meta" for t in _held_tensors(cf))


def test_cold_start_indexes_honour_retrieval_settings(toy):
    """The neighbour indexes of cold start are built with the retrieval.* keys, not defaults."""
    cfg = load_config(_cfg_file(toy, model_extra=", cold_start: {enabled: true}",
                                retrieval_extra=", index_type: ivf_flat, nprobe: 3, use_gpu: false"))
    task = RetrieveRankTask(cfg)
    task.load_data()
    cold = task.build_model(torch.device("cpu"))
    assert isinstance(cold, ColdStartCF)
    assert (cold._user_index.kind, cold._user_index.cfg.nprobe, cold._user_index.cfg.use_gpu) == ("ivf_flat", 3, False)
    assert cold.index_cfg.nprobe == 3


def test_cold_start_scores_under_bf16_autocast_with_the_torch_index(toy):
    """MF + cold start with the exact torch index (what `auto` picks on CUDA without faiss-gpu),
    scored under bf16 autocast as the runner scores it: the cold user's neighbour search runs in
    fp32, so every score equals the fp32 run's."""
    cfg = load_config(_cfg_file(toy, model_extra=", cold_start: {enabled: true, n_neighbors: 2}",
                                retrieval_extra=", index_type: torch_exact"))
    task = RetrieveRankTask(cfg)
    task.load_data()
    cold = task.build_model(torch.device("cpu"))
    assert isinstance(cold, ColdStartCF) and cold._user_index.kind == "torch_exact"
    ds, _, fp32, _ = _predict(toy, cold)
    assert (ds.uid == 3).any()  # the cold user is scored
    _, _, bf16, _ = _predict(toy, cold, amp_ctx=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    np.testing.assert_allclose(bf16, fp32, rtol=1e-6)


def test_excluded_neighbour_is_skipped():
    reprs = np.array([[1, 0], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    index = ItemIndex.build(reprs, np.array([0, 1, 2]), RetrievalConfig(index_type="flat"))
    table = np.array([[1, 2], [3, 4], [100, 100]], dtype=np.float32)
    out = similarity_weighted_mean(index, np.array([[0.8, 0.6]], dtype=np.float32), table, 1,
                                   np.zeros(2, dtype=np.float32), exclude=np.array([1]))
    np.testing.assert_allclose(out[0], table[0])  # nearest is id 1 (0.96), excluded -> id 0 alone


def test_simulated_cold_rows_only_while_training(toy):
    cf = ColdStartCF(toy.mf, toy.data, ColdStartConfig(enabled=True, simulate_cold=1.0, cold_items=False),
                     RetrievalConfig())
    batch = {"uid": torch.tensor([1]), "his": torch.tensor([[0, 1, 2]]), "iid": torch.tensor([3])}
    np.testing.assert_allclose(cf.eval().user_embed(batch).numpy()[0], USERS[1])
    # Playing cold, user 1 may not borrow from itself: user 2 (shares item 2) is its only neighbour.
    np.testing.assert_allclose(cf.train().user_embed(batch).numpy()[0], USERS[2], rtol=1e-6)


def _predict(toy, model, batch_size=3, amp_ctx=contextlib.nullcontext):
    """(rows, scores) of every toy test row through CFTask.predict, as a baseline run scores a split
    (under ``amp_ctx``, the runner's autocast)."""
    task = CFTask(OmegaConf.merge(OmegaConf.structured(Config),
                                  {"datasets": {"movielens_ood": {"path": str(toy.path)}}}))
    task.data = toy.data
    ds = task.rows(toy.data.splits["test"], "test", model)
    model.eval()
    rows, scores = task.predict(model, ds, eval_batches(ds.lengths(), batch_size), torch.device("cpu"), amp_ctx)
    direct = {k: torch.from_numpy(v) for k, v in ds.__getitems__(np.arange(len(ds))).items()}
    return ds, rows, scores, direct


@pytest.mark.parametrize("arch", ["MF", "SASRec"])
def test_wrapped_model_scores_through_the_task(toy, arch):
    """A cold-start wrapper scored by CFTask.predict (batches of 3 of the 7 test rows) gives its own
    score() on every row; rows with a cold item (MF: or user) differ from the wrapped model's,
    the others do not."""
    if arch == "MF":
        base = toy.mf
        cs = ColdStartConfig(enabled=True, n_neighbors=2, item_neighbors=1, title_dim=0)
    else:
        torch.manual_seed(0)
        base = SASRec(toy.data.n_users, toy.data.n_items, SASRecConfig(embedding_size=2, n_heads=1,
                                                                        item_bias=True)).eval()
        cs = ColdStartConfig(enabled=True, item_neighbors=1, title_dim=0)
    cf = with_cold_start(base, toy.data, cs, RetrievalConfig())
    assert isinstance(cf, ColdStartCF if arch == "MF" else ColdItemsCF)
    ds, rows, scores, batch = _predict(toy, cf)
    np.testing.assert_array_equal(rows, np.arange(7))
    with torch.no_grad():
        own, plain = cf.score(batch).numpy(), base.score(batch).numpy()
    np.testing.assert_allclose(scores, own, rtol=1e-6)
    # Cold: item 6 and (MF only; SASRec reads users from the history) user 3.
    cold = (ds.iid == 6) | ((ds.uid == 3) if arch == "MF" else (ds.his == 6).any(1))
    assert np.abs(scores[ds.iid == 6] - plain[ds.iid == 6]).min() > 1e-4
    if arch == "MF":
        assert np.abs(scores[cold] - plain[cold]).min() > 1e-4
    np.testing.assert_allclose(scores[~cold], plain[~cold], rtol=1e-6)  # the rest as before
    if arch == "MF":
        assert scores[1] == pytest.approx(float(USERS[1] @ ITEMS[3]))  # user 1, item 3 by hand: 0.6
        # Item 6 ("Star Wars Returns") borrows item 1 ("Star Wars"): user 1 scores it 1.
        assert scores[0] == pytest.approx(float(USERS[1] @ ITEMS[1]))


def test_baseline_scoring_view_goes_through_the_task(toy):
    """A CF model being trained with cold start on (attach_scoring_view) is scored by CFTask.predict
    through its view: the wrapper's scores, not the bare model's."""
    cs = ColdStartConfig(enabled=True, n_neighbors=2, item_neighbors=1, title_dim=0)
    mf = MF(toy.data.n_users, toy.data.n_items, CFConfig(embedding_size=2))
    mf.load_state_dict(toy.mf.state_dict())
    attach_scoring_view(mf, toy.data, cs, RetrievalConfig())
    _, rows, scores, batch = _predict(toy, mf)
    with torch.no_grad():
        expected = with_cold_start(toy.mf, toy.data, cs, RetrievalConfig()).eval().score(batch).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert np.abs(scores - mf.score(batch).detach().numpy()).max() > 1e-4


def test_cold_start_sweep_scores_as_the_wrapper(toy, tmp_path, capsys, monkeypatch):
    """bench/cold_start_sweep.py end to end on the toy (an MF weight file as baseline_train.py writes
    it): its test rows are the AUCs of the bare MF's and of the chosen wrapper's own scores."""
    (tmp_path / "w" / "mf").mkdir(parents=True)
    torch.save(toy.mf.weights_payload(), tmp_path / "w" / "mf" / "cf_model.pth")
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # as when run as a script: its helpers beside it
    spec = importlib.util.spec_from_file_location("cold_start_sweep", REPO / "bench" / "cold_start_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    out = tmp_path / "rows.json"
    assert sweep.main(["--data", str(toy.path), "--weights-dir", str(tmp_path / "w"), "--models", "MF",
                       "--json", str(out)]) == 0
    off, on = json.loads(out.read_text())
    assert (off["name"], on["name"], off["test_rows"]) == ("MF", "MF + cold start", 7)
    test = toy.data.splits["test"]
    batch = {"uid": torch.tensor(test["uid"].to_numpy()), "iid": torch.tensor(test["iid"].to_numpy()),
             "his": torch.tensor(np.stack([np.pad(h, (sweep.MAX_HISTORY - len(h), 0)) for h in test["his"]]))}
    chosen = ColdStartConfig(**{**ColdStartConfig().__dict__, **on["setting"]})
    with torch.no_grad():
        cold = with_cold_start(toy.mf, toy.data, chosen, RetrievalConfig()).eval()
        for r, model in ((off, toy.mf), (on, cold)):
            m = auc_report(test["uid"].to_numpy(), test["label"].to_numpy(), model.score(batch).numpy(),
                           test["not_cold"].to_numpy())
            assert (r["test_auc"], r["test_uauc"], r["cold_auc"]) == (m["auc"], m["uauc"], m["cold"]["auc"])
    assert off["test_auc"] != on["test_auc"]
    assert "| MF + cold start | yes |" in capsys.readouterr().out
