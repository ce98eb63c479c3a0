"""MF and projector; which parameters each stage trains; stage checks; answer tokens; padding."""
import contextlib
import copy
import warnings

import pytest
import torch
from conftest import cli_args

from collm_faissret import registry
from collm_faissret.config_loader import load_config
from collm_faissret.models import StageError
from collm_faissret.models.backbone import BackboneError, answer_token_id
from collm_faissret.models.cf import CFConfig, CFWeightsError
from collm_faissret.models.cf.mf import MF
from collm_faissret.models.collm_build import check_stage
from collm_faissret.models.fece import Projector
from collm_faissret.runners.runner_base import RunnerBase, prepare_output_dir


def test_mf_shapes_score_loss_and_sparse_gradients():
    torch.manual_seed(0)
    mf = MF(5, 7, CFConfig(embedding_size=8))
    batch = {"uid": torch.tensor([0, 3, 3]), "iid": torch.tensor([1, 6, 2]), "label": torch.tensor([1, 0, 1])}
    assert mf.user_embed(batch).shape == (3, 8)
    assert mf.item_embed(torch.tensor([1, 2, 3, 4])).shape == (4, 8)
    out = mf(batch)
    manual = (mf.user.weight[batch["uid"]] * mf.item.weight[batch["iid"]]).sum(-1)
    assert out["logits"].shape == (3,)
    assert torch.allclose(out["logits"], manual)
    p = torch.sigmoid(manual)
    y = batch["label"].float()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.allclose(out["loss"], bce, atol=1e-6)
    out["loss"].backward()
    user_rows_with_grad = set(mf.user.weight.grad.abs().sum(-1).nonzero().flatten().tolist())
    item_rows_with_grad = set(mf.item.weight.grad.abs().sum(-1).nonzero().flatten().tolist())
    assert user_rows_with_grad == {0, 3}
    assert item_rows_with_grad == {1, 2, 6}


def test_mf_weight_file_checks(tmp_path):
    mf = MF(5, 7, CFConfig(embedding_size=8))
    path = tmp_path / "cf.pth"
    torch.save(mf.weights_payload(), path)
    other = MF(5, 7, CFConfig(embedding_size=8))
    other.load_pretrained(str(path))
    assert torch.equal(other.user.weight, mf.user.weight) and torch.equal(other.item.weight, mf.item.weight)
    with pytest.raises(CFWeightsError, match="n_users=5 but the data/config give 6"):
        MF(6, 7, CFConfig(embedding_size=8)).load_pretrained(str(path))
    with pytest.raises(CFWeightsError, match="dim=8 but the data/config give 4"):
        MF(5, 7, CFConfig(embedding_size=4)).load_pretrained(str(path))


def test_projector_shapes_and_gradients():
    torch.manual_seed(0)
    proj = Projector(8, 32, token_num=3, mid_times=2)
    x = torch.randn(4, 8, requires_grad=True)
    out = proj(x)
    assert out.shape == (4, 3, 32)
    flat = proj.mlp(x)
    for j in range(3):  # token j is the j-th block of llm_dim outputs
        assert torch.equal(out[:, j], flat[:, j * 32:(j + 1) * 32])
    out.pow(2).sum().backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0  # a trainable CF model would get gradients too


def _train_and_diff(cfg_path, *options):
    """Build a run, train it through the runner's loop, return (model, before, changed names)."""
    cfg = load_config(cfg_path, list(options))
    task = registry.get("task", cfg.run.task)(cfg)
    runner = RunnerBase(cfg, task, torch.device("cpu"))
    prepare_output_dir(runner.out)
    runner._build()
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
    runner.train()
    after = dict(runner.model.named_parameters())
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    return runner.model, before, changed


def test_amp_context_follows_the_run_config_it_is_given(env, tmp_path, monkeypatch):
    """bf16 autocast on CUDA with run.amp, and on a CPU with bf16 units (training; scoring stays
    fp32 there unless run.amp_scoring=on); nothing on a CPU without them or without run.amp;
    derived when the run config is set, including a config switched in later (benchmarks do)."""
    from collm_faissret import precision

    cfg = load_config(env.config("stage2", tmp_path / "s2"), ["run.amp=true"])
    task = registry.get("task", cfg.run.task)(cfg)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "")
    host = RunnerBase(cfg, task, torch.device("cpu"))
    assert isinstance(host.amp_ctx(), contextlib.nullcontext)
    assert isinstance(host.score_ctx(), contextlib.nullcontext)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX")
    auto = RunnerBase(cfg, task, torch.device("cpu"))  # run.cpu_amp false: fp32 on any CPU
    assert isinstance(auto.amp_ctx(), contextlib.nullcontext)
    cfg = load_config(env.config("stage2", tmp_path / "s2"), ["run.amp=true", "run.cpu_amp=true"])
    amx = RunnerBase(cfg, task, torch.device("cpu"))
    ctx = amx.amp_ctx()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    assert isinstance(amx.score_ctx(), contextlib.nullcontext)
    assert amx._amp_why == "CPU has AMX"
    amx.run_cfg = load_config(env.config("stage2", tmp_path / "s2"),
                              ["run.amp=true", "run.cpu_amp=true", "run.amp_scoring=on"]).run
    assert isinstance(amx.score_ctx(), torch.autocast)
    monkeypatch.setattr(precision, "cuda_bf16_native", lambda: True)  # an A100/H100 (faked)
    gpu = RunnerBase(cfg, task, torch.device("cuda"))  # builds nothing on the device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns and disables itself where CUDA is absent
        ctx = gpu.amp_ctx()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(gpu.score_ctx(), torch.autocast)  # amp_scoring auto: as training on CUDA
    off = load_config(env.config("stage2", tmp_path / "s2"), ["run.amp=false"])  # configs are read-only
    gpu.run_cfg = off.run
    assert gpu.run_cfg is off.run and isinstance(gpu.amp_ctx(), contextlib.nullcontext)


