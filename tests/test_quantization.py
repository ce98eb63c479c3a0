"""8-bit and 4-bit (NF4) backbones through bitsandbytes on CPU: stage 1 and stage 2
train with finite, falling loss; checkpoints hold only the adapter and projector;
evaluate-only reloads them onto a freshly quantized backbone and scores every row
exactly as the training run's final evaluation did."""
import json
import math
import sys

import pandas as pd
import pytest
import torch
from _reliability import error_line
from conftest import cli_args, load_model

import train_collm
from collm_faissret.checkpoint import load

pytest.importorskip("bitsandbytes")

# 12 micro-steps at batch 8, a log line every 4: three points of the loss curve
RUN = ("run.iters_per_epoch=12", "run.log_freq=4", "run.batch_size_eval=64", "run.init_lr=1e-2",
       "run.warmup_steps=0", "run.min_lr=1e-2")


def _curve(out):
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return [loss for _, loss in record["train_loss_steps"]]


@pytest.mark.parametrize("quant", ["int8", "nf4"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_quantized_stage_trains_saves_and_reloads(env, tmp_path, stage, quant):
    out = tmp_path / "train"
    assert train_collm.main(cli_args(env.config(stage, out, quantization=quant), *RUN)) == 0
    curve = _curve(out)
    assert len(curve) == 3 and all(math.isfinite(x) for x in curve), curve
    assert curve[-1] < curve[0], curve

    ckpt = load(str(out / "checkpoint_best.pth"))
    groups = {k.split(".")[0] for k in ckpt["model"]}
    assert groups == ({"llm"} if stage == "stage1" else {"llm", "proj"})
    assert all("lora_" in k for k in ckpt["model"] if k.startswith("llm."))  # no quantized base weight
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())

    again = tmp_path / "evaluate"
    cfg = env.config("evaluate" if stage == "stage2" else stage, again, quantization=quant)
    assert train_collm.main(cli_args(cfg, f"model.ckpt={out / 'checkpoint_best.pth'}", "run.evaluate=true",
                                     "run.batch_size_eval=64")) == 0
    for split in ("valid", "test"):
        first = pd.read_csv(out / f"predictions_{split}.csv")
        second = pd.read_csv(again / f"predictions_{split}.csv")
        assert len(first) == len(env.frames[split])
        pd.testing.assert_frame_equal(first, second)
    assert json.loads((again / "metrics.json").read_text())["test"] == \
        json.loads((out / "metrics.json").read_text())["test"]


@pytest.mark.parametrize("keys, linear", [({"quantization": "nf4"}, "Linear4bit"),
                                          ({"low_resource": True}, "Linear8bitLt")])
def test_quantized_layers_and_full_precision_parts(env, tmp_path, keys, linear):
    """The backbone's linear layers are bitsandbytes' (low_resource: CoLLM's key = int8);
    LoRA, projector and CF model stay fp32, and only they can train."""
    _, _, model, _ = load_model(env.config("stage2", tmp_path, **keys))
    q_proj = model.llm.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == linear
    assert q_proj.base_layer.weight.dtype in (torch.int8, torch.uint8)
    for name, p in list(model.proj.named_parameters()) + list(model.cf.named_parameters()):
        assert p.dtype == torch.float32, name
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"proj"}


@pytest.mark.parametrize("keys, message", [
    ({"quantization": "int4"}, "key model.quantization: Invalid value 'int4', expected one of [none, int8, nf4]"),
    ({"quantization": "nf4", "low_resource": True}, "model.low_resource: true is CoLLM's 8-bit loading"),
])
def test_bad_quantization_settings_are_one_line_errors(env, tmp_path, capsys, keys, message):
    out = tmp_path / "run"
    assert train_collm.main(cli_args(env.config("stage1", out, **keys))) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not (out / "config.yaml").exists()


def test_missing_bitsandbytes_is_a_one_line_error(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as on a machine without it
    assert train_collm.main(cli_args(env.config("stage1", tmp_path / "run", quantization="int8"))) == 2
    line = error_line(capsys.readouterr().err)
    assert "model.quantization int8 needs the bitsandbytes package" in line
