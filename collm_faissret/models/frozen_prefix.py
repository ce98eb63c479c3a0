"""Stage 2's frozen prompt prefix: the tokens before the first ID slot run once, without gradients.

In stage 2 with LoRA frozen (CoLLM's recipe) the trainable parameters (projector, CF model)
enter the prompt at the ID slots only, so no token before the first slot depends on them.
The whole-prompt forward still keeps those tokens' activations and runs the backward pass
through them: a layer's hidden state is one tensor [B, L, H], and once the slot positions
need a gradient, every position of the next layer's input does. Here the batch is cut at
its earliest first slot c: the prefix [B, c] runs under no_grad into a key/value cache, then
the rest [B, L - c] runs with gradients over that cache (positions c .. L - 1, causal).

One cut per batch, not each row's own first slot: every row's tokens 0 .. c - 1 are real
(right padding, every row has its slots after c), so both parts stay rectangular with no
re-padding and the rest needs only the causal mask shifted by c. Under length bucketing a
batch's rows reach their first slot within a few tokens of each other. Loss and gradients
equal the whole-prompt path (tests: within 1e-5 in fp32 on the LLaMA and Qwen2 fixtures).
"""
import torch
import torch.nn.functional as F

from ..prompts import SLOT_NONE
from .shared_prefix import ATTENTION, _allowed, _cache_kwarg, _prefix_layer_class


def why_whole(model, setting, gradient_checkpointing: bool = False) -> str:
    """'' when ``model`` trains with a frozen prefix under ``run.frozen_prefix`` = setting, else
    the reason every training prompt runs whole."""
    if str(setting) == "off":
        return "run.frozen_prefix is off"
    if not getattr(model, "use_slots", False):
        return "the prompt has no ID slot" if hasattr(model, "use_slots") else "no prompt"
    if any(p.requires_grad for p in model.llm.parameters()):
        return "LM weights (LoRA) train: every token needs its gradient"
    config = model.llm.config
    if config._attn_implementation not in ATTENTION:
        return f"attention {config._attn_implementation!r} takes no mask over a cache"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if gradient_checkpointing:
        return "model.gradient_checkpointing (checkpointed layers take no key/value cache in training)"
    return ""


def split_at(batch) -> int:
    """A collated host batch -> its earliest first ID-slot column c (the frozen prefix's length),
    0 when some row has no slot or the slots start at column 0 (then the batch runs whole)."""
    pos = batch.get("slot_pos")  # [B, 2k] from collate when every row has k of each kind
    if pos is not None and pos.numel():
        return int(pos.min())
    slot = batch.get("slot")
    if slot is None:
        return 0
    has = slot != SLOT_NONE  # [B, L]
    if not bool(has.any(1).all()):
        return 0
    return int(has.int().argmax(1).min())


def frozen_forward(model, batch):
    """CoLLM.forward for a plain (right-padded) batch with ``frozen_len`` = c (``split_at``):
    {"loss", "logits" [B]}, equal to the whole-prompt forward's."""
    from transformers.cache_utils import Cache, DynamicCache  # transformers' import is seconds: not at import

    c = batch["frozen_len"]
    emb = model.inputs_embeds(batch)  # [B, L, H], the slots (all at columns >= c) filled
    n, width = emb.shape[:2]
    dev = emb.device
    body = model._answer_parts()[0]
    name = _cache_kwarg(body)
    with torch.no_grad():  # nothing before column c depends on a trainable parameter
        cache = DynamicCache()
        model.hidden_states(emb[:, :c].detach(), model.body_mask(batch["attention_mask"][:, :c], dev), None,
                            use_cache=True, **{name: cache})
    PrefixLayer = _prefix_layer_class()
    layers = [PrefixLayer(lay.keys, lay.values) for lay in cache.layers]
    q = torch.arange(c, width, device=dev)  # positions of the rest
    k = torch.arange(width, device=dev)
    allowed = (k[None, :] <= q[:, None])[None]  # [1, L - c, L]: causal over the prefix and the rest
    sdpa = model.llm.config._attn_implementation == "sdpa"
    mask = _allowed(allowed, None if sdpa else model.llm.get_input_embeddings().weight.dtype)  # [1, 1, L - c, L]
    hidden = model.hidden_states(emb[:, c:], mask, q[None].expand(n, -1), use_cache=True,
                                 **{name: Cache(layers=layers)})  # [B, L - c, H]
    last = batch["read_pos"] - c
    logits = model.final_scores(hidden[torch.arange(n, device=dev), last], batch)
    loss = None
    if "label" in batch:
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
    return {"loss": loss, "logits": logits}
