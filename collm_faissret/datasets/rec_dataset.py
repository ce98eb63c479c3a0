"""Torch datasets over CoLLM rows, and the collate function that left-pads prompts."""
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
    to max_his, the number of titles in the prompt) and, with a
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
        self._groups = None
        # Set by the task when scoring may share prompt prefixes: batches then carry
        # prefix_len and group per row, and collate packs the rows of a group.
        self.share_prefix = False
        self.pack_ratio = 0.0  # models/shared_prefix.py attention_ratio of the scoring model

    def __len__(self):
        return len(self.uid)

    def lengths(self) -> np.ndarray:
        """Prompt length in tokens per row [N] (for length bucketing); 1s without prompts."""
        if self._lengths is None:
            if self.builder is None:
                self._lengths = np.ones(len(self), dtype=np.int64)
            else:
                self._lengths = np.array([len(self.builder.build(self.his_titles[r], self.title[r]).input_ids)
                                          for r in range(len(self))], dtype=np.int64)
        return self._lengths

    def prefix_groups(self) -> np.ndarray:
        """Group id per row [N]: rows with the same prompt prefix (the token ids before the target
        title) and the same user inputs of the ID slots (uid and history ids) share one."""
        if self._groups is None:
            keys = {}
            self._groups = np.array([
                keys.setdefault((tuple(b.input_ids[:b.prefix_len]), int(self.uid[r]), self.his[r].tobytes()),
                                len(keys))
                for r, b in ((r, self.builder.build(self.his_titles[r], self.title[r])) for r in range(len(self)))],
                dtype=np.int64)
        return self._groups

    def _prompt(self, r):
        try:
            built = self.builder.build(self.his_titles[r], self.title[r])
        except PromptError as err:
            raise PromptError(f"{self.name} row {r}: {err}") from None
        n_user = sum(1 for s in built.slot if s == SLOT_USER)
        n_item = sum(1 for s in built.slot if s == SLOT_ITEM)
        if (n_user, n_item) != (self.builder.n_user_slots, self.builder.n_item_slots):
            raise PromptError(f"{self.name} row {r}: {n_user}/{n_item} user/item slot tokens, expected "
                              f"{self.builder.n_user_slots}/{self.builder.n_item_slots}")
        return built

    def __getitem__(self, r):
        return self.__getitems__([r])

    def __getitems__(self, rows):
        """A whole batch at once (DataLoader calls this with the batch's row list).

        Returns numpy arrays uid/iid/label/not_cold/row [B], his [B, his_len] and,
        with prompts, lists input_ids / slot of per-row token lists.
        """
        rows = np.asarray(rows, dtype=np.int64)
        batch = {"uid": self.uid[rows], "iid": self.iid[rows], "label": self.label[rows],
                 "not_cold": self.not_cold[rows], "row": rows, "his": self.his[rows]}
        if self.builder is not None:
            built = [self._prompt(int(r)) for r in rows]
            batch["input_ids"] = [b.input_ids for b in built]
            batch["slot"] = [b.slot for b in built]
            if self.share_prefix:
                batch["prefix_len"] = [b.prefix_len for b in built]
                batch["group"] = self.prefix_groups()[rows]
                batch["pack_ratio"] = self.pack_ratio
        return batch


def collate(batch, pad_id: int = 0):
    """Tensors from one ``RecRows.__getitems__`` batch; prompts are left-padded
    (the answer is read at the last position).

    Returns uid/iid/label/not_cold/row [B], his [B, his_len] and, with prompts,
    input_ids/attention_mask/slot [B, L].
    """
    out = {k: torch.from_numpy(np.ascontiguousarray(batch[k]))
           for k in ("uid", "iid", "label", "not_cold", "row", "his")}
    packed = pack_prefixes(batch, pad_id) if "group" in batch else None
    if packed is not None:  # rows of one prompt prefix in one sequence (datasets/packing.py)
        out.update(packed)
    elif "input_ids" in batch:
        seqs = batch["input_ids"]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        slot = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, (x, sl) in enumerate(zip(seqs, batch["slot"])):
            ids[b, width - len(x):] = torch.tensor(x)
            mask[b, width - len(x):] = 1
            slot[b, width - len(sl):] = torch.tensor(sl)
        out.update(input_ids=ids, attention_mask=mask, slot=slot)
    return out
