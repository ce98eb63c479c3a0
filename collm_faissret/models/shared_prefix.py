"""Scoring packed rows (datasets/packing.py): one forward over prefix + suffixes.

``run.shared_prefix: auto`` packs the rows of a batch that share everything
before the target title; ``why_plain`` says when a model or template cannot
(then every row is scored whole, as with ``off``).
"""
import torch
import torch.nn.functional as F

from .. import registry
from ..prompts import SLOT_ITEM, SLOT_USER

ATTENTION = ("sdpa", "eager")  # implementations that take a 4D mask as given


def why_plain(model, setting) -> str:
    """'' when ``model`` may score shared prefixes under ``run.shared_prefix`` = setting, else
    the reason it scores every prompt whole."""
    if str(setting) == "off":
        return "run.shared_prefix is off"
    prompts = getattr(model, "prompts", None)
    if prompts is None:
        return "no prompt"
    if not prompts.target_last:
        return "the template does not put the target after the user's part"
    cf = getattr(model, "cf", None)
    if cf is not None and registry.get("cf_model", cf.name).target_aware:
        return f"{cf.name}'s user vector depends on the target item"
    config = model.llm.config
    if config._attn_implementation not in ATTENTION:
        return f"attention {config._attn_implementation!r} takes no block mask"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    return ""


def attention_ratio(config) -> float:
    """Weight-matmul FLOPs of one token per layer over the attention FLOPs it spends per key:
    the ``ratio`` of datasets/packing.py ``suffixes_per_sequence``; 0 (no limit) when the
    config does not name the sizes."""
    h = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    inter = getattr(config, "intermediate_size", None)
    if not (h and heads and inter):
        return 0.0
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    weights = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter  # q, o, k, v, gated MLP
    return 2 * weights / (4 * heads * head_dim)


def packed_mask(grp, sfx, dtype):
    """grp / sfx [P, T] -> [P, 1, T, T] mask: query q sees key k when k <= q in the same group
    and k is the group's prefix or q's own suffix (padding sees only itself, so no row of the
    softmax is empty). Boolean for SDPA; additive (0 / min) in ``dtype`` otherwise."""
    pos = torch.arange(grp.shape[-1], device=grp.device)
    causal = pos[None, :] <= pos[:, None]  # [T, T]
    same = (grp[:, :, None] == grp[:, None, :]) & (grp[:, None, :] > 0)  # [P, T(q), T(k)]
    part = (sfx[:, None, :] == 0) | (sfx[:, None, :] == sfx[:, :, None])
    allowed = (causal & same & part) | (pos[None, :] == pos[:, None])
    if dtype is None:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=grp.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def packed_embeds(model, batch):
    """pack_ids [P, T] -> [P, T, H] with the slots filled from each row's FECE tokens."""
    emb = model.llm.get_input_embeddings()(batch["pack_ids"])
    if model.use_slots:
        user = model.proj(model.cf.user_embed(batch)).to(emb.dtype)  # [B, k, H]
        item = model.proj(model.cf.item_embed(batch["iid"])).to(emb.dtype)  # [B, k, H]
        k, h = user.shape[1], user.shape[2]
        index = (batch["pack_src"] * k + batch["pack_slot_j"].clamp(max=k - 1)).reshape(-1)  # [P*T]
        for kind, tok in ((SLOT_USER, user), (SLOT_ITEM, item)):
            placed = tok.reshape(-1, h)[index].reshape(emb.shape)
            emb = torch.where((batch["pack_slot"] == kind).unsqueeze(-1), placed, emb)
    return emb


def packed_hidden(model, batch):
    """The body's last hidden state (before the final norm, as CoLLM.hidden_states gives it)
    at each row's last token: [B, H]."""
    config = model.llm.config
    emb = packed_embeds(model, batch)
    mask = packed_mask(batch["pack_grp"], batch["pack_sfx"],
                       None if config._attn_implementation == "sdpa" else emb.dtype)
    hidden = model.hidden_states(emb, mask, batch["pack_pos"], use_cache=False)  # [P, T, H]
    return hidden[batch["read_pack"], batch["read_pos"]]


def packed_forward(model, batch):
    """CoLLM.forward for a packed batch: {"loss", "logits" [B] in the batch's row order}."""
    # The same head as the plain forward (final norm and answer rows in fp32): both paths agree.
    logits = model.answer_logits(packed_hidden(model, batch))
    loss = None
    if "label" in batch:
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
    return {"loss": loss, "logits": logits}
