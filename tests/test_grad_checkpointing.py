"""model.gradient_checkpointing: the LLM keeps far fewer activations for the backward pass,
and stage 1 (LoRA) and stage 2 (projector, fed through inputs_embeds) get the same
gradients as without it."""
import pytest
import torch
from conftest import load_model
from torch.autograd.graph import saved_tensors_hooks


def _grads_and_saved(cfg_path, *options):
    """(grads of the trainable parameters, elements autograd saved in the forward) for one batch.

    Saved elements measure what checkpointing is for; counting layer calls would
    not do: transformers recomputes a layer's forward without its module hooks.
    """
    _, task, model, datasets = load_model(cfg_path, "model.lora_config.dropout=0.0", *options)
    batch = model.collate_fn(datasets["train"].__getitems__(list(range(8))))
    saved = [0]

    def pack(t):
        saved[0] += t.numel()
        return t

    model.train()
    with saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch)["loss"]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads, saved[0]


@pytest.mark.parametrize("stage, group", [("stage1", "lora_B"), ("stage2", "proj.")])
def test_checkpointing_saves_memory_and_keeps_gradients(env, tmp_path, stage, group):
    cfg = env.config(stage, tmp_path / stage)
    torch.manual_seed(0)
    plain, plain_saved = _grads_and_saved(cfg)
    torch.manual_seed(0)
    ckpt, ckpt_saved = _grads_and_saved(cfg, "model.gradient_checkpointing=true")
    assert ckpt_saved < plain_saved / 2, (ckpt_saved, plain_saved)
    assert set(ckpt) == set(plain) and any(group in n for n in plain)
    for name, g in plain.items():
        assert ckpt[name] is not None, f"{name}: no gradient with checkpointing"
        assert torch.allclose(ckpt[name], g, atol=1e-6), name
    assert any(ckpt[n].abs().sum() > 0 for n in ckpt if group in n)


def test_checkpointing_switch_of_older_transformers():
    """transformers releases before the rename only have gradient_checkpointing_enable."""
    from collm_faissret.models.collm_build import enable_checkpointing

    calls = []

    class OldModel:
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(gradient_checkpointing_kwargs)

    enable_checkpointing(OldModel())
    assert calls == [{"use_reentrant": False}]
