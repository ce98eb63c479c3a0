"""Shared-prefix packing: the rows of one prompt prefix as one sequence, the prefix once.

A prompt is ``prefix + suffix`` where the suffix starts at the target title
(``BuiltPrompt.prefix_len``). Rows of one group (same prefix tokens and the
same user slot inputs) become ``prefix, suffix_1, ..., suffix_n`` in one
sequence; each suffix sees the prefix and itself (a block mask built by the
model from ``pack_grp`` / ``pack_sfx``), positions continue from the prefix
for every suffix, and each row's answer is read at its suffix's last token.
A group longer than pays off is cut into several sequences, each with its own
copy of the prefix (``suffixes_per_sequence``: the masked attention over a
long sequence grows with its square); several groups share one sequence
when they fit (first-fit decreasing into the length of the longest), so
little is padding.

Large groups take a second layout instead (``kv_min_group``, set from
models/shared_prefix.py ``kv_min_group``): the group's prefix is one row of
its own forward, whose keys/values the suffixes of the group then attend to
as a read-only cache (one forward over all such suffixes of the batch). A
packed sequence of n suffixes spends masked attention over the whole packed
length on every token and is cut every ~26 suffixes (a new prefix copy each
time); the cache costs two forwards per batch but each suffix token attends to
the prefix and its own suffix only. Which layout wins at which group size was
measured (see models/shared_prefix.py).
"""
import numpy as np
import torch

from ..prompts import SLOT_NONE


def _slot_index(slot):
    """Per position, which of its kind's tokens it is (0, 1, ... in order), 0 elsewhere."""
    seen = {}
    out = []
    for s in slot:
        j = seen.get(s, 0)
        out.append(j if s != SLOT_NONE else 0)
        seen[s] = j + 1
    return out


def suffixes_per_sequence(prefix: int, suffix: float, ratio) -> int:
    """How many suffixes one copy of a prefix serves best.

    A token costs ``a`` (weight matmuls) plus ``b`` per key it attends to; one
    sequence of the prefix p and n suffixes of length s then costs about
    L (a + b L) with L = p + n s, i.e. per row (a p + b p^2) / n + a s + 2 b p s + b n s^2,
    least at n = sqrt(p (a/b + p)) / s. ``ratio`` is a/b (models/shared_prefix.py
    ``attention_ratio``: ~3,000 for SmolLM2, so ~26 suffixes of 24 tokens after a 121-token
    prefix; ~390 for a tiny test model); None: no limit.
    """
    if not ratio:
        return 1 << 30
    return max(1, int(round(float(np.sqrt(prefix * (ratio + prefix))) / max(suffix, 1.0))))


def pack_prefixes(batch, pad_id: int):
    """``RecRows.__getitems__`` output with ``prefix_len`` / ``group`` -> shared-prefix tensors, or
    None when no two rows of the batch share a prefix (the plain layout is then cheaper).

    Groups of at least ``batch["kv_min_group"]`` rows (0: none) take the cache layout
    (``kv_layout``), the others the packed one (``packed_layout``); either part may be absent.
    """
    members = {}
    for b, g in enumerate(np.asarray(batch["group"]).tolist()):
        members.setdefault(g, []).append(b)
    if all(len(rows) == 1 for rows in members.values()):
        return None
    kv_min = int(batch.get("kv_min_group") or 0)
    big, rest = [], []
    for rows in members.values():
        (big if kv_min and len(rows) >= kv_min else rest).append(rows)
    out = {}
    if rest:
        out.update(packed_layout(batch, rest, pad_id))
    if big:
        out.update(kv_layout(batch, big, pad_id))
    return out


