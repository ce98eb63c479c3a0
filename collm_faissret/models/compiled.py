"""``run.compile``: the LM's decoder layers compiled with torch.compile (inductor).

In an eager bf16 forward on a CPU with AMX the element-wise ops of RMSNorm, rotary embeddings
and SwiGLU took 45% of the time, and compiling a whole-prompt body took a training step from
3.54 to 2.48 s (a probe outside the project); compilation fuses them. ``on`` compiles each
decoder layer (``nn.Module.compile``: the same module objects, so LoRA, FSDP, checkpoints and
parameter names are untouched) with dynamic shapes, since batch widths vary from step to step.

``auto`` stays eager: on the paths the framework runs (a frozen prefix's key/value cache,
shared-prefix scoring) compilation has not been measured to pay. bench/cpu_speedups.py
--changes compile measured, on a 2-core AVX2 CPU in fp32, stage-2 training at batch 4: layers
compiled 1.03x (dynamo keeps one cache per code object, which the 30 layers share, and
recompiles per layer index up to its limit, then runs the rest eager); the body compiled
whole did not finish compiling in 13 minutes. docs/benchmarks.md has the figures.
"""


def decide(setting) -> tuple:
    """(compile or not, why) for ``run.compile`` = setting."""
    setting = str(setting)
    if setting == "on":
        return True, "run.compile is on"
    if setting == "off":
        return False, "run.compile is off"
    return False, "run.compile auto: eager, compilation not measured to pay on these paths (docs/benchmarks.md)"


def compile_layers(llm) -> int:
    """Compile every decoder layer of ``llm`` (a causal LM, under a peft wrapper or not) in place;
    returns how many (0 when the body keeps its layers under another name)."""
    lm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    layers = getattr(lm.get_decoder(), "layers", None) or []
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def uncompile_layers(llm) -> None:
    """Undo ``compile_layers``: every decoder layer eager again (after a failed compilation)."""
    lm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    for layer in getattr(lm.get_decoder(), "layers", None) or []:
        layer._compiled_call_impl = None


def is_compile_error(err) -> bool:
    """Whether ``err`` was raised by torch.compile's machinery (dynamo tracing, inductor's
    code generation or the C++ compiler), not by the model's own code."""
    import torch

    kinds = [getattr(torch._dynamo.exc, "TorchDynamoException", None)]
    inductor = getattr(torch, "_inductor", None)
    kinds.append(getattr(getattr(inductor, "exc", None), "InductorError", None))
    return isinstance(err, tuple(k for k in kinds if k is not None))
