"""Scoring rows that share a prompt prefix (datasets/packing.py), the prefix once.

``run.shared_prefix: auto`` groups the rows of a batch that share everything
before the target title; ``why_plain`` says when a model or template cannot
(then every row is scored whole, as with ``off``). Small groups are packed
(one forward over prefix + suffixes, a block mask); groups of ``kv_min_group``
rows or more are scored over a read-only cache of their prefix's keys/values
(``kv_hidden``; an earlier probe that deep-copied a growing cache per suffix
batch reached 4.09x where packing gave 4.94x; a cache that is never written
needs no copy). Within one scoring pass, a batch takes the cache-layout prefixes the batch
before it computed for the same prefix groups (``PrefixMemo``: a group larger than a batch
spans consecutive batches) instead of computing them again.
"""
import functools
import inspect

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


# Groups of at least this many rows of a batch are scored over a cache of their prefix, smaller
# ones packed. Measured with bench/score_throughput.py --paths packed kv on SmolLM2-135M (2 CPU
# threads, batch 64, 200 rows a case; cache rows/s over packed rows/s): fp32 test split (groups
# of 1.6 rows) 1.04x, K=10 1.14x, K=50 1.18x, K=100 1.29x; bf16 1.05x / 1.00x / 1.13x / 1.19x.
# The cache wins as groups grow (no prefix copy every ~26 suffixes, attention over the prefix
# and the row only, not over the whole packed sequence); at the test split's 1-5 row groups the
# two are within 5%, and packed takes one forward per batch instead of two. On the tests' tiny
# shape (hidden 64, 2 layers) the second forward's fixed cost dominates: 0.64x at K=10.
KV_MIN_GROUP = 8


def kv_min_group(model) -> tuple:
    """(n, reason): groups of n or more rows of a batch are scored over a cache of their
    prefix (``kv_hidden``), smaller ones packed; n = 0 (never) with the reason when this
    model cannot.

    FSDP2: every forward of a sharded layer all-gathers its weights, so all ranks must run
    the same number of forwards per batch; the cache layout runs two (prefix, suffixes) or
    three (with a packed part) depending on each rank's rows, so sharded models keep to the
    packed layout (one forward per batch).
    """
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return 0, "FSDP runs one forward per batch on every rank"
    return KV_MIN_GROUP, ""


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
    return _allowed((causal & same & part) | (pos[None, :] == pos[:, None]), dtype)


def slot_tokens(model, batch):
    """(user, item) FECE tokens of every batch row, [B, k, H] each, or None without slots."""
    if not model.use_slots:
        return None
    dtype = model.llm.get_input_embeddings().weight.dtype
    return (model.proj(model.cf.user_embed(batch)).to(dtype), model.proj(model.cf.item_embed(batch["iid"])).to(dtype))


def embed(model, ids, slot, src, slot_j, tokens):
    """ids / slot / slot_j [R, T] (tokens, slot kinds, which of its kind's k tokens), src [R, T]
    (the batch row whose slot vectors fill a slot) -> [R, T, H] with the slots filled from
    ``tokens`` (``slot_tokens``)."""
    emb = model.llm.get_input_embeddings()(ids)
    if tokens is not None:
        user, item = tokens
        k, h = user.shape[1], user.shape[2]
        index = (src * k + slot_j.clamp(max=k - 1)).reshape(-1)  # [R*T]
        for kind, tok in ((SLOT_USER, user), (SLOT_ITEM, item)):
            placed = tok.reshape(-1, h)[index].reshape(emb.shape).to(emb.dtype)
            emb = torch.where((slot == kind).unsqueeze(-1), placed, emb)
    return emb


def packed_hidden(model, batch, tokens):
    """The body's last hidden state (before the final norm, as CoLLM.hidden_states gives it)
    at the last token of each packed row (``pack_rows``): [R, H]."""
    config = model.llm.config
    emb = embed(model, batch["pack_ids"], batch["pack_slot"], batch["pack_src"], batch["pack_slot_j"], tokens)
    mask = packed_mask(batch["pack_grp"], batch["pack_sfx"],
                       None if config._attn_implementation == "sdpa" else emb.dtype)
    hidden = model.hidden_states(emb, mask, batch["pack_pos"], use_cache=False)  # [P, T, H]
    return hidden[batch["read_pack"], batch["read_pos"]]


def _allowed(allowed, dtype):
    """bool mask [..] -> itself (SDPA, dtype None) or additive 0 / min in ``dtype``, with a head axis."""
    if dtype is None:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


