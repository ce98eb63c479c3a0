"""model.answer_score hybrid: the LLM's log-odds plus a learned weight times the CF model's own
logit, so the LLM learns a correction to the CF model (the pure scores stay the default)."""
import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import cli_args, load_model

from collm_faissret.datasets.sampler import eval_batches
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
    model.eval()
    ds = datasets["test"]
    batch = model.collate_fn(ds.__getitems__(list(range(len(ds)))))
    with torch.no_grad():
        got = model(batch)["logits"]
        want = model.cf.score(batch).float()
    assert torch.equal(got, want)  # 1 x the CF logit, the LLM adding 0
    # the same through the shared-prefix scoring path, batch by batch
    ds.share_prefix, ds.pack_ratio, ds.kv_min_group = True, attention_ratio(model.llm.config), 2
    rows, scores = task.predict(model, ds, eval_batches(ds.lengths(), 16, groups=ds.prefix_groups()),
                                torch.device("cpu"), contextlib.nullcontext)
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(want.numpy()[rows], kind="stable"))
    np.testing.assert_allclose(scores, want.numpy()[rows], rtol=0, atol=1e-6)


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
