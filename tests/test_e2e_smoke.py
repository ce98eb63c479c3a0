"""End to end on CPU through the entry points: MF -> stage 1 -> stage 2 -> evaluate-only."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, cli_args
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

import baseline_train
import train_collm
from collm_faissret.checkpoint import load
from collm_faissret.config_loader import load_config

PRED_COLUMNS = ["uid", "iid", "label", "score", "not_cold"]
RUN_FILES = ["config.yaml", "log.txt", "metrics.jsonl", "metrics.json", "predictions_valid.csv",
             "predictions_test.csv"]


@pytest.fixture(scope="module")
def pipeline(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    mf, s1, s2, ev = root / "mf", root / "stage1", root / "stage2", root / "evaluate"
    assert baseline_train.main(cli_args(env.config("mf", mf), "run.max_epoch=4")) == 0
    assert train_collm.main(cli_args(env.config("stage1", s1), "run.max_epoch=2", "run.iters_per_epoch=3")) == 0
    assert train_collm.main(cli_args(
        env.config("stage2", s2), "run.max_epoch=2", "run.iters_per_epoch=3",
        f"model.ckpt={s1 / 'checkpoint_best.pth'}", f"model.rec_config.pretrained_path={mf / 'cf_model.pth'}",
        "run.min_lr=${run.init_lr}")) == 0
    # the last step as a user runs it: the script in a fresh process
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_collm.py"), *cli_args(
            env.config("evaluate", ev), f"model.ckpt={s2 / 'checkpoint_best.pth'}",
            f"model.rec_config.pretrained_path={mf / 'cf_model.pth'}")],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"mf": mf, "stage1": s1, "stage2": s2, "evaluate": ev}


@pytest.mark.parametrize("stage", ["mf", "stage1", "stage2", "evaluate"])
def test_output_files(pipeline, stage):
    out = pipeline[stage]
    # evaluate-only has no training epochs, hence no per-epoch metrics.jsonl
    for name in (n for n in RUN_FILES if not (stage == "evaluate" and n == "metrics.jsonl")):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    if stage == "mf":
        assert (out / "cf_model.pth").is_file()
    if stage in ("stage1", "stage2"):
        assert (out / "checkpoint_best.pth").is_file() and (out / "checkpoint_last.pth").is_file()
        assert (out / "adapter" / "adapter_config.json").is_file()
    if stage == "evaluate":
        assert not (out / "checkpoint_last.pth").exists()


def test_config_yaml_is_resolved_and_complete(pipeline, env):
    out = pipeline["stage2"]
    text = (out / "config.yaml").read_text()
    assert "${" not in text
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.run.min_lr == saved.run.init_lr == 3e-3  # the interpolation was written as its value
    assert saved.run.output_dir == str(out)
    assert saved.model.ckpt == str(pipeline["stage1"] / "checkpoint_best.pth")
    assert saved.model.llama_model == str(env.backbone_dir)
    assert saved.run.seed == 42 and saved.model.lora_config.r == 4  # schema defaults and YAML values
    assert load_config(str(out / "config.yaml")) == saved  # the saved file reruns as is


@pytest.mark.parametrize("stage", ["mf", "stage1", "stage2"])
def test_log_and_metrics_jsonl(pipeline, stage):
    out = pipeline[stage]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(len(records)))
    assert len(records) == (4 if stage == "mf" else 2)
    for r in records:
        assert r["split"] == "valid"
        for key in ("step", "train_loss", "auc", "uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc"):
            assert key in r
    log = (out / "log.txt").read_text()
    assert "epoch 0 valid: AUC" in log and "best checkpoint" in log
    # the prompt paths are logged for LLM runs only (a CF model alone has no prompt to run whole)
    assert ("training: " in log) == (stage != "mf") and ("every prompt whole" in log) == (stage == "stage1")


@pytest.mark.parametrize("stage", ["mf", "stage1", "stage2", "evaluate"])
def test_predictions_and_metrics_json(pipeline, env, stage):
    out = pipeline[stage]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "best_epoch" in metrics
    for split in ("valid", "test"):
        m = metrics[split]
        assert {"auc", "uauc", "warm", "cold", "n_rows"} <= set(m)
        for part in ("warm", "cold"):
            assert {"auc", "uauc"} <= set(m[part])
        pred = pd.read_csv(out / f"predictions_{split}.csv")
        data = env.frames[split]
        assert list(pred.columns) == PRED_COLUMNS
        assert len(pred) == len(data) == m["n_rows"]
        for col in ("uid", "iid", "label", "not_cold"):
            np.testing.assert_array_equal(pred[col].to_numpy(), data[col].to_numpy())
        assert abs(roc_auc_score(pred["label"], pred["score"]) - m["auc"]) < 1e-12
        warm = pred["not_cold"] == 1
        assert abs(roc_auc_score(pred["label"][warm], pred["score"][warm]) - m["warm"]["auc"]) < 1e-12
        assert abs(roc_auc_score(pred["label"][~warm], pred["score"][~warm]) - m["cold"]["auc"]) < 1e-12
        per_user = [roc_auc_score(g["label"], g["score"]) for _, g in pred.groupby("uid") if g["label"].nunique() == 2]
        assert abs(np.mean(per_user) - m["uauc"]) < 1e-12


def test_stage2_carries_stage1_lora_and_mf(pipeline):
    s1 = load(str(pipeline["stage1"] / "checkpoint_best.pth"))["model"]
    s2 = load(str(pipeline["stage2"] / "checkpoint_best.pth"))["model"]
    lora = [k for k in s1 if "lora_" in k]
    assert lora and all(torch.equal(s1[k], s2[k]) for k in lora)  # loaded and kept frozen
    assert any(k.startswith("proj.") for k in s2)
    assert any(s1[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # stage 1 did change the adapter


def test_evaluate_only_equals_stage2_test(pipeline):
    trained = json.loads((pipeline["stage2"] / "metrics.json").read_text())
    evaluated = json.loads((pipeline["evaluate"] / "metrics.json").read_text())
    assert abs(evaluated["test"]["auc"] - trained["test"]["auc"]) < 1e-9
    assert evaluated["test"] == trained["test"]
