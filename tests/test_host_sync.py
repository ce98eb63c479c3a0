"""No host read of a device value in the training step or the scoring forward.

On CUDA, an op whose result the host must read (``.item()``, ``bool(tensor)``,
``nonzero``, ``masked_select``) waits for every queued kernel: one per step
leaves the GPU idle while the host catches up. Those ops go through the
dispatcher on CPU too, so a dispatch mode can count them here, without a GPU.
"""
import collections

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose output value or size the host must know before going on
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive",
              "unique_dim", "repeat_interleave", "bincount"}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn):
    with OpCounter() as counter:
        fn()
    return {op: n for op, n in counter.ops.items() if op in HOST_READS}, counter.ops


def test_training_step_and_scoring_read_nothing_back(stage2_model):
    _, task, model, datasets = stage2_model
    batch = model.collate_fn(datasets["train"].__getitems__([0, 1, 2, 3, 4, 5]))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch must hold padding for the mask path to be exercised"

    def train_step():
        model.train()
        task.train_step(model, batch).backward()

    def score():
        model.eval()
        with torch.inference_mode():
            model(batch)["logits"]

    for fn in (train_step, score):
        reads, ops = host_reads(fn)
        assert sum(ops.values()) > 100, "the dispatch mode saw no work"
        assert reads == {}, f"{fn.__name__}: host reads {reads}"


def test_own_attention_mask_matches_the_library_mask(stage2_model):
    """The 4D mask CoLLM builds gives the Yes-logits and projector gradients that
    transformers' own mask (built from the 2D padding mask) gives."""
    from collm_faissret.models import collm

    _, task, model, datasets = stage2_model
    batch = model.collate_fn(datasets["train"].__getitems__([0, 1, 2, 3, 4, 5]))
    model.eval()  # no LoRA dropout: both passes see the same function

    def logits_and_grads():
        model.zero_grad(set_to_none=True)
        logits = model(batch)["logits"]
        logits.sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    own_logits, own_grads = logits_and_grads()
    original = collm.CoLLM.attention_mask
    collm.CoLLM.attention_mask = lambda self, mask: mask  # hand the 2D mask to transformers
    try:
        lib_logits, lib_grads = logits_and_grads()
    finally:
        collm.CoLLM.attention_mask = original
    model.zero_grad(set_to_none=True)
    assert torch.equal(own_logits, lib_logits), (own_logits - lib_logits).abs().max()
    assert own_grads.keys() == lib_grads.keys() and any(n.startswith("proj.") for n in own_grads)
    for name, g in own_grads.items():
        assert torch.allclose(g, lib_grads[name], atol=1e-6, rtol=1e-5), name


def test_sdpa_mask_on_a_hand_made_batch():
    from collm_faissret.models.collm import sdpa_mask

    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    got = sdpa_mask(mask)
    assert got.shape == (2, 1, 4, 4) and got.dtype == torch.bool
    expected_row0 = torch.tensor([[1, 0, 0, 0],   # padding query: itself only
                                  [0, 1, 0, 0],
                                  [0, 0, 1, 0],   # first token: itself
                                  [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(got[0, 0], expected_row0)
    assert torch.equal(got[1, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_host_mask_shortcuts_give_the_boolean_mask_path_exactly(stage2_model):
    """On the host, an unpadded batch runs SDPA's causal kernel with no mask and a padded one an
    additive float mask: the logits and projector gradients are those of the boolean 4D mask."""
    from collm_faissret.datasets.rec_dataset import UNPADDED
    from collm_faissret.models import collm

    _, task, model, datasets = stage2_model
    ds = datasets["train"]
    lengths = ds.lengths()
    same = np.flatnonzero(lengths == np.bincount(lengths).argmax())[:4].tolist()
    unpadded = model.collate_fn(ds.__getitems__(same))
    padded = model.collate_fn(ds.__getitems__([0, 1, 2, 3, 4, 5]))
    assert UNPADDED in unpadded and len(same) == 4 and UNPADDED not in padded
    model.eval()  # no dropout: every pass sees the same function

    def logits_and_grads(batch):
        model.zero_grad(set_to_none=True)
        logits = model(batch)["logits"]
        logits.sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shortcut = {name: logits_and_grads(b) for name, b in (("unpadded", unpadded), ("padded", padded))}
    original = collm.CoLLM._additive_mask_ok
    collm.CoLLM._additive_mask_ok = lambda self, dtype: False  # the boolean mask, as on a GPU
    try:
        boolean = {"unpadded": logits_and_grads({k: v for k, v in unpadded.items() if k != UNPADDED}),
                   "padded": logits_and_grads(padded)}
    finally:
        collm.CoLLM._additive_mask_ok = original
    model.zero_grad(set_to_none=True)
    for name, (logits, grads) in shortcut.items():
        ref_logits, ref_grads = boolean[name]
        assert torch.equal(logits, ref_logits), (name, (logits - ref_logits).abs().max())
        assert grads.keys() == ref_grads.keys() and any(n.startswith("proj.") for n in grads)
        for param, g in grads.items():
            assert torch.equal(g, ref_grads[param]), (name, param, (g - ref_grads[param]).abs().max())
