"""No host read of a device value in the training step or the scoring forward.

On CUDA, an op whose result the host must read (``.item()``, ``bool(tensor)``,
``nonzero``, ``masked_select``) waits for every queued kernel: one per step
leaves the GPU idle while the host catches up. Those ops go through the
dispatcher on CPU too, so a dispatch mode can count them here, without a GPU.
"""
import collections

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


def test_training_step_and_scoring_read_nothing_back(stage2_model, monkeypatch):
    """With the attention mask a GPU gets (models/collm.py body_mask). On the host the body gets
    none, and transformers then reads back whether its position ids hold packed sequences: a
    read of a host value, which waits for nothing there."""
    from collm_faissret.models.collm import CoLLM

    _, task, model, datasets = stage2_model
    batch = model.collate_fn(datasets["train"].__getitems__([0, 1, 2, 3, 4, 5]))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch must hold padding for the padded path to be exercised"
    gpu_mask = CoLLM.body_mask
    monkeypatch.setattr(CoLLM, "body_mask", lambda self, mask, device: gpu_mask(self, mask, torch.device("cuda")))

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


def _logits_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = model(batch)["logits"]
    logits.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def _assert_same(a, b, atol=1e-6):
    (logits, grads), (ref_logits, ref_grads) = a, b
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
    assert grads.keys() == ref_grads.keys() and any(n.startswith("proj.") for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_no_padding_mask_matches_the_library_mask(stage2_model):
    """Right-padded rows with no mask at all (SDPA's causal kernel, the host's path) give the
    Yes-logits and projector gradients that transformers' own mask, built from the 2D padding
    mask, gives; and so does the causal 4D mask a GPU gets."""
    from collm_faissret.models import collm

    _, task, model, datasets = stage2_model
    batch = model.collate_fn(datasets["train"].__getitems__([0, 1, 2, 3, 4, 5]))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() and torch.equal(batch["read_pos"], lengths - 1)
    model.eval()  # no LoRA dropout: every pass sees the same function
    assert model.body_mask(batch["attention_mask"], torch.device("cpu")) is None
    own = _logits_and_grads(model, batch)
    original = collm.CoLLM.body_mask
    try:
        collm.CoLLM.body_mask = lambda self, mask, device: mask  # hand the 2D mask to transformers
        library = _logits_and_grads(model, batch)
        # what a GPU gets with SDPA (built here on the host's tensors)
        collm.CoLLM.body_mask = lambda self, mask, device: original(self, mask, torch.device("cuda"))
        causal = _logits_and_grads(model, batch)
    finally:
        collm.CoLLM.body_mask = original
    _assert_same(own, library)
    _assert_same(own, causal)


def test_gpu_body_mask_is_the_causal_mask():
    from types import SimpleNamespace

    from collm_faissret.models.collm import CoLLM

    config = SimpleNamespace(_attn_implementation="sdpa", sliding_window=None)
    holder = SimpleNamespace(llm=SimpleNamespace(config=config))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    got = CoLLM.body_mask(holder, mask, torch.device("cuda"))
    assert got.shape == (1, 1, 4, 4) and got.dtype == torch.bool
    assert torch.equal(got[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert CoLLM.body_mask(holder, mask, torch.device("cpu")) is None
    config._attn_implementation = "eager"  # the library builds its own from the 2D mask
    assert CoLLM.body_mask(holder, mask, torch.device("cuda")) is mask
