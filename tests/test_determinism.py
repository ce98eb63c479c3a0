"""Same seed, same run: two CPU runs give identical metrics and weights, and the
seed is recorded in the run's resolved config.yaml."""
import json

import torch
from _reliability import stage1_config
from conftest import cli_args
from omegaconf import OmegaConf

import train_collm
from collm_faissret.checkpoint import load

SHORT = {"max_epoch": 2, "iters_per_epoch": 4}


def run(env, out, **run_keys):
    assert train_collm.main(cli_args(stage1_config(env, out, **SHORT, **run_keys))) == 0
    return json.loads((out / "metrics.json").read_text()), load(str(out / "checkpoint_last.pth"))["model"]


def test_same_seed_same_metrics_and_weights(env, tmp_path):
    m1, w1 = run(env, tmp_path / "a", seed=123)
    m2, w2 = run(env, tmp_path / "b", seed=123)
    assert m1 == m2
    predictions = [(tmp_path / run / "predictions_test.csv").read_bytes() for run in ("a", "b")]
    assert predictions[0] == predictions[1]
    assert set(w1) == set(w2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # the seed matters: another one trains other weights (LoRA init, batch order, dropout)
    _, w3 = run(env, tmp_path / "c", seed=124)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


def test_seed_in_resolved_config(env, tmp_path):
    out = tmp_path / "run"
    assert train_collm.main(cli_args(stage1_config(env, out, max_epoch=1, iters_per_epoch=1),
                                     "run.seed=9876")) == 0
    assert OmegaConf.load(out / "config.yaml").run.seed == 9876
    ckpt_cfg = OmegaConf.create(load(str(out / "checkpoint_last.pth"))["config"])
    assert ckpt_cfg.run.seed == 9876
