"""Which precision a run computes in (collm_faissret/precision.py), on devices faked where this
machine lacks them: GPUs with native or emulated bf16, CPUs with or without bf16 units."""
import torch

from collm_faissret import env, precision
from collm_faissret.models.backbone import resolve_dtype
from collm_faissret.runners.train_loop import loss_scaler

CUDA = torch.device("cuda")


def _gpu(monkeypatch, native: bool):
    """A GPU whose bf16 is native (A100/H100) or only emulated (T4/V100: is_bf16_supported()
    counts emulation and says True; including_emulation=False says False)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)


def test_emulated_bf16_gpu_computes_in_fp16(monkeypatch):
    _gpu(monkeypatch, native=False)
    assert resolve_dtype("auto", CUDA) == torch.float16
    dtype, why = precision.autocast_plan(True, CUDA)
    assert dtype == torch.float16 and "emulated" in why
    # fp16 weights on any GPU: autocast in fp16, never bf16 over fp16 weights
    _gpu(monkeypatch, native=True)
    assert precision.autocast_plan(True, CUDA, weights=torch.float16)[0] == torch.float16
    assert precision.autocast_plan(True, CUDA, weights=torch.bfloat16)[0] == torch.bfloat16


def test_native_bf16_gpu_as_before(monkeypatch):
    _gpu(monkeypatch, native=True)
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    assert precision.autocast_plan(True, CUDA) == (torch.bfloat16, "CUDA, native bf16")
    assert precision.autocast_plan(False, CUDA) == (None, "run.amp is false")


def test_cpu_autocast_needs_bf16_units():
    cpu = torch.device("cpu")
    assert precision.autocast_plan(True, cpu, units="AMX", cpu=True) == (torch.bfloat16, "CPU has AMX")
    dtype, why = precision.autocast_plan(True, cpu, units="AMX")  # bf16 training asked for by name
    assert dtype is None and "run.cpu_amp=true trains under bf16 autocast" in why
    dtype, why = precision.autocast_plan(True, cpu, units="", cpu=True)
    assert dtype is None and "no bf16 units" in why
    assert precision.describe(torch.bfloat16, "CPU has AMX") == "bf16 autocast (CPU has AMX)"
    assert precision.describe(torch.float16, "CUDA") == "fp16 autocast (CUDA)"
    assert precision.describe(None, "run.amp is false") == "fp32 (run.amp is false)"


def test_fp16_autocast_gets_a_loss_scaler():
    model = torch.nn.Linear(2, 2)  # fp32 weights: only the autocast dtype asks for scaling
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns and disables itself where CUDA is absent
        assert isinstance(loss_scaler(model, CUDA, torch.float16), torch.amp.GradScaler)
    assert loss_scaler(model, CUDA, torch.bfloat16) is None
    assert loss_scaler(model, torch.device("cpu"), torch.bfloat16) is None


def test_env_says_which_precision(monkeypatch):
    facts = {"cuda": True, "bf16": True, "bf16_native": False, "cpu_bf16": "", "devices": ["cuda:0 Tesla T4"],
             "faiss_gpu": False, "faiss_version": "1", "device": "cuda", "dtype": "fp16", "index": "flat"}
    versions = {k: "1" for k in env.PACKAGES}
    lines = env.report_lines(versions, facts)
    assert "bf16 on CUDA: emulated only: model.dtype auto and run.amp compute in fp16 (loss scaling in training)" \
        in lines
    facts.update(bf16_native=True, cpu_bf16="AMX")
    lines = env.report_lines(versions, facts)
    assert any(line.startswith("bf16 on CUDA: yes (native)") for line in lines)
    assert "bf16 on this CPU: yes (AMX): run.cpu_amp=true trains under bf16 autocast" in lines


def test_env_flags_fsdp_in_fp16(env_cfg=None):
    from omegaconf import OmegaConf

    from collm_faissret.config import Config

    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"run": {"output_dir": "x", "distributed": "fsdp"},
                                                         "model": {"arch": "MF"}})
    facts = {"cuda": True, "bf16": True, "bf16_native": False}
    versions = {k: "1" for k in env.PACKAGES}
    problems = env.config_problems(cfg, facts, versions)
    assert any("run.distributed fsdp computes in fp16" in p for p in problems)
    facts["bf16_native"] = True
    assert not any("fsdp" in p for p in env.config_problems(cfg, facts, versions))
