"""Torch datasets over CoLLM rows, and the collate function that right-pads prompts."""
import itertools
from typing import List, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..prompts import SLOT_ITEM, SLOT_USER, PromptBuilder, PromptError
from .collm_data import clean_history
from .packing import pack_prefixes


class RecRows(Dataset):
    """One CoLLM split as model inputs.

    Each item: uid, iid, label, not_cold, row (index in the split), his [his_len]
    (last liked item ids, oldest first, 0-padded on the left; his_len defaults
    to max_his, the number of titles in the prompt), cf_logit when the split has that
    column (out-of-fold CF logits: datasets/cf_logits.py) and, with a
    prompt builder, input_ids / slot lists. Tokenisation happens here, so it
    runs in DataLoader workers when num_workers > 0.
    """

    def __init__(self, df: pd.DataFrame, max_his: int, builder: Optional[PromptBuilder] = None,
                 name: str = "split", his_len: Optional[int] = None):
        self.name = name
        self.uid = df["uid"].to_numpy(np.int64)
        self.iid = df["iid"].to_numpy(np.int64)
        self.label = df["label"].to_numpy(np.int64)
        self.not_cold = df["not_cold"].to_numpy(np.int64)
        self.title = df["title"].astype(str).tolist()
        self.cf_logit = df["cf_logit"].to_numpy(np.float32) if "cf_logit" in df else None
        self.max_his = max_his
        self.builder = builder
        his_len = max_his if his_len is None else his_len
        self.his = np.zeros((len(df), his_len), dtype=np.int64)
        self.his_titles: List[List[str]] = []
        for r, (h, ht) in enumerate(zip(df["his"], df["his_title"])):
            ids, titles = clean_history(h, ht)
            ids = ids[-his_len:] if his_len > 0 else []
            if ids:
                self.his[r, his_len - len(ids):] = ids
            self.his_titles.append(titles[-max_his:] if max_his > 0 else [])
        self._lengths = None
        self._ids = self._slot = self._start = None  # every row's prompt, built once (see _prompts)
        self._prefix_len = self._groups = None
        # Set by the task when scoring may share prompt prefixes: batches then carry
        # prefix_len and group per row, and collate packs the rows of a group.
        self.share_prefix = False
        self.pack_ratio = 0.0  # models/shared_prefix.py attention_ratio of the scoring model
        self.kv_min_group = 0  # groups of this many rows or more take the cache layout (0: never)

    def __len__(self):
        return len(self.uid)

    def lengths(self) -> np.ndarray:
        """Prompt length in tokens per row [N] (for length bucketing); 1s without prompts."""
        if self._lengths is None:
            if self.builder is None:
                self._lengths = np.ones(len(self), dtype=np.int64)
            else:
                self._prompts()
        return self._lengths

    def prefix_groups(self) -> np.ndarray:
        """Group id per row [N]: rows with the same prompt prefix (the token ids before the target
        title) and the same user inputs of the ID slots (uid and history ids) share one."""
        if self._groups is None:
            if self._ids is None:
                self._prompts()
            keys = {}
            self._groups = np.array([
                keys.setdefault((self._ids[a:a + p].tobytes(), int(self.uid[r]), self.his[r].tobytes()), len(keys))
                for r, (a, p) in enumerate(zip(self._start[:-1].tolist(), self._prefix_len.tolist()))],
                dtype=np.int64)
        return self._groups

    def _prompts(self):
        """Build every row's prompt once, kept as flat arrays (token ids, slot kinds, row starts).

        Length bucketing needs every prompt's length before the first batch anyway, and
        rebuilding a prompt per row per batch cost tens of microseconds a row: a visible
        share of a small model's step. About 5 bytes a token in memory.
        """
        built = [self._prompt(r) for r in range(len(self))]
        self._lengths = np.fromiter((len(b.input_ids) for b in built), dtype=np.int64, count=len(built))
        self._prefix_len = np.fromiter((b.prefix_len for b in built), dtype=np.int64, count=len(built))
        self._start = np.concatenate([[0], np.cumsum(self._lengths)])
        total = int(self._start[-1])
        self._ids = np.fromiter(itertools.chain.from_iterable(b.input_ids for b in built), dtype=np.int64,
                                count=total)
        self._slot = np.fromiter(itertools.chain.from_iterable(b.slot for b in built), dtype=np.int8, count=total)
        if total and self._ids.max() < 2 ** 31:
            self._ids = self._ids.astype(np.int32)

    def _prompt(self, r):
        try:
            built = self.builder.build(self.his_titles[r], self.title[r])
        except PromptError as err:
            raise PromptError(f"{self.name} row {r}: {err}") from None
        n_user, n_item = built.slot.count(SLOT_USER), built.slot.count(SLOT_ITEM)
        if (n_user, n_item) != (self.builder.n_user_slots, self.builder.n_item_slots):
            raise PromptError(f"{self.name} row {r}: {n_user}/{n_item} user/item slot tokens, expected "
                              f"{self.builder.n_user_slots}/{self.builder.n_item_slots}")
        return built

    def __getitem__(self, r):
        return self.__getitems__([r])

    def __getitems__(self, rows):
        """A whole batch at once (DataLoader calls this with the batch's row list).

        Returns numpy arrays uid/iid/label/not_cold/row [B], his [B, his_len] and,
        with prompts, input_ids / slot: per row its tokens and slot kinds (numpy views of the
        flat arrays; python lists when the batch is to be packed by prefix).
        """
        rows = np.asarray(rows, dtype=np.int64)
        batch = {"uid": self.uid[rows], "iid": self.iid[rows], "label": self.label[rows],
                 "not_cold": self.not_cold[rows], "row": rows, "his": self.his[rows]}
        if self.cf_logit is not None:
            batch["cf_logit"] = self.cf_logit[rows]
        if self.builder is not None:
            if self._ids is None:
                self._prompts()
            spans = list(zip(self._start[rows].tolist(), self._start[rows + 1].tolist()))
            if not self.share_prefix:  # views of the flat arrays: collate concatenates them
                batch["input_ids"] = [self._ids[a:b] for a, b in spans]
                batch["slot"] = [self._slot[a:b] for a, b in spans]
            else:  # packing.py reads python lists
                batch["input_ids"] = [self._ids[a:b].tolist() for a, b in spans]
                batch["slot"] = [self._slot[a:b].tolist() for a, b in spans]
                batch["prefix_len"] = self._prefix_len[rows].tolist()
                batch["group"] = self.prefix_groups()[rows]
                batch["pack_ratio"] = self.pack_ratio
                batch["kv_min_group"] = self.kv_min_group
        return batch