def test_stage1_trains_only_lora(env, tmp_path):
    model, before, changed = _train_and_diff(env.config("stage1", tmp_path / "s1"), "run.iters_per_epoch=3",
                                             "run.weight_decay=0.1")
    lora = {n for n in before if "lora_" in n}
    assert lora and changed == lora
    assert model.proj is None and model.cf is None
    assert not any(n.startswith(("proj.", "cf.")) for n in before)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora


def test_stage2_trains_only_projector(env, tmp_path):
    model, before, changed = _train_and_diff(env.config("stage2", tmp_path / "s2"), "run.iters_per_epoch=3",
                                             "run.weight_decay=0.1")
    proj = {n for n in before if n.startswith("proj.")}
    assert proj and changed == proj
    assert {n for n in before if "lora_" in n}  # LoRA is attached, frozen
    assert {n for n in before if n.startswith("cf.")} == {"cf.user.weight", "cf.item.weight"}
    mf = torch.load(env.mf_weights, weights_only=True)["state_dict"]  # the pretrained MF, untouched
    assert torch.equal(model.cf.user.weight, mf["user.weight"]) and torch.equal(model.cf.item.weight, mf["item.weight"])


def test_stage2_with_trainable_cf_trains_projector_and_cf(env, tmp_path):
    _, before, changed = _train_and_diff(env.config("stage2", tmp_path / "s2rec"), "run.iters_per_epoch=3",
                                         "model.freeze_rec=false")
    assert changed == {n for n in before if n.startswith(("proj.", "cf."))}


def _model_cfg(path, *options):
    """The validated ``model`` section of a config file."""
    cfg = load_config(path, list(options))
    return cfg.model


def test_check_stage_accepts_the_documented_stages(env, tmp_path):
    assert check_stage(_model_cfg(env.config("stage1", tmp_path)), False, False) == (True, False, False)
    assert check_stage(_model_cfg(env.config("stage2", tmp_path)), True, False) == (False, True, False)
    assert check_stage(_model_cfg(env.config("evaluate", tmp_path)), True, True) == (False, False, False)


@pytest.mark.parametrize("stage, options, has_slots, match", [
    ("stage1", ["model.freeze_proj=false"], False, "freeze_proj is false but .*stage1_movie.txt has no"),
    ("stage1", ["model.freeze_rec=false"], False, "freeze_rec is false but .* has no ID slot"),
    ("stage2", ["model.freeze_proj=true"], True, "nothing is trainable"),
    ("stage1", ["model.lora_config.use_lora=false"], False, "freeze_lora is false but model.lora_config.use_lora"),
    ("stage2", ["model.rec_config.pretrained_path=null"], True, "pretrained_path is not set"),
])
def test_contradictory_stages_raise(env, tmp_path, stage, options, has_slots, match):
    with pytest.raises(StageError, match=match):
        check_stage(_model_cfg(env.config(stage, tmp_path), *options), has_slots, False)


def test_evaluate_only_may_freeze_everything(env, tmp_path):
    mcfg = _model_cfg(env.config("evaluate", tmp_path), "model.rec_config.pretrained_path=null",
                      "model.ckpt=some.pth")
    assert check_stage(mcfg, True, True) == (False, False, False)


def test_stage_error_through_cli(env, tmp_path, capsys):
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage1", tmp_path / "bad"), "model.freeze_proj=false"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: model.freeze_proj is false")


def test_answer_token_ids_come_from_tokenizer(stage2_model, tokenizer):
    model = stage2_model[2]
    # the demo's word-level tokenizer: "Answer: Yes" -> [..., ":", "Yes"]
    assert model.yes_id == tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    assert model.no_id == tokenizer("No", add_special_tokens=False)["input_ids"][0]
    assert tokenizer.convert_ids_to_tokens([model.yes_id, model.no_id]) == ["Yes", "No"]
    with pytest.raises(BackboneError, match="'Zebra' is an unknown token"):
        answer_token_id(tokenizer, "Zebra", "#Answer:")


def test_score_independent_of_padding(stage2_model):
    _, task, model, datasets = stage2_model
    model = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero LoRA, so the adapter path is part of the check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    model.eval()
    ds = datasets["test"]
    lengths = ds.lengths()
    order = lengths.argsort(kind="stable")
    short, longest = int(order[0]), int(order[-1])
    assert lengths[longest] - lengths[short] >= 5

    def logits(rows):
        with torch.no_grad():
            return model(model.collate_fn(ds.__getitems__(rows)))["logits"]

    alone = logits([short])
    padded = logits([longest, short])
    mixed = logits([int(order[len(order) // 2]), short, longest])
    assert torch.allclose(alone[0], padded[1], atol=1e-5, rtol=0)
    assert torch.allclose(alone[0], mixed[1], atol=1e-5, rtol=0)
    assert torch.allclose(logits([longest])[0], padded[0], atol=1e-5, rtol=0)
    # and the logit is the Yes-token logit at the last position of the plain LM output
    batch = model.collate_fn(ds.__getitems__([short]))
    with torch.no_grad():
        ref = model.llm(inputs_embeds=model.inputs_embeds(batch)).logits[0, -1, model.yes_id]
    assert torch.allclose(alone[0], ref, atol=1e-5, rtol=0)
