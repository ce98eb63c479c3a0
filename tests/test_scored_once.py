"""The end of training does not score the validation split again when the best epoch already
scored all of it with the same weights; the reused predictions are those of the best checkpoint."""
import json

import pandas as pd
import pytest
from conftest import cli_args

import train_collm
from collm_faissret.runners.runner_base import RunnerBase


def _counted_run(env, out, monkeypatch, *options):
    calls = []
    evaluate = RunnerBase.evaluate

    def counting(self, split, max_rows=None):
        calls.append(split)
        return evaluate(self, split, max_rows)

    monkeypatch.setattr(RunnerBase, "evaluate", counting)
    assert train_collm.main(cli_args(env.config("stage2", out), "run.iters_per_epoch=2", *options)) == 0
    monkeypatch.setattr(RunnerBase, "evaluate", evaluate)
    return calls


def test_one_epoch_scores_validation_once(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _counted_run(env, out, monkeypatch) == ["valid", "test"]
    metrics = json.loads((out / "metrics.json").read_text())
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["valid"]["auc"] == epoch["auc"] == metrics["best_valid_auc"]
    assert metrics["valid"]["n_rows"] == len(env.frames["valid"])
    # the reused predictions are what the best checkpoint scores when loaded afresh
    again = tmp_path / "again"
    assert train_collm.main(cli_args(env.config("evaluate", again),
                                     f"model.ckpt={out / 'checkpoint_best.pth'}")) == 0
    # (within 1e-5: evaluate-only folds LoRA into the weights, the epoch's pass ran it apart)
    for split in ("valid", "test"):
        pd.testing.assert_frame_equal(pd.read_csv(out / f"predictions_{split}.csv"),
                                      pd.read_csv(again / f"predictions_{split}.csv"), check_exact=False,
                                      rtol=0, atol=1e-5)
    fresh = json.loads((again / "metrics.json").read_text())["valid"]
    for key in ("auc", "uauc", "n_rows"):
        assert fresh[key] == pytest.approx(metrics["valid"][key], abs=1e-6), key


def test_a_cut_validation_pass_is_scored_again_in_full(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _counted_run(env, out, monkeypatch, "run.max_eval_rows=5") == ["valid", "valid", "test"]
    assert json.loads((out / "metrics.json").read_text())["valid"]["n_rows"] == len(env.frames["valid"])