def collate(batch, pad_id: int = 0):
    """Tensors from one ``RecRows.__getitems__`` batch; prompts are right-padded.

    Returns uid/iid/label/not_cold/row [B], his [B, his_len], cf_logit [B] float32 when the
    rows carry one and, with prompts,
    input_ids/attention_mask/slot [B, L] (each row's tokens in columns 0 .. n_b - 1),
    read_pos [B] (n_b - 1: where each row's answer is read) and slot_pos [B, 2k] when
    every row has k user and k item slots (``slot_positions``).

    Right padding: under the causal mask a real token never attends to the padding after
    it, so the LM needs no padding mask, and every row's positions are 0 .. n_b - 1
    whatever batch it lands in (models/collm.py ``body_mask``).
    """
    out = {k: torch.from_numpy(np.ascontiguousarray(batch[k]))
           for k in ("uid", "iid", "label", "not_cold", "row", "his", "cf_logit") if k in batch}
    packed = pack_prefixes(batch, pad_id) if "group" in batch else None
    if packed is not None:  # rows of one prompt prefix in one sequence (datasets/packing.py)
        out.update(packed)
    elif "input_ids" in batch:
        ids, mask, slot, lens = right_pad(batch["input_ids"], batch["slot"], pad_id)
        out.update(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                   slot=torch.from_numpy(slot), read_pos=torch.from_numpy(lens - 1))
        pos = slot_positions(slot)
        if pos is not None:
            out["slot_pos"] = torch.from_numpy(pos)
    return out


def slot_positions(slot):
    """slot [B, L] -> [B, 2k] int64: each row's user-slot columns then its item-slot columns,
    left to right, when every row holds k of each (k > 0); else None.

    The model then writes its FECE tokens at these places (an index_put: on a small
    model a tenth of the time of a gather and select over every position, and the
    backward pass likewise); found here on the host, where nonzero waits for nothing.
    """
    user, item = slot == SLOT_USER, slot == SLOT_ITEM
    n_user, n_item = user.sum(1), item.sum(1)
    k = int(n_user[0]) if len(n_user) else 0
    if k == 0 or (n_user != k).any() or (n_item != k).any():
        return None
    n = slot.shape[0]
    return np.concatenate([np.nonzero(user)[1].reshape(n, k), np.nonzero(item)[1].reshape(n, k)], 1)


def right_pad(seqs, slots, pad_id: int):
    """Token lists and their slot lists (equal lengths per row) -> right-padded int64 arrays
    input_ids / attention_mask / slot [B, L], L the longest row, and the lengths [B].

    One boolean-mask assignment of the concatenated rows instead of a tensor per row (at a
    tiny model's step time the per-row copies were a visible share of the batch): numpy fills
    the True places in row-major order, which is each row's tokens from column 0.
    """
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    if not np.array_equal(lens, np.fromiter(map(len, slots), dtype=np.int64, count=len(slots))):
        raise ValueError("collate: a row's slot list and token list differ in length")
    n, width, total = len(seqs), int(lens.max()), int(lens.sum())
    real = np.arange(width) < lens[:, None]  # [B, L]
    ids = np.full((n, width), pad_id, dtype=np.int64)
    ids[real] = _flat(seqs, total)
    slot = np.zeros((n, width), dtype=np.int64)
    slot[real] = _flat(slots, total)
    return ids, real.astype(np.int64), slot, lens


def _flat(rows, total: int) -> np.ndarray:
    """Per-row sequences (numpy arrays or lists) -> one int64 array of ``total`` values."""
    if len(rows) and isinstance(rows[0], np.ndarray):
        return np.concatenate(rows)
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
