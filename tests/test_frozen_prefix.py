"""Stage 2's frozen prefix (models/frozen_prefix.py): the prompt before the first ID slot runs
once without gradients, the rest with gradients over its key/value cache. Loss and the
projector's gradients must equal the whole-prompt path within 1e-5 in fp32."""
import json

import backbone_layouts
import pytest
import torch
from conftest import REPO, cli_args, load_model

from collm_faissret.models.frozen_prefix import split_at, why_whole
from collm_faissret.precision import autocast_plan


def _batches(model, ds, batch_size=8, n=3):
    """n collated training batches of similar lengths (as length bucketing makes them)."""
    order = ds.lengths().argsort(kind="stable")
    return [model.collate_fn(ds.__getitems__(order[i * batch_size:(i + 1) * batch_size].tolist()))
            for i in range(n)]


def _loss_and_grads(model, batch, frozen):
    model.zero_grad(set_to_none=True)
    batch = dict(batch)
    if frozen:
        batch["frozen_len"] = split_at(batch)
        assert batch["frozen_len"] > 0
    out = model(batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out["loss"].detach(), out["logits"].detach(), grads


def _check_equal(model, ds, tol=1e-5):
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("proj.", "cf.")) or n in ("cf_weight", "llm_weight") for n in trainable)
    assert why_whole(model, "auto") == ""
    for batch in _batches(model, ds):
        c = split_at(batch)
        lens = batch["read_pos"] + 1
        assert c < int(lens.min())  # the rest holds every row's slots and answer
        loss0, logits0, g0 = _loss_and_grads(model, batch, False)
        loss1, logits1, g1 = _loss_and_grads(model, batch, True)
        assert abs(float(loss0 - loss1)) <= tol
        assert (logits0 - logits1).abs().max() <= tol
        for name in g0:
            scale = max(float(g0[name].abs().max()), 1.0)
            assert (g0[name] - g1[name]).abs().max() <= tol * scale, name


STAGE2 = ("model.freeze_lora=true", "model.lora_config.dropout=0.0")


@pytest.mark.parametrize("options", [
    (),
    ("model.answer_score=yes_minus_no",),
    ("model.answer_score=hybrid",),  # the CF model's logit beside the LLM's: cf_weight's gradient too
    ("model.answer_score=hybrid", "model.hybrid_llm_weight=0.5"),  # and llm_weight's
    ("model.proj_token_num=8",),
    ("model.lora_config.use_lora=false",),
    ("model.freeze_rec=false",),  # the CF model trains too: still nothing before the first slot
])
def test_llama_loss_and_gradients_equal_the_whole_prompt(env, tmp_path, options):
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run"), *STAGE2, *options)
    _check_equal(model, datasets["train"])


def test_cold_start_rows_equal_the_whole_prompt(env, tmp_path):
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run"), *STAGE2,
                                       "model.cold_start.enabled=true")
    ds = datasets["test"]  # cold users and items: their vectors are borrowed
    assert (ds.not_cold == 0).any()
    _check_equal(model, ds)


def test_left_padding_tokenizer_changes_nothing(env, tmp_path):
    """collate pads on the right whatever the tokenizer's side (LLaMA's pads left)."""
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run"), *STAGE2)
    model.tokenizer.padding_side = "left"
    _check_equal(model, datasets["train"])


def test_qwen2_loss_and_gradients_equal_the_whole_prompt(env, tmp_path):
    texts = [t for df in env.frames.values() for t in df["title"]] + [(REPO / "prompt" / "stage2_movie.txt")
                                                                      .read_text()] * 20
    qwen = backbone_layouts.qwen2(texts, str(tmp_path / "qwen2"))
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run", llama_model=qwen), *STAGE2,
                                       "model.proj_token_num=8")
    assert type(model.llm.get_base_model()).__name__ == "Qwen2ForCausalLM"
    _check_equal(model, datasets["train"])


def test_eager_attention_equal_the_whole_prompt(env, tmp_path):
    _, _, model, datasets = load_model(env.config("stage2", tmp_path / "run"), *STAGE2)
    model.llm.config._attn_implementation = "eager"
    _check_equal(model, datasets["train"])


def test_whole_prompt_when_something_before_the_slots_trains(env, tmp_path):
    _, _, s1, _ = load_model(env.config("stage1", tmp_path / "s1"))
    assert why_whole(s1, "auto") == "the prompt has no ID slot"
    _, _, lora, _ = load_model(env.config("stage2", tmp_path / "s2"), "model.freeze_lora=false")
    assert "LoRA" in why_whole(lora, "auto")
    _, _, frozen, _ = load_model(env.config("stage2", tmp_path / "s3"), *STAGE2)
    assert why_whole(frozen, "off") == "run.frozen_prefix is off"
    assert "gradient_checkpointing" in why_whole(frozen, "auto", gradient_checkpointing=True)


def _train(env, out, *options):
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage2", out), "model.freeze_lora=true", "run.max_epoch=1",
                                   *options))
    log = (out / "log.txt").read_text()
    assert rc == 0, log[-2000:]
    return json.loads((out / "metrics.json").read_text()), log


def test_a_run_logs_its_path_and_trains_as_the_whole_prompt(env, tmp_path):
    """fp32: a run with the frozen prefix scores as one with every prompt whole (same seed; the
    gradients agree to rounding, so the metrics agree closely, not bit for bit)."""
    m_frozen, log_frozen = _train(env, tmp_path / "frozen", "run.amp=false", "model.lora_config.dropout=0.0")
    m_whole, log_whole = _train(env, tmp_path / "whole", "run.amp=false", "model.lora_config.dropout=0.0",
                                "run.frozen_prefix=off")
    assert "runs once per batch without gradients (frozen prefix)" in log_frozen
    assert "every prompt whole (run.frozen_prefix is off)" in log_whole
    assert "precision: training fp32 (run.amp is false)" in log_whole
    for split in ("valid", "test"):
        assert abs(m_frozen[split]["auc"] - m_whole[split]["auc"]) < 1e-3, split


def test_amp_run_logs_its_precision(env, tmp_path):
    dtype, why = autocast_plan(True, torch.device("cpu"), cpu=True)
    _, log = _train(env, tmp_path / "amp", "run.amp=true", "run.cpu_amp=true")
    if dtype is None:
        assert f"precision: training fp32 ({why})" in log
    else:
        assert f"precision: training bf16 autocast ({why}); scoring fp32 (run.amp_scoring auto: fp32 " \
               "scoring on CPU)" in log


def test_compile_failure_falls_back_to_eager_with_one_line(env, tmp_path, monkeypatch):
    """run.compile=on with a compiler that fails: one warning line, the layers eager again, and
    the run finishes with the metrics of an eager run (auto stays eager: one line says why)."""
    from collm_faissret.models import compiled

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    def compile_broken(llm):
        lm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        for layer in lm.get_decoder().layers:
            layer.compile(backend=broken)
        return len(lm.get_decoder().layers)

    monkeypatch.setattr(compiled, "compile_layers", compile_broken)
    m_broken, log = _train(env, tmp_path / "broken", "run.amp=false", "run.compile=on")
    m_eager, log_eager = _train(env, tmp_path / "eager", "run.amp=false")
    assert "compile: decoder layers compiled (run.compile is on)" in log
    failed = [line for line in log.splitlines() if "compile failed" in line]
    assert len(failed) == 1 and "decoder layers eager from here on" in failed[0]
    assert "compile: eager (run.compile auto: eager" in log_eager
    assert m_broken["test"]["auc"] == m_eager["test"]["auc"]
