"""Out-of-fold CF logits: baseline_train.py with run.oof_folds writes each training row's logit
from a model trained without it (oof_logits.csv), and a hybrid score reads them for its
training rows through datasets.*.cf_logits."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_args, load_model

from collm_faissret.config_loader import load_config
from collm_faissret.datasets import RecRows
from collm_faissret.datasets.cf_logits import OOF_COLUMNS, file_sha256, fold_of, oof_frame, read_cf_logits
from collm_faissret.errors import ConfigError, DataError


def test_folds_partition_the_rows_evenly_and_are_seeded():
    fold = fold_of(23, 4, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [5, 6, 6, 6]
    assert np.array_equal(fold, fold_of(23, 4, seed=0)) and not np.array_equal(fold, fold_of(23, 4, seed=1))
    assert not np.array_equal(fold, np.arange(23) % 4)  # not blocks of time order: shuffled


@pytest.fixture(scope="module")
def oof_run(env, tmp_path_factory):
    import baseline_train

    out = tmp_path_factory.mktemp("oof") / "mf"
    assert baseline_train.main(cli_args(env.config("mf", out), "run.oof_folds=2", "run.max_epoch=4")) == 0
    return out


def _fold_model_scores(env, run_dir, rows):
    """The fold model's own scores of ``rows`` (a DataFrame of training rows), rebuilt from its checkpoint."""
    from collm_faissret.tasks.rec_task import CFTask

    cfg = load_config(str(run_dir / "config.yaml"), ["run.evaluate=true",
                                                     f"model.ckpt={run_dir / 'checkpoint_best.pth'}"])
    task = CFTask(cfg)
    task.load_data()
    model = task.build_model(torch.device("cpu")).eval()
    ds = RecRows(rows, 5, None, his_len=model.history_len)
    with torch.no_grad():
        return model(model.collate_fn(ds.__getitems__(list(range(len(ds))))))["logits"].numpy()


def test_every_training_row_gets_the_logit_of_the_model_that_did_not_see_it(env, oof_run):
    train = env.frames["train"]
    frame = pd.read_csv(oof_run / "oof_logits.csv")
    assert tuple(frame.columns) == OOF_COLUMNS and len(frame) == len(train)
    assert np.array_equal(frame["iid"], train["iid"]) and np.array_equal(frame["label"], train["label"])
    assert np.isfinite(frame["cf_logit"]).all()
    assert np.array_equal(frame["fold"], fold_of(len(train), 2, seed=0))  # datasets.*.sample_seed
    for k in (0, 1):
        fold_dir = oof_run / "oof" / f"fold{k}"
        held = (frame["fold"] == k).to_numpy()
        assert f"train {int((~held).sum())}," in (fold_dir / "log.txt").read_text()  # trained without its fold
        want = _fold_model_scores(env, fold_dir, train[held].reset_index(drop=True))
        np.testing.assert_allclose(frame["cf_logit"][held], want, rtol=0, atol=1e-5)
    summary = json.loads((oof_run / "oof_logits.json").read_text())
    assert summary["folds"] == 2 and summary["n_rows"] == len(train)
    # the baseline's own logits of its training rows carry their labels; out of fold they do not
    assert summary["auc_in_sample"] > summary["auc_out_of_fold"] + 0.05
    assert (oof_run / "cf_model.pth").is_file()  # the baseline itself, as without folds


def test_a_file_for_other_rows_or_another_cf_model_is_refused_by_name(env, oof_run, tmp_path):
    train = env.frames["train"].reset_index(drop=True)
    good = oof_frame(train, fold_of(len(train), 2, 0), np.linspace(-1, 1, len(train)))
    path, weights = tmp_path / "oof_logits.csv", str(env.mf_weights)
    good.to_csv(path, index=False)
    with pytest.raises(DataError, match="oof_logits.json: cannot read which CF model"):
        read_cf_logits(str(path), train, weights)
    (tmp_path / "oof_logits.json").write_text(json.dumps({"cf_model_sha256": file_sha256(weights)}))
    assert np.allclose(read_cf_logits(str(path), train, weights), good["cf_logit"])
    with pytest.raises(DataError, match="made beside another CF weight file"):
        read_cf_logits(str(path), train, str(oof_run / "cf_model.pth"))
    bad = good.copy()
    bad.loc[7, "iid"] += 1
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"oof_logits.csv: row 7: iid"):
        read_cf_logits(str(path), train, weights)
    good.iloc[:-1].to_csv(path, index=False)
    with pytest.raises(DataError, match=f"{len(train) - 1} rows, but the training split has {len(train)}"):
        read_cf_logits(str(path), train, weights)
    bad = good.copy()
    bad.loc[3, "cf_logit"] = np.nan
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match="row 3: cf_logit"):
        read_cf_logits(str(path), train, weights)
    with pytest.raises(DataError, match="datasets.*cf_logits: file not found"):
        read_cf_logits(str(tmp_path / "none.csv"), train, weights)