def packed_layout(batch, groups, pad_id: int):
    """The rows of ``groups`` (lists of batch rows, one list per prefix group) packed.

    Returns pack_ids / pack_pos / pack_grp / pack_sfx / pack_slot / pack_src / pack_slot_j [P, T]
    (tokens, positions, group within the sequence (0: padding), suffix number (0: prefix),
    slot kind, the batch row whose slot vector fills a slot, which of its k tokens),
    pack_rows [R] (the batch rows scored here) and read_pack / read_pos [R] (where each
    one's last token is).
    """
    ids, slots, plen = batch["input_ids"], batch["slot"], batch["prefix_len"]
    units = []
    for rows in groups:
        p = plen[rows[0]]
        n = suffixes_per_sequence(p, np.mean([len(ids[b]) - p for b in rows]), batch.get("pack_ratio"))
        for c in range(0, len(rows), n):
            chunk = rows[c:c + n]
            units.append((p + sum(len(ids[b]) - p for b in chunk), chunk))
    cap = max(length for length, _ in units)
    packs = []  # [used length, [rows of each group]]
    for length, rows in sorted(units, key=lambda u: -u[0]):
        for pk in packs:
            if pk[0] + length <= cap:
                pk[0] += length
                pk[1].append(rows)
                break
        else:
            packs.append([length, [rows]])
    shape = (len(packs), cap)
    out = {k: torch.zeros(shape, dtype=torch.long) for k in ("pack_pos", "pack_grp", "pack_sfx", "pack_slot",
                                                            "pack_src", "pack_slot_j")}
    out["pack_ids"] = torch.full(shape, pad_id, dtype=torch.long)
    pack_rows, read_pack, read_pos = [], [], []

    def put(pi, t, toks, sl, pos0, grp, sfx, src):
        end = t + len(toks)
        out["pack_ids"][pi, t:end] = torch.tensor(toks)
        out["pack_pos"][pi, t:end] = torch.arange(pos0, pos0 + len(toks))
        out["pack_grp"][pi, t:end] = grp
        out["pack_sfx"][pi, t:end] = sfx
        out["pack_slot"][pi, t:end] = torch.tensor(sl)
        out["pack_src"][pi, t:end] = src
        out["pack_slot_j"][pi, t:end] = torch.tensor(_slot_index(sl))
        return end

    for pi, (_, packed) in enumerate(packs):
        t, sfx = 0, 0
        for gi, rows in enumerate(packed, start=1):
            b0, p = rows[0], plen[rows[0]]
            # The prefix's user slots take row b0's vectors: every row of the group has the same
            # (uid, history), so the same vectors.
            t = put(pi, t, ids[b0][:p], slots[b0][:p], 0, gi, 0, b0)
            for b in rows:
                sfx += 1
                t = put(pi, t, ids[b][p:], slots[b][p:], p, gi, sfx, b)
                pack_rows.append(b)
                read_pack.append(pi)
                read_pos.append(t - 1)
    out["pack_rows"] = torch.tensor(pack_rows, dtype=torch.long)
    out["read_pack"] = torch.tensor(read_pack, dtype=torch.long)
    out["read_pos"] = torch.tensor(read_pos, dtype=torch.long)
    return out


def suffix_row_length(suffix: float, longest: int, ratio) -> int:
    """Row length for the suffixes packed over a prefix cache.

    Each token costs ``a`` (weight matmuls) plus ``b`` per key (the prefix's P and its row's
    C); a row wastes about half a suffix s at its end, so per token
    a (1 + s / 2C) + b (P + C), least at C = sqrt(s a / 2b) (``ratio`` = a / b: ~190 tokens
    for SmolLM2's 24-token titles), and at least the longest suffix.
    """
    if not ratio:
        return max(longest, 1)
    return max(longest, int(round(float(np.sqrt(suffix * ratio / 2)))))


