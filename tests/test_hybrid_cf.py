"""model.hybrid_cf_path: a hybrid score whose CF logit comes from a second, fixed CF model, so
that the LLM reads one CF model's vectors (the projector's) and corrects another's score."""
import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import cli_args, load_model
from test_hybrid_score import _zero_llm

from collm_faissret import registry
from collm_faissret.config_loader import load_config
from collm_faissret.datasets.sampler import eval_batches
from collm_faissret.errors import ConfigError
from collm_faissret.models.cf import read_cf_weights
from collm_faissret.models.collm_build import StageError
from collm_faissret.models.shared_prefix import attention_ratio


@pytest.fixture(scope="module")
def sasrec_weights(env, tmp_path_factory):
    """A SASRec weight file for the test data (random weights, dropout 0.5, history 7): not the
    projector's MF, and reading a longer history than the rows would carry for MF alone."""
    mf = read_cf_weights(str(env.mf_weights))
    cls = registry.get("cf_model", "SASRec")
    torch.manual_seed(3)
    model = cls(mf.n_users, mf.n_items, cls.Config(embedding_size=8, max_len=7, dropout=0.5))
    path = tmp_path_factory.mktemp("sasrec") / "cf_model.pth"
    torch.save(model.weights_payload("model: {arch: SASRec}"), path)
    return path


def _hybrid_on(path):
    return ("model.answer_score=hybrid", f"model.hybrid_cf_path={path}")


def test_with_the_llm_at_zero_the_scores_are_the_second_cf_models(env, tmp_path, monkeypatch, sasrec_weights):
    _, task, model, datasets = load_model(env.config("stage2", tmp_path / "run"), *_hybrid_on(sasrec_weights))
    assert model.cf.name == "MF" and model.hybrid_cf.name == "SASRec"
    assert model.history_len == 7  # the rows carry what the hybrid score's SASRec reads
    _zero_llm(model, monkeypatch)
    model.train()  # the second CF model stays in eval mode: no dropout in its logit
    assert not model.hybrid_cf.training and model.proj.training
    ds = datasets["test"]
    batch = model.collate_fn(ds.__getitems__(list(range(len(ds)))))
    assert batch["his"].shape[1] >= 7
    with torch.no_grad():
        got, again = model(batch)["logits"], model(batch)["logits"]
        want, mf = model.hybrid_cf.score(batch).float(), model.cf.score(batch).float()
    assert torch.equal(got, want) and torch.equal(got, again)
    assert not torch.allclose(want, mf)  # and not the projector's MF's
    model.eval()  # the shared-prefix scoring path adds the same logit
    ds.share_prefix, ds.pack_ratio, ds.kv_min_group = True, attention_ratio(model.llm.config), 2
    batches = eval_batches(ds.lengths(), 16, groups=ds.prefix_groups())
    assert any("kv_ids" in b or "pack_ids" in b for b in (model.collate_fn(ds.__getitems__(list(x))) for x in batches))
    rows, scores = task.predict(model, ds, batches, torch.device("cpu"), contextlib.nullcontext)
    np.testing.assert_allclose(scores, want.numpy()[rows], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def hybrid_run(env, tmp_path_factory, sasrec_weights):
    """A tiny stage 2 trained with the hybrid score on SASRec's logit."""
    import train_collm

    out = tmp_path_factory.mktemp("hybrid_cf") / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), *_hybrid_on(sasrec_weights), "run.amp=false",
                                     "run.iters_per_epoch=4")) == 0
    return out


def test_the_second_cf_model_is_frozen_and_not_saved(env, tmp_path, sasrec_weights, hybrid_run):
    import train_collm

    out = hybrid_run
    state = torch.load(out / "checkpoint_best.pth", weights_only=False)["model"]
    assert float(state["cf_weight"]) != 1.0 and not any(k.startswith("hybrid_cf.") for k in state)
    _, _, model, _ = load_model(env.config("stage2", tmp_path / "again"), *_hybrid_on(sasrec_weights))
    assert all(not p.requires_grad for p in model.hybrid_cf.parameters())
    assert not any(n.startswith("hybrid_cf.") for group in model.param_groups().values() for n, _ in group)
    ev = tmp_path / "eval"
    assert train_collm.main(cli_args(env.config("evaluate", ev), *_hybrid_on(sasrec_weights),
                                     f"model.ckpt={out / 'checkpoint_best.pth'}")) == 0
    trained, evaluated = (json.loads((d / "metrics.json").read_text())["test"] for d in (out, ev))
    assert abs(trained["auc"] - evaluated["auc"]) < 1e-9
    # its cf_weight was fitted to SASRec's logit: scoring it on the projector's MF's is refused
    with pytest.raises(StageError, match="trained on the logit of .* set model.hybrid_cf_path="):
        load_model(env.config("evaluate", tmp_path / "e2"), "model.answer_score=hybrid",
                   f"model.ckpt={out / 'checkpoint_best.pth'}")


def test_the_recommender_serves_known_users_and_refuses_new_ones(hybrid_run):
    from collm_faissret.recommend import Recommender
    from collm_faissret.recommend.errors import RecommendError

    rec = Recommender.from_run(str(hybrid_run))
    top = rec.recommend(user=3, k=5, candidates=10)
    assert len(top) == 5 and top["llm_score"].notna().all()
    with pytest.raises(RecommendError, match="own logit .* ask for a known user"):
        rec.recommend(history=[1, 2, 3], k=5, candidates=10)


def test_it_needs_a_hybrid_score(env, tmp_path, sasrec_weights):
    with pytest.raises(ConfigError, match="model.hybrid_cf_path .* gives the CF logit of a hybrid score"):
        load_config(env.config("stage2", tmp_path / "run"), [f"model.hybrid_cf_path={sasrec_weights}"])


def test_a_missing_file_is_named(env, tmp_path, capsys):
    import train_collm

    missing = tmp_path / "nowhere" / "cf_model.pth"
    assert train_collm.main(cli_args(env.config("stage2", tmp_path / "run"), *_hybrid_on(missing))) != 0
    err = capsys.readouterr().err
    assert f"model.hybrid_cf_path not found: {missing}" in err
    assert not (tmp_path / "run" / "checkpoint_best.pth").exists()


def test_cold_start_gives_both_cf_models_borrowed_vectors(env, tmp_path, sasrec_weights):
    _, _, model, _ = load_model(env.config("stage2", tmp_path / "run"), *_hybrid_on(sasrec_weights),
                                "model.cold_start.enabled=true")
    from collm_faissret.models.cf.cold_start import ColdItemsCF, ColdStartCF

    assert isinstance(model.cf, ColdStartCF) and isinstance(model.hybrid_cf, ColdItemsCF)  # MF; SASRec
    model.train()
    assert not model.hybrid_cf.training and all(not p.requires_grad for p in model.hybrid_cf.parameters())
