"""run.fit_blend: a hybrid score's two weights fitted after training on a held-out split, with the
LLM and the projector kept as the checkpoint has them."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_args, load_model

from collm_faissret.checkpoint import save_atomic
from collm_faissret.config_loader import load_config
from collm_faissret.errors import ConfigError
from collm_faissret.runners.blend import blended, fit_blend_weights

FIT = ("model.answer_score=hybrid", "model.hybrid_llm_weight=0", "run.evaluate=true", "run.fit_blend=valid",
       "run.valid_splits=[]", "run.test_splits=[test]")


def test_the_fit_is_sklearns_logistic_regression_without_intercept():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    llm, cf = rng.normal(0, 1, 3000), rng.normal(0, 3, 3000)  # different scales
    labels = (rng.random(3000) < 1 / (1 + np.exp(-(0.8 * llm + 0.2 * cf)))).astype(int)
    want = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=10000).fit(
        np.stack([llm, cf], 1), labels).coef_[0]
    got = fit_blend_weights(llm, cf, labels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_part_that_is_all_zeros_keeps_weight_zero_and_the_other_is_the_one_weight_optimum():
    rng = np.random.default_rng(1)
    llm = rng.normal(0, 2, 500)
    labels = (rng.random(500) < 1 / (1 + np.exp(-llm))).astype(int)
    w_llm, w_cf = fit_blend_weights(llm, np.zeros(500), labels, l2=0.0)
    assert w_cf == 0.0
    # the optimum of one weight: the derivative of the mean cross-entropy, mean((sigmoid(w x) - y) x), is 0
    grad = np.mean((1 / (1 + np.exp(-w_llm * llm)) - labels) * llm)
    assert abs(grad) < 1e-8 and 0.5 < w_llm < 2.0


def test_rows_two_weights_separate_keep_finite_weights():
    # every positive above every negative on the LLM's part: without the ridge the optimum is at infinity
    w_llm, w_cf = fit_blend_weights([2.0, 1.0, -1.0, -2.0], [0.5, -0.5, 0.5, -0.5], [1, 1, 0, 0])
    assert np.isfinite([w_llm, w_cf]).all() and w_llm > 0 and abs(w_cf) < w_llm


@pytest.fixture(scope="module")
def pure_run(env, tmp_path_factory):
    """A tiny stage 2 trained with the pure log-odds score (no hybrid), and its test split scored."""
    import train_collm

    out = tmp_path_factory.mktemp("fit_blend") / "pure"
    assert train_collm.main(cli_args(env.config("stage2", out), "model.answer_score=yes_minus_no",
                                     "run.iters_per_epoch=4", "run.test_splits=[test]")) == 0
    return out


@pytest.fixture(scope="module")
def fit_run(env, pure_run):
    import train_collm

    out = pure_run.parent / "fit"
    assert train_collm.main(cli_args(env.config("stage2", out), *FIT,
                                     f"model.ckpt={pure_run / 'checkpoint_best.pth'}")) == 0
    return out


def _predictions(path):
    return pd.read_csv(path).sort_values(["uid", "iid", "label"]).reset_index(drop=True)


def test_the_fitted_weights_are_in_the_checkpoint_and_the_llm_is_the_pure_runs(env, pure_run, fit_run):
    payload = torch.load(fit_run / "checkpoint_best.pth", weights_only=False)
    record, state = payload["blend"], payload["model"]
    assert record["split"] == "valid" and record["rows"] > 0
    assert float(state["llm_weight"]) == pytest.approx(record["llm_weight"], rel=1e-6)
    assert float(state["cf_weight"]) == pytest.approx(record["cf_weight"], rel=1e-6)
    pure = torch.load(pure_run / "checkpoint_best.pth", weights_only=False)["model"]
    for name, value in pure.items():  # the projector (and the LoRA) as trained
        assert torch.equal(state[name], value), name
    metrics = json.loads((fit_run / "metrics.json").read_text())
    assert metrics["blend"]["llm_weight"] == record["llm_weight"] and "valid" in metrics and "test" in metrics
    assert (fit_run / "predictions_valid.csv").is_file()  # the fitted split's, though valid_splits is empty

    # the fitted split's scores are the two parts weighted: the LLM's log-odds are the pure run's
    _, _, model, datasets = load_model(env.config("stage2", pure_run.parent / "parts"), *FIT,
                                       f"model.ckpt={pure_run / 'checkpoint_best.pth'}")
    model.eval()
    model.blend_parts = True
    ds = datasets["test"]
    batch = model.collate_fn(ds.__getitems__(list(range(len(ds)))))
    with torch.no_grad():  # no label: scoring computes no loss
        parts = model({k: v for k, v in batch.items() if k != "label"})["logits"].numpy()
    frame = pd.DataFrame({"uid": ds.uid, "iid": ds.iid, "label": ds.label, "llm": parts[:, 0],
                          "blend": blended(parts, record["llm_weight"], record["cf_weight"])})
    frame = frame.sort_values(["uid", "iid", "label"]).reset_index(drop=True)
    fitted, alone = _predictions(fit_run / "predictions_test.csv"), _predictions(pure_run / "predictions_test.csv")
    np.testing.assert_allclose(frame["llm"], alone["score"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(frame["blend"], fitted["score"], rtol=0, atol=1e-5)


def test_the_written_checkpoint_scores_as_the_fit_run_did(env, fit_run):
    import train_collm

    out = fit_run.parent / "again"
    assert train_collm.main(cli_args(env.config("stage2", out), "model.answer_score=hybrid",
                                     "model.hybrid_llm_weight=0", "run.evaluate=true", "run.test_splits=[test]",
                                     f"model.ckpt={fit_run / 'checkpoint_best.pth'}")) == 0
    again, fitted = _predictions(out / "predictions_test.csv"), _predictions(fit_run / "predictions_test.csv")
    np.testing.assert_allclose(again["score"], fitted["score"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("options, match", [
    (("model.answer_score=yes_minus_no", "model.hybrid_llm_weight=null"), "set model.answer_score hybrid"),
    (("model.hybrid_llm_weight=null",), "set model.answer_score hybrid and model.hybrid_llm_weight"),
    (("run.evaluate=false",), "set run.evaluate true"),
    (("run.test_splits=[valid]",), "that is not in run.test_splits"),
    (("run.fit_blend=train",), "on training rows the CF logit is in-sample"),
    (("run.task=retrieve_rank",), "not on run.task retrieve_rank"),
    (("model.ckpt=RUN/checkpoint_best.pth",), "set another run.output_dir"),
])
def test_config_rules(env, tmp_path, options, match):
    options = [o.replace("RUN", str(tmp_path / "run")) for o in options]
    with pytest.raises(ConfigError, match=match):
        load_config(env.config("stage2", tmp_path / "run"), [*FIT, "model.ckpt=some.pth", *options])


def test_a_cf_model_alone_has_no_blend(env, tmp_path):
    with pytest.raises(ConfigError, match="run.fit_blend .* CF model alone"):
        load_config(env.config("mf", tmp_path / "mf"), ["run.fit_blend=valid"])


def test_a_checkpoint_trained_on_the_yes_logit_is_refused(env, tmp_path, pure_run, capfd):
    import train_collm

    payload = torch.load(pure_run / "checkpoint_best.pth", weights_only=False)
    payload["config"] = payload["config"].replace("answer_score: yes_minus_no", "answer_score: yes_logit")
    assert "answer_score: yes_logit" in payload["config"]
    yes = tmp_path / "yes.pth"
    save_atomic(payload, str(yes))  # a digest of the edited payload
    fit = tmp_path / "fit"
    capfd.readouterr()
    assert train_collm.main(cli_args(env.config("stage2", fit), *FIT, f"model.ckpt={yes}")) != 0
    assert "trained with model.answer_score yes_logit" in capfd.readouterr().err
    assert not (fit / "checkpoint_best.pth").exists()
