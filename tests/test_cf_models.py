"""Tests for every registered collaborative model and the baseline configs (CPU, ~40 s).

The models come from the registry, not from a list kept here: a new model file
is trained, scored and round-tripped by these tests as soon as it registers.
"""
import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import baseline_train
from collm_faissret import registry
from collm_faissret.datasets.collm_data import InteractionData
from collm_faissret.models.cf import CFWeightsError
from collm_faissret.models.cf.lightgcn import LightGCN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = registry.names("cf_model")
N_USERS, N_ITEMS = 12, 30


def rec_cfg(arch="MF", **kw):
    """A small rec_config of ``arch``'s schema (dim 16) with overrides; keys it lacks are left out."""
    schema = registry.get("cf_model", arch).Config
    base = dict(embedding_size=16, max_len=6, n_heads=2, n_blocks=2, mlp_hidden=[16, 8], attn_hidden=[16])
    base.update(kw)
    known = {f.name for f in dataclasses.fields(schema)}
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in base.items() if k in known})


def frame(n_rows, seed):
    """CoLLM-format rows: uid, iid, label, timestamp, his (leading 0), his_title (leading ''), title, flag, not_cold."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rows):
        his = [0] + rng.integers(1, N_ITEMS, rng.integers(0, 9)).tolist()
        iid = int(rng.integers(1, N_ITEMS))
        rows.append({"uid": int(rng.integers(1, N_USERS)), "iid": iid, "label": int(rng.integers(0, 2)),
                     "timestamp": 1000 + r, "his": his, "his_title": [""] + [f"movie {i}" for i in his[1:]],
                     "title": f"movie {iid}", "flag": -1.0, "not_cold": int(rng.integers(0, 2))})
    return pd.DataFrame(rows)


def data():
    """InteractionData over generated splits (train 80 rows)."""
    return InteractionData({"train": frame(80, 0), "valid": frame(20, 1)}, N_USERS, N_ITEMS, "generated")


def batch(n=8, seed=0, his_len=6):
    """uid/iid/label [n], his [n, his_len] left-padded; row 0 has an empty history."""
    g = torch.Generator().manual_seed(seed)
    his = torch.randint(1, N_ITEMS, (n, his_len), generator=g)
    lengths = torch.randint(0, his_len + 1, (n,), generator=g)
    lengths[0] = 0
    his[torch.arange(his_len)[None, :] < (his_len - lengths)[:, None]] = 0
    return {"uid": torch.randint(1, N_USERS, (n,), generator=g), "iid": torch.randint(1, N_ITEMS, (n,), generator=g),
            "label": torch.randint(0, 2, (n,), generator=g), "his": his}


def build(arch, **kw):
    torch.manual_seed(0)
    model = registry.get("cf_model", arch)(N_USERS, N_ITEMS, rec_cfg(arch, **kw))
    if model.fits_data:
        model.fit_data(data())
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("extras", [{}, {"user_id": True, "item_bias": True, "user_bias": True}])
def test_shapes_and_backward(arch, extras):
    model = build(arch, **extras)
    b = batch()
    out = model(b)
    assert out["logits"].shape == (8,) and torch.isfinite(out["logits"]).all()
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.user_embed(b).shape == (8, 16)
    assert model.item_embed(torch.tensor([1, 2, 3])).shape == (3, 16)


def test_lightgcn_matches_dense_propagation():
    """2 users, 3 items: propagation equals (D^-1/2 A D^-1/2)^k E averaged over k = 0..L."""
    edges = pd.DataFrame({"uid": [0, 0, 1, 1, 1], "iid": [0, 1, 1, 2, 0], "label": [1, 1, 1, 1, 0]})
    for kind, keep in (("positive", edges["label"] == 1), ("all", edges["label"] >= 0)):
        model = LightGCN(2, 3, rec_cfg("LightGCN", n_layers=3, graph_edges=kind))
        model.fit_data(InteractionData({"train": edges}, 2, 3, "generated"))
        adj = torch.zeros(5, 5, dtype=torch.float64)
        for u, i in zip(edges["uid"][keep], edges["iid"][keep]):
            adj[u, 2 + i] = adj[2 + i, u] = 1.0
        deg = adj.sum(1)
        inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        norm = inv[:, None] * adj * inv[None, :]
        ego = torch.cat([model.user.weight, model.item.weight]).detach().double()
        layers = [ego]
        for _ in range(3):
            layers.append(norm @ layers[-1])
        expected = torch.stack(layers).mean(0).float()
        users, items = model.propagate()
        torch.testing.assert_close(torch.cat([users, items]).detach(), expected, rtol=1e-5, atol=1e-6)


def test_lightgcn_cache_follows_updates():
    """The no-grad cache is refreshed after an optimizer step."""
    model = build("LightGCN")
    model.eval()
    b = batch()
    with torch.no_grad():
        before = model.score(b).clone()
        assert torch.equal(model.score(b), before)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(b)["loss"].backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model.score(b)
        fresh_u, fresh_i = model.propagate()
        torch.testing.assert_close(model.user_embed(b), fresh_u[b["uid"]])
    assert not torch.allclose(before, after)


def test_lightgcn_propagates_in_fp32_whatever_the_tables_dtype():
    """bf16 ID tables beside the fp32 graph buffers (what FSDP's CUDA precision policy hands the
    forward) propagate as their values do in fp32, rounded once to bf16 at the end; under bf16
    autocast, fp32 tables propagate exactly as without it."""
    model = build("LightGCN")
    with torch.no_grad():
        for table in (model.user, model.item):
            table.weight.copy_(table.weight.bfloat16().float())  # values bf16 holds exactly
        users, items = model.propagate()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto_users, auto_items = model.propagate()
        assert auto_users.dtype == auto_items.dtype == torch.float32
        assert torch.equal(auto_users, users) and torch.equal(auto_items, items)
        model.user.bfloat16()
        model.item.bfloat16()
        assert model.adj_value.dtype == torch.float32
        half_users, half_items = model.propagate()
    assert half_users.dtype == half_items.dtype == torch.bfloat16
    assert torch.equal(half_users, users.bfloat16()) and torch.equal(half_items, items.bfloat16())


def test_sasrec_is_causal_and_empty_history_is_finite():
    model = build("SASRec")
    model.eval()
    his = batch(his_len=6)["his"]
    his[1:] = torch.randint(1, N_ITEMS, his[1:].shape)  # full histories, except row 0 (empty)
    changed = his.clone()
    changed[1:, -1] = (changed[1:, -1] % (N_ITEMS - 1)) + 1  # another item at the latest position
    with torch.no_grad():
        a, b = model.encode(his), model.encode(changed)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[1:, :-1], b[1:, :-1])
    assert not torch.allclose(a[1:, -1], b[1:, -1])


def test_sasrec_and_din_ignore_left_padding():
    """More padding on the left of the same history gives the same user representation."""
    for arch in ("SASRec", "DIN"):
        model = build(arch, max_len=8)
        model.eval()
        b = batch(his_len=4)
        padded = dict(b, his=torch.cat([torch.zeros(8, 4, dtype=torch.long), b["his"]], dim=1))
        with torch.no_grad():
            torch.testing.assert_close(model.user_embed(b), model.user_embed(padded), rtol=1e-5, atol=1e-5)


def test_din_attention_is_zero_on_padding():
    model = build("DIN")
    b = batch()
    w = model.attention(b["his"], model.item(b["iid"]))
    assert (w[b["his"] == 0] == 0).all()
    assert torch.equal(model.user_embed(dict(b, his=torch.zeros_like(b["his"])))[0], torch.zeros(16))


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_round_trip(arch, tmp_path):
    """weights_payload -> load_pretrained into a model built without data reproduces the scores."""
    model = build(arch, user_id=True, item_bias=True, user_bias=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for seed in range(3):
        opt.zero_grad()
        model(batch(seed=seed))["loss"].backward()
        opt.step()
    path = str(tmp_path / "cf_model.pth")
    torch.save(model.weights_payload("cfg: x"), path)
    fresh = registry.get("cf_model", arch)(N_USERS, N_ITEMS, rec_cfg(arch, user_id=True, item_bias=True,
                                                                      user_bias=True))
    fresh.load_pretrained(path)
    model.eval()
    fresh.eval()
    b = batch(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(b), model.score(b))
        torch.testing.assert_close(fresh.user_embed(b), model.user_embed(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_other_models_weights_are_refused(arch, tmp_path):
    other = "SASRec" if arch == "MF" else "MF"
    path = str(tmp_path / "other.pth")
    torch.save(build(other).weights_payload(), path)
    with pytest.raises(CFWeightsError, match=other):
        registry.get("cf_model", arch)(N_USERS, N_ITEMS, rec_cfg(arch)).load_pretrained(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """CoLLM-format pickles (train 200 rows, valid/test 60) in a temp directory."""
    path = tmp_path_factory.mktemp("tiny")
    for name, n, seed in (("train_ood2", 200, 0), ("valid_ood2", 60, 1), ("test_ood2", 60, 2)):
        frame(n, seed).to_pickle(path / f"{name}.pkl")
    return str(path)


def test_capabilities_are_class_attributes():
    caps = {n: (c.target_aware, c.supports_cold_start, c.fits_data)
            for n, c in ((n, registry.get("cf_model", n)) for n in ARCHS)}
    assert caps["MF"] == (False, True, False) and caps["LightGCN"] == (False, True, True)
    assert caps["DIN"][0] and not caps["SASRec"][1]
    assert all(registry.get("cf_model", n).name == n for n in ARCHS)  # register sets the name


@pytest.mark.parametrize("arch", ARCHS)
def test_baseline_config_smoke(arch, tiny_dir, tmp_path):
    """Every registered model trains through baseline_train.py: with its ML-1M config where one
    exists, otherwise with a minimal one."""
    cfg = os.path.join(ROOT, "train_configs", f"baseline_{arch.lower()}_ml1m.yaml")
    if not os.path.isfile(cfg):
        cfg = str(tmp_path / "baseline.yaml")
        OmegaConf.save(OmegaConf.create({"model": {"arch": arch}, "datasets": {"movielens_ood": {"path": "x"}},
                                         "run": {"output_dir": "x", "device": "cpu"}}), cfg)
    out = str(tmp_path / "out")
    rc = baseline_train.main(["--cfg-path", cfg, "--options", f"datasets.movielens_ood.path={tiny_dir}",
                              f"run.output_dir={out}", "run.max_epoch=1", "run.batch_size_train=64"])
    assert rc == 0
    with open(os.path.join(out, "metrics.json")) as fh:
        metrics = json.load(fh)
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    payload = torch.load(os.path.join(out, "cf_model.pth"), weights_only=True)
    assert payload["cf_model"] == arch and payload["n_items"] <= N_ITEMS
