"""Which precision a run computes in: bf16 autocast where the device has bf16 units, else fp32.

CUDA: autocast with ``run.amp``, in bf16 where the GPU has it natively, else (T4, V100) in
fp16 with loss scaling; in the weights' dtype when model.dtype is 16-bit. CPU: bf16 autocast
with ``run.amp`` and ``run.cpu_amp`` when the CPU has bf16 matrix units (AMX, AVX512-BF16); elsewhere
autocast to bf16 is emulated and slower than fp32, so the run stays in fp32. Parameters,
optimizer state, loss and the answer logits stay fp32 either way (autocast only changes
what the matmuls compute in).

Measured on the project's 2-core CPU (AMX): SmolLM2-135M scoring 2.8x the fp32 rows/s, a
stage-2 training step at batch 16 1.6x (docs/benchmarks.md, bench/train_throughput.py).
"""
import functools

import torch

# /proc/cpuinfo flags, best first: the name the log gives for each
CPU_BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))


@functools.cache
def cpu_bf16_units() -> str:
    """The CPU's bf16 matrix units by name ("AMX", "AVX512-BF16"), or "" when it has none."""
    try:
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
    except (AttributeError, RuntimeError):  # a private helper: older or other builds may lack it
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set()
            for line in fh:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: no flags to read, so no claim of bf16 units
        return ""
    return next((name for flag, name in CPU_BF16_FLAGS if flag in flags), "")


def cuda_bf16_native() -> bool:
    """Whether the current GPU computes bf16 natively (Ampere and later). T4 / V100 only emulate
    it, slowly, and ``torch.cuda.is_bf16_supported()`` counts emulation as support."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the keyword: its answer did not count emulation then
        return bool(torch.cuda.is_bf16_supported())


def cuda_half_dtype() -> tuple:
    """(the 16-bit dtype a GPU computes in, why): bf16 where native, else fp16 (which needs
    loss scaling in training: runners/train_loop.py ``loss_scaler``)."""
    if cuda_bf16_native():
        return torch.bfloat16, "native bf16"
    return torch.float16, "bf16 only emulated on this GPU: fp16"


def autocast_plan(amp: bool, device: torch.device, units=None, weights=None, cpu: bool = False) -> tuple:
    """(autocast dtype or None for fp32, why) of a run with ``run.amp`` = amp and ``run.cpu_amp``
    = cpu on ``device``.

    units: the CPU's bf16 units (``cpu_bf16_units()`` when None; tests pass "" or a name).
    weights: the LM weights' dtype (model.dtype resolved): on CUDA autocast computes in it when
    it is 16-bit, so fp16 weights never meet a bf16 autocast; fp32 weights take the GPU's
    ``cuda_half_dtype``. A CPU with bf16 units stays fp32 unless ``cpu``: what bf16 training
    does to AUC is not measured yet (docs/benchmarks.md, "CPU speed-ups").
    """
    if not amp:
        return None, "run.amp is false"
    if device.type == "cuda":
        if weights in (torch.float16, torch.bfloat16):
            return weights, f"CUDA, model.dtype {'fp16' if weights == torch.float16 else 'bf16'}"
        dtype, why = cuda_half_dtype()
        return dtype, f"CUDA, {why}"
    if device.type != "cpu":
        return None, f"no autocast on {device.type}"
    units = cpu_bf16_units() if units is None else units
    if not units:
        return None, "no bf16 units on this CPU (autocast would be emulated, slower than fp32)"
    if cpu:
        return torch.bfloat16, f"CPU has {units}"
    return None, f"run.cpu_amp is false (this CPU has {units}: run.cpu_amp=true trains under bf16 autocast)"


def describe(dtype, why: str) -> str:
    """One log phrase: "bf16 autocast (CPU has AMX)" / "fp32 (run.amp is false)"."""
    if dtype is None:
        return f"fp32 ({why})"
    return f"{'fp16' if dtype == torch.float16 else 'bf16'} autocast ({why})"
