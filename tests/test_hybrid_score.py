"""model.answer_score hybrid: the LLM's log-odds plus a learned weight times the CF model's own
logit, so the LLM learns a correction to the CF model (the pure scores stay the default)."""
import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import cli_args, load_model

from collm_faissret.config_loader import load_config
from collm_faissret.datasets.sampler import eval_batches
from collm_faissret.errors import ConfigError
from collm_faissret.models.collm_build import StageError
from collm_faissret.models.shared_prefix import attention_ratio


def _zero_llm(model, monkeypatch):
    """The LLM's contribution held at zero (its answer log-odds replaced by zeros)."""
    monkeypatch.setattr(model, "answer_logits", lambda hidden: torch.zeros(hidden.shape[:-1]))


def test_with_the_llm_at_zero_the_scores_are_the_cf_models(env, tmp_path, monkeypatch):
    _, task, model, datasets = load_model(env.config("stage2", tmp_path / "run"), "model.answer_score=hybrid")
    assert model.cf_weight is not None and float(model.cf_weight) == 1.0
    assert ("cf_weight", model.cf_weight) in model.param_groups()["fece"]
    _zero_llm(model, monkeypatch)
    _assert_scores_are_the_cf_models(task, model, datasets["test"])  # 1 x the CF logit, the LLM adding 0


def _assert_scores_are_the_cf_models(task, model, ds):
    """The model's scores of ``ds`` equal its CF model's logits, whole-batch and through the
    shared-prefix scoring path batch by batch; returns (the whole batch, the CF logits [N])."""
    model.eval()
    batch = model.collate_fn(ds.__getitems__(list(range(len(ds)))))
    with torch.no_grad():
        got = model(batch)["logits"]
        want = model.cf.score(batch).float()
    assert torch.equal(got, want)
    ds.share_prefix, ds.pack_ratio, ds.kv_min_group = True, attention_ratio(model.llm.config), 2
    rows, scores = task.predict(model, ds, eval_batches(ds.lengths(), 16, groups=ds.prefix_groups()),
                                torch.device("cpu"), contextlib.nullcontext)
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(want.numpy()[rows], kind="stable"))
    np.testing.assert_allclose(scores, want.numpy()[rows], rtol=0, atol=1e-6)
    return batch, want


def test_hybrid_needs_a_cf_model(env, tmp_path):
    with pytest.raises(StageError, match="answer_score hybrid"):
        load_model(env.config("stage1", tmp_path / "s1"), "model.answer_score=hybrid")


def test_a_tiny_run_trains_its_weight_and_evaluates_from_its_checkpoint(env, tmp_path):
    import train_collm

    out = tmp_path / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), "model.answer_score=hybrid", "run.amp=false",
                                     "run.iters_per_epoch=8")) == 0
    state = torch.load(out / "checkpoint_best.pth", weights_only=False)["model"]
    assert "cf_weight" in state and float(state["cf_weight"]) != 1.0  # it trained
    ev = tmp_path / "eval"
    assert train_collm.main(cli_args(env.config("evaluate", ev), "model.answer_score=hybrid",
                                     f"model.ckpt={out / 'checkpoint_best.pth'}")) == 0
    trained, evaluated = (json.loads((d / "metrics.json").read_text())["test"] for d in (out, ev))
    assert abs(trained["auc"] - evaluated["auc"]) < 1e-9


def test_a_zero_llm_weight_starts_from_the_cf_models_scores(env, tmp_path):
    """model.hybrid_llm_weight=0: the LLM's real log-odds are in the forward pass, weighted by a
    learned 0, so the first scores are exactly the CF model's (both scoring paths)."""
    _, task, model, datasets = load_model(env.config("stage2", tmp_path / "run"), "model.answer_score=hybrid",
                                          "model.hybrid_llm_weight=0")
    assert float(model.llm_weight) == 0.0 and ("llm_weight", model.llm_weight) in model.param_groups()["fece"]
    batch, want = _assert_scores_are_the_cf_models(task, model, datasets["test"])
    with torch.no_grad():
        model.llm_weight.fill_(1.0)  # the LLM's part is there, held at zero by the weight only
        assert not torch.allclose(model(batch)["logits"], want)


def test_a_tiny_run_trains_the_llm_weight_and_scoring_needs_it(env, tmp_path, capsys):
    import train_collm

    out = tmp_path / "train"
    gate = ("model.answer_score=hybrid", "model.hybrid_llm_weight=0")
    assert train_collm.main(cli_args(env.config("stage2", out), *gate, "run.amp=false",
                                     "run.iters_per_epoch=8")) == 0
    state = torch.load(out / "checkpoint_best.pth", weights_only=False)["model"]
    assert float(state["llm_weight"]) != 0.0 and float(state["cf_weight"]) != 1.0  # both trained
    assert any(k.startswith("proj.") for k in state)
    ev = tmp_path / "eval"
    ckpt = f"model.ckpt={out / 'checkpoint_best.pth'}"
    assert train_collm.main(cli_args(env.config("evaluate", ev), *gate, ckpt)) == 0
    trained, evaluated = (json.loads((d / "metrics.json").read_text())["test"] for d in (out, ev))
    assert abs(trained["auc"] - evaluated["auc"]) < 1e-9
    # scored without the weight it was trained with: refused, not scored with weight 1
    assert train_collm.main(cli_args(env.config("evaluate", tmp_path / "e2"), "model.answer_score=hybrid", ckpt)) != 0
    assert "parameter llm_weight does not exist in this model" in capsys.readouterr().err


def test_a_checkpoint_without_the_weight_is_not_scored_with_its_start(env, tmp_path):
    import train_collm

    out = tmp_path / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), "model.answer_score=hybrid", "run.amp=false",
                                     "run.iters_per_epoch=2")) == 0
    with pytest.raises(StageError, match="no llm_weight in this checkpoint"):
        load_model(env.config("evaluate", tmp_path / "ev"), "model.answer_score=hybrid",
                   "model.hybrid_llm_weight=0", f"model.ckpt={out / 'checkpoint_best.pth'}")


def test_the_llm_weight_needs_a_hybrid_score(env, tmp_path):
    with pytest.raises(ConfigError, match="model.hybrid_llm_weight 0.0 weighs the LLM's part of a hybrid score"):
        load_config(env.config("stage2", tmp_path / "run"), ["model.hybrid_llm_weight=0"])
