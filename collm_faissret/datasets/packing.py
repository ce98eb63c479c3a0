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

Why a packed sequence rather than a KV cache of the prefix expanded over the
suffixes: a probe on SmolLM2 (fp32, 2 CPU cores, 48 candidates of one user,
prefix 121 tokens, suffixes ~24) gave 4.94x the plain rows/s packed against
4.09x with the cache (a copy of the cache per suffix batch, and a second
forward per batch); the packed form is also one ordinary forward with an
attention mask, so DDP, FSDP2's hooks, LoRA and quantized layers see nothing
new. Its cost: attention over the whole packed sequence (masked, not
skipped), small next to the MLPs at these lengths.
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
    """``RecRows.__getitems__`` output with ``prefix_len`` / ``group`` -> packed tensors, or None
    when no two rows of the batch share a prefix (the plain layout is then cheaper).

    Returns pack_ids / pack_pos / pack_grp / pack_sfx / pack_slot / pack_src / pack_slot_j [P, T]
    (tokens, positions, group within the sequence (0: padding), suffix number (0: prefix),
    slot kind, the batch row whose slot vector fills a slot, which of its k tokens) and
    read_pack / read_pos [B] (where row b's last token is).
    """
    ids, slots, plen = batch["input_ids"], batch["slot"], batch["prefix_len"]
    members = {}
    for b, g in enumerate(np.asarray(batch["group"]).tolist()):
        members.setdefault(g, []).append(b)
    if all(len(rows) == 1 for rows in members.values()):
        return None
    units = []
    for rows in members.values():
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
    n = len(ids)
    read_pack, read_pos = [0] * n, [0] * n

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

    for pi, (_, groups) in enumerate(packs):
        t, sfx = 0, 0
        for gi, rows in enumerate(groups, start=1):
            b0, p = rows[0], plen[rows[0]]
            # The prefix's user slots take row b0's vectors: every row of the group has the same
            # (uid, history), so the same vectors.
            t = put(pi, t, ids[b0][:p], slots[b0][:p], 0, gi, 0, b0)
            for b in rows:
                sfx += 1
                t = put(pi, t, ids[b][p:], slots[b][p:], p, gi, sfx, b)
                read_pack[b], read_pos[b] = pi, t - 1
    out["read_pack"] = torch.tensor(read_pack, dtype=torch.long)
    out["read_pos"] = torch.tensor(read_pos, dtype=torch.long)
    return out


def tokens_in(batch) -> int:
    """Tokens a collated batch makes the LM compute (padding excluded)."""
    if "pack_grp" in batch:
        return int((batch["pack_grp"] > 0).sum())
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