def kv_layout(batch, groups, pad_id: int):
    """The rows of ``groups`` as one prefix row per group, then their suffixes packed into rows
    of one group each (at most about ``suffix_row_length`` tokens, filled evenly); the model runs the
    prefixes, then the suffix rows over their prefix's keys and values
    (models/shared_prefix.py ``kv_hidden``).

    Returns kv_pre_ids / kv_pre_slot / kv_pre_slot_j [G, P] (right-padded), kv_pre_src /
    kv_pre_len / kv_pre_group [G] (the batch row whose user vectors fill the prefix's slots, its
    length, its dataset prefix group: what a later batch of the same scoring pass that holds the
    same group may reuse, models/shared_prefix.py ``PrefixMemo``);
    kv_ids / kv_pos / kv_sfx / kv_slot / kv_slot_j / kv_src [Q, C] (suffix rows: tokens,
    positions continuing the prefix, suffix number within the row (0: padding), slot kind,
    which of its kind's tokens, the batch row that fills a slot), kv_grp [Q] (each suffix
    row's prefix); kv_rows / kv_read_row / kv_read_pos [R] (the batch rows scored here and
    where each one's last token is).
    """
    ids, slots, plen = batch["input_ids"], batch["slot"], batch["prefix_len"]
    pre_len = [plen[g[0]] for g in groups]
    lens = {b: len(ids[b]) - plen[b] for g in groups for b in g}  # suffix length per batch row
    cap = suffix_row_length(np.mean(list(lens.values())), max(lens.values()), batch.get("pack_ratio"))
    packs = []  # (group index, [batch rows])
    for gi, rows in enumerate(groups):
        # as few rows as the cap allows, filled evenly (longest suffix onto the shortest row):
        # the batch's width is its longest row, so a short last row would be mostly padding
        mine = [[0, []] for _ in range(-(-sum(lens[b] for b in rows) // cap))]
        for b in sorted(rows, key=lambda b: -lens[b]):
            pk = min(mine, key=lambda m: m[0])
            pk[0] += lens[b]
            pk[1].append(b)
        packs += [(gi, pk[1]) for pk in mine if pk[1]]
    out = {"kv_pre_src": torch.tensor([g[0] for g in groups], dtype=torch.long),
           "kv_pre_len": torch.tensor(pre_len, dtype=torch.long),
           "kv_pre_group": torch.tensor([int(batch["group"][g[0]]) for g in groups], dtype=torch.long),
           "kv_grp": torch.tensor([gi for gi, _ in packs], dtype=torch.long)}
    shape = (len(groups), max(pre_len))
    out["kv_pre_ids"] = torch.full(shape, pad_id, dtype=torch.long)
    out["kv_pre_slot"] = torch.zeros(shape, dtype=torch.long)
    out["kv_pre_slot_j"] = torch.zeros(shape, dtype=torch.long)
    for gi, (g, p) in enumerate(zip(groups, pre_len)):
        out["kv_pre_ids"][gi, :p] = torch.tensor(ids[g[0]][:p])
        out["kv_pre_slot"][gi, :p] = torch.tensor(slots[g[0]][:p])
        out["kv_pre_slot_j"][gi, :p] = torch.tensor(_slot_index(slots[g[0]][:p]))
    width = max(sum(lens[b] for b in rows) for _, rows in packs)
    shape = (len(packs), width)
    for key in ("kv_pos", "kv_sfx", "kv_slot", "kv_slot_j", "kv_src"):
        out[key] = torch.zeros(shape, dtype=torch.long)
    out["kv_ids"] = torch.full(shape, pad_id, dtype=torch.long)
    kv_rows, read_row, read_pos = [], [], []
    for qi, (gi, rows) in enumerate(packs):
        t = 0
        for sfx, b in enumerate(rows, start=1):
            p, end = plen[b], t + lens[b]
            out["kv_ids"][qi, t:end] = torch.tensor(ids[b][p:])
            out["kv_pos"][qi, t:end] = torch.arange(p, p + end - t)
            out["kv_sfx"][qi, t:end] = sfx
            out["kv_slot"][qi, t:end] = torch.tensor(slots[b][p:])
            out["kv_slot_j"][qi, t:end] = torch.tensor(_slot_index(slots[b][p:]))
            out["kv_src"][qi, t:end] = b
            kv_rows.append(b)
            read_row.append(qi)
            read_pos.append(end - 1)
            t = end
    out["kv_rows"] = torch.tensor(kv_rows, dtype=torch.long)
    out["kv_read_row"] = torch.tensor(read_row, dtype=torch.long)
    out["kv_read_pos"] = torch.tensor(read_pos, dtype=torch.long)
    return out


def tokens_in(batch) -> int:
    """Tokens a collated batch makes the LM compute (padding excluded); prefixes that the batch
    takes from the previous one (``kv_pre_new``: only those computed, models/shared_prefix.py
    ``PrefixMemo.plan``) are not computed again, so not counted."""
    if "pack_grp" in batch or "kv_sfx" in batch:
        packed = int((batch["pack_grp"] > 0).sum()) if "pack_grp" in batch else 0
        cached = 0
        if "kv_sfx" in batch:
            pre = batch["kv_pre_len"]
            if "kv_pre_new" in batch:
                pre = pre[batch["kv_pre_new"]]
            cached = int(pre.sum() + (batch["kv_sfx"] > 0).sum())
        return packed + cached
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return 0


def group_order(groups: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows ordered so that each group's rows are contiguous: groups of equal size together
    (a batch of single rows then takes the plain layout), by prompt length within a size.

    groups, lengths [N] -> row order [N].
    """
    sizes = np.bincount(groups)[groups]
    first_len = np.zeros(groups.max() + 1 if len(groups) else 0, dtype=np.int64)
    np.maximum.at(first_len, groups, lengths)
    return np.lexsort((np.arange(len(groups)), groups, first_len[groups], sizes))