@functools.cache
def _prefix_layer_class():
    """``PrefixLayer``, built on first use: transformers is imported here, not with the
    package (``collm_faissret.env`` and the CLIs' --help stay free of its seconds-long import)."""
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """One layer's keys/values of the prefixes [R, kv_heads, P, d] (an expanded view when every
        row shares one prefix): ``update`` returns them followed by the new tokens' and keeps
        nothing, so one cache serves any number of suffix batches with no copy kept."""

        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values = keys, values
            self.device = keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return PrefixLayer


def _cache_kwarg(body):
    """The name under which this body's forward takes a KV cache (transformers renamed
    ``past_key_values`` to ``cache`` within v5)."""
    params = inspect.signature(type(body).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PrefixMemo:
    """The cache-layout prefixes' keys/values of the previous batch of one scoring pass, for the
    next batch to reuse.

    A group larger than a batch is cut into pieces in consecutive batches (eval_batches: K=100
    at batch 64 is 64 rows, then 36), and each piece's forward 1 would compute the group's
    prefix again. A prefix is known by its dataset prefix group (``kv_pre_group``, the ids the
    sampler cut batches by), never by comparing tensors. RecTask.predict makes one per call
    (fixed weights: training changes them between evaluations, so it must not outlive the
    call) and passes it with each batch as ``prefix_memo``.

    Memory bound: it holds one batch's cache-layout prefixes (at most batch_size /
    kv_min_group of them; per layer keys and values [G, kv_heads, P, d]) and is replaced after
    every batch, so at most two batches' prefix caches are alive at once. Under DDP a rank's
    consecutive batches are a world size apart and rarely share a group: nothing is reused.
    """

    def __init__(self):
        self.index = {}  # dataset group -> row of ``layers``, for the previous batch's prefixes
        self.layers = None  # [(keys, values)] per layer, [G, kv_heads, P, d] (right-padded)
        self.next = {}  # the same for the batch being scored: ``index`` once its forward has run
        self.width = 0  # longest prefix the batch takes from ``layers``

    def plan(self, batch):
        """Host side, on a collated batch before its copy to the device: its cache-layout
        prefixes that the previous batch holds are taken from there, the others computed.

        When some are taken: kv_pre_new [Gn] (which of the batch's G prefixes forward 1
        computes), kv_pre_old / kv_pre_from [Gr] (which are taken, their row in ``layers``),
        and kv_pre_ids / _slot / _slot_j / _src cut to the Gn computed ones, trimmed to their
        longest (kv_pre_len stays [G]). Otherwise the batch is left as it is.
        """
        self.width = 0
        prev, self.index = self.index, {}  # ``assemble`` sets it again once this batch's forward ran
        if "kv_pre_group" not in batch:
            self.layers, self.next = None, {}
            return
        groups, lens = batch["kv_pre_group"].tolist(), batch["kv_pre_len"].tolist()
        self.next = {g: i for i, g in enumerate(groups)}
        old = [i for i, g in enumerate(groups) if g in prev]
        if not old:
            self.layers = None  # nothing of it is needed: free it before the forward
            return
        new = [i for i, g in enumerate(groups) if g not in prev]
        width = max((lens[i] for i in new), default=0)
        for key in ("kv_pre_ids", "kv_pre_slot", "kv_pre_slot_j"):
            batch[key] = batch[key][new, :width]
        batch["kv_pre_src"] = batch["kv_pre_src"][new]
        batch["kv_pre_new"] = torch.tensor(new, dtype=torch.long)
        batch["kv_pre_old"] = torch.tensor(old, dtype=torch.long)
        batch["kv_pre_from"] = torch.tensor([prev[groups[i]] for i in old], dtype=torch.long)
        self.width = max(lens[i] for i in old)

    def assemble(self, batch, computed):
        """computed: per layer (keys, values) [Gn, kv_heads, Pn, d] of forward 1 (None when
        every prefix is taken) -> the batch's G prefixes [G, kv_heads, P, d], padded to the
        longest; kept for the next batch."""
        if "kv_pre_new" in batch:
            n_pre = len(batch["kv_pre_len"])
            width = max(self.width, computed[0][0].shape[-2] if computed else 0)
            new, old, src = batch["kv_pre_new"], batch["kv_pre_old"], batch["kv_pre_from"]
            layers = []
            for i, (keys, values) in enumerate(self.layers):
                pair = []
                for j, taken in enumerate((keys, values)):
                    taken = taken.index_select(0, src)[:, :, :self.width]
                    out = taken.new_zeros((n_pre, taken.shape[1], width, taken.shape[3]))
                    out[:, :, :self.width].index_copy_(0, old, taken)
                    if computed:
                        part = computed[i][j]
                        out[:, :, :part.shape[-2]].index_copy_(0, new, part)
                    pair.append(out)
                layers.append(tuple(pair))
            computed = layers
        self.index, self.layers = self.next, computed
        return computed


def kv_hidden(model, batch, tokens):
    """The last hidden state at each cached row's last suffix token (``kv_rows``): [R, H].

    Forward 1: the G prefixes [G, P] (right-padded, causal), filling a DynamicCache; with a
    ``prefix_memo`` (``PrefixMemo``) only those the previous batch did not compute.
    Forward 2: the suffix rows [Q, C] (several suffixes of one group each, positions
    continuing from the prefix) over a cache of their prefixes' keys/values
    (``PrefixLayer``: the one prefix expanded to Q rows, or each row's prefix selected);
    a suffix query sees its prefix's real tokens and its own suffix causally.
    """
    config = model.llm.config
    dtype = None if config._attn_implementation == "sdpa" else model.llm.get_input_embeddings().weight.dtype
    from transformers.cache_utils import Cache, DynamicCache  # see _prefix_layer_class

    PrefixLayer = _prefix_layer_class()
    body = model._answer_parts()[0]
    name = _cache_kwarg(body)
    pre_len, grp = batch["kv_pre_len"], batch["kv_grp"]  # [G]: every prefix of the batch
    n_pre = len(pre_len)
    computed = None
    g_new, p = batch["kv_pre_ids"].shape  # the prefixes forward 1 runs (G of them without reuse)
    if g_new:
        new_len = pre_len.index_select(0, batch["kv_pre_new"]) if "kv_pre_new" in batch else pre_len
        emb = embed(model, batch["kv_pre_ids"], batch["kv_pre_slot"], batch["kv_pre_src"][:, None].expand(g_new, p),
                    batch["kv_pre_slot_j"], tokens)
        pos = torch.arange(p, device=emb.device)
        real = pos[None, :] < new_len[:, None]  # [Gn, P]
        causal = pos[None, :] <= pos[:, None]
        mask = _allowed((causal & real[:, None, :]) | (pos[None, :] == pos[:, None]), dtype)
        cache = DynamicCache()
        model.hidden_states(emb, mask, pos.expand(g_new, p), use_cache=True, **{name: cache})
        computed = [(lay.keys, lay.values) for lay in cache.layers]
    memo = batch.get("prefix_memo")
    if memo is not None:
        computed = memo.assemble(batch, computed)  # [G, kv_heads, P, d] per layer, taken ones included
    p = computed[0][0].shape[-2]
    pos = torch.arange(p, device=pre_len.device)
    real = pos[None, :] < pre_len[:, None]  # [G, P]: padding excluded, whichever batch computed it

    rows, c = batch["kv_ids"].shape
    if n_pre == 1:  # every row shares the prefix: a view, no copy
        layers = [PrefixLayer(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in computed]
    else:
        layers = [PrefixLayer(k.index_select(0, grp), v.index_select(0, grp)) for k, v in computed]
    emb = embed(model, batch["kv_ids"], batch["kv_slot"], batch["kv_src"], batch["kv_slot_j"], tokens)
    sfx = batch["kv_sfx"]
    q = torch.arange(c, device=emb.device)
    own = (q[None, :] <= q[:, None]) & (sfx[:, :, None] == sfx[:, None, :]) & (sfx[:, None, :] > 0)
    own = own | (q[None, :] == q[:, None])  # [Q, C, C]
    mask = _allowed(torch.cat([real.index_select(0, grp)[:, None, :].expand(rows, c, p), own], -1),
                    dtype)  # [Q, 1, C, P + C]
    hidden = model.hidden_states(emb, mask, batch["kv_pos"], use_cache=True, **{name: Cache(layers=layers)})
    return hidden[batch["kv_read_row"], batch["kv_read_pos"]]


def shared_forward(model, batch):
    """CoLLM.forward for a batch in the shared-prefix layouts: {"loss", "logits" [B] in the
    batch's row order}."""
    tokens = slot_tokens(model, batch)
    parts = []
    if "pack_ids" in batch:
        parts.append((batch["pack_rows"], packed_hidden(model, batch, tokens)))
    if "kv_ids" in batch:
        parts.append((batch["kv_rows"], kv_hidden(model, batch, tokens)))
    hidden = parts[0][1].new_empty((len(batch["row"]), parts[0][1].shape[-1]))
    for rows, h in parts:
        hidden = hidden.index_copy(0, rows, h)
    # The same head as the plain forward (final norm and answer rows in fp32): both paths agree.
    logits = model.final_scores(hidden, batch)
    loss = None
    if "label" in batch:
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
    return {"loss": loss, "logits": logits}