@pytest.mark.parametrize("stage,options,message", [
    ("mf", ["run.oof_folds=1"], "run.oof_folds must be 0"),
    ("stage2", ["run.oof_folds=2"], "run.oof_folds is for training a CF model"),
    ("mf", ["run.oof_folds=2", "run.evaluate=true"], "not for model.arch MF with run.evaluate"),
    ("mf", ["run.oof_folds=2", "datasets.ml100k_ood.sample_rows.train=50"], "drop datasets.*.sample_rows.train"),
    ("mf", ["run.oof_folds=2", "model.ckpt=x.pth"], "trains every fold model from scratch: drop model.ckpt"),
    ("stage2", ["datasets.ml100k_ood.cf_logits=x.csv"], "cf_logits is read by model.answer_score hybrid only"),
    ("mf", ["datasets.ml100k_ood.cf_logits=x.csv"], "cf_logits is read by model.answer_score hybrid only"),
    ("stage2", ["datasets.ml100k_ood.cf_logits=x.csv", "model.answer_score=hybrid", "model.freeze_rec=false"],
     "kept fixed"),
])
def test_the_keys_are_refused_where_they_mean_nothing(env, tmp_path, stage, options, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        load_config(env.config(stage, tmp_path / "run"), options)


def test_the_hybrid_score_of_a_training_row_reads_its_given_logit(env, oof_run, tmp_path, monkeypatch):
    """With the LLM's part at zero, a training row scores 1 x its out-of-fold logit; a sampled
    negative (no logit given) scores the CF model's own; evaluation rows carry none."""
    _, _, model, sets = load_model(env.config("stage2", tmp_path / "run"), *_hybrid(oof_run),
                                   "datasets.ml100k_ood.train_negatives=1")
    monkeypatch.setattr(model, "answer_logits", lambda hidden: torch.zeros(hidden.shape[:-1]))
    model.eval()
    train = sets["train"]
    given = pd.read_csv(oof_run / "oof_logits.csv")["cf_logit"].to_numpy(np.float32)
    assert np.array_equal(train.cf_logit[0::2], given) and np.isnan(train.cf_logit[1::2]).all()
    assert sets["valid"].cf_logit is None and sets["test"].cf_logit is None
    batch = model.collate_fn(train.__getitems__(list(range(len(train)))))
    with torch.no_grad():
        got = model(batch)["logits"].numpy()
        own = model.cf.score(batch).float().numpy()
    np.testing.assert_array_equal(got[0::2], given)
    np.testing.assert_allclose(got[1::2], own[1::2], rtol=0, atol=0)
    assert not np.allclose(own[0::2], given, atol=1e-3)  # the CF model's own would differ


def test_with_a_second_cf_model_the_logits_must_be_its(env, oof_run, tmp_path):
    """model.hybrid_cf_path: the out-of-fold file must come from that model, whatever the projector reads."""
    cf_logits = f"datasets.ml100k_ood.cf_logits={oof_run / 'oof_logits.csv'}"
    _, _, model, sets = load_model(env.config("stage2", tmp_path / "ok"), "model.answer_score=hybrid", cf_logits,
                                   f"model.hybrid_cf_path={oof_run / 'cf_model.pth'}")
    assert model.hybrid_cf is not None and sets["train"].cf_logit is not None
    with pytest.raises(DataError, match="made beside another CF weight file than the hybrid score's"):
        load_model(env.config("stage2", tmp_path / "bad"), *_hybrid(oof_run), f"model.hybrid_cf_path={env.mf_weights}")


def _hybrid(oof_run):
    """Options of a hybrid score on the out-of-fold logits of ``oof_run`` and its own CF weights."""
    return ("model.answer_score=hybrid", f"model.rec_config.pretrained_path={oof_run / 'cf_model.pth'}",
            f"datasets.ml100k_ood.cf_logits={oof_run / 'oof_logits.csv'}")


def test_a_tiny_hybrid_run_trains_on_them_row_for_row(env, oof_run, tmp_path, monkeypatch):
    """Through the real training loop (a sampled training split, length-bucketed batches, the
    frozen prompt prefix): every training batch reaches the score with each row's own logit."""
    import train_collm
    from collm_faissret.models.collm import CoLLM

    frame = pd.read_csv(oof_run / "oof_logits.csv")
    given = {(u, i): v for u, i, v in zip(frame["uid"], frame["iid"], frame["cf_logit"].astype(np.float32))}
    assert len(given) == len(frame)  # (user, item) names a training row in the fixture
    seen, final_scores = [], CoLLM.final_scores

    def recording(self, hidden, batch):
        if self.training:
            seen.append((batch["uid"].tolist(), batch["iid"].tolist(), batch["cf_logit"].tolist()))
        return final_scores(self, hidden, batch)

    monkeypatch.setattr(CoLLM, "final_scores", recording)
    out = tmp_path / "train"
    assert train_collm.main(cli_args(env.config("stage2", out), *_hybrid(oof_run), "run.amp=false",
                                     "datasets.ml100k_ood.sample_rows.train=200", "run.iters_per_epoch=8")) == 0
    assert "frozen prefix" in (out / "log.txt").read_text()  # the path under test
    assert len(seen) == 8
    for uids, iids, logits in seen:
        assert logits == [given[(u, i)] for u, i in zip(uids, iids)]
    state = torch.load(out / "checkpoint_best.pth", weights_only=False)["model"]
    assert float(state["cf_weight"]) != 1.0
    assert json.loads((out / "metrics.json").read_text())["test"]["n_rows"] == len(env.frames["test"])
