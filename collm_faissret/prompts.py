"""Prompt templates and their tokenisation into model inputs.

A template holds the fields <ItemTitleList>, <TargetItemTitle> and, for
stage 2, the ID slots <UserID> and <TargetItemID>. The template is split
into text pieces and fields once; each piece and each distinct title is
tokenised once and cached, so building a row's prompt is a list
concatenation. Because titles enter as token ids and never as template text,
a title that happens to contain "<UserID>" cannot create or shift a slot.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence

HIS = "<ItemTitleList>"
TARGET = "<TargetItemTitle>"
USER = "<UserID>"
ITEM = "<TargetItemID>"
FIELDS = (HIS, TARGET, USER, ITEM)
_FIELD_RE = re.compile("(" + "|".join(re.escape(f) for f in FIELDS) + ")")

SLOT_NONE, SLOT_USER, SLOT_ITEM = 0, 1, 2


class PromptError(ValueError):
    """A template or a row that cannot become a valid prompt."""


def load_template(path: str) -> str:
    """Read a template file; it must contain <TargetItemTitle> exactly once."""
    if not os.path.isfile(path):
        raise PromptError(f"prompt file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read().rstrip("\n")
    counts = {f: text.count(f) for f in FIELDS}
    if counts[TARGET] != 1:
        raise PromptError(f"{path}: needs {TARGET} exactly once, found {counts[TARGET]}")
    for f in (HIS, USER, ITEM):
        if counts[f] > 1:
            raise PromptError(f"{path}: {f} appears {counts[f]} times; at most once")
    return text


def has_id_slots(template: str) -> bool:
    return USER in template or ITEM in template


@dataclass
class BuiltPrompt:
    """One row's prompt. input_ids [L]; slot [L] with SLOT_NONE/SLOT_USER/SLOT_ITEM;
    prefix_len: where the target title starts (the tokens before it are the row's prefix)."""
    input_ids: List[int]
    slot: List[int]
    n_history_used: int
    prefix_len: int = 0


class PromptBuilder:
    """Turns (history titles, target title) into token ids with ID-slot positions.

    Truncation to ``max_len`` tokens drops the oldest history titles first;
    the target title and the ID slots are never cut.
    """

    def __init__(self, tokenizer, template: str, proj_token_num: int, max_len: int,
                 title_sep: str = "; "):
        self.tok = tokenizer
        self.proj_token_num = proj_token_num
        self.max_len = max_len
        self.slot_token_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.sep_ids = self._encode(title_sep)
        self.parts = [p for p in _FIELD_RE.split(template) if p]
        self.part_ids = {i: self._encode(p) for i, p in enumerate(self.parts) if p not in FIELDS}
        self.n_user_slots = proj_token_num * template.count(USER)
        self.n_item_slots = proj_token_num * template.count(ITEM)
        self._title_cache: Dict[str, List[int]] = {}

    @property
    def target_last(self) -> bool:
        """Whether everything that depends on the user (history titles, <UserID>) comes before
        <TargetItemTitle> and everything that depends on the target (<TargetItemID>) after it:
        then the tokens before the target title are the same for all of one user's candidates."""
        where = {p: i for i, p in enumerate(self.parts) if p in FIELDS}
        t = where[TARGET]
        return all(where.get(f, -1) < t for f in (HIS, USER)) and where.get(ITEM, t + 1) > t

    def _encode(self, text: str) -> List[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def title_ids(self, title: str) -> List[int]:
        ids = self._title_cache.get(title)
        if ids is None:
            ids = self._encode(str(title))
            self._title_cache[title] = ids
        return ids

    def build(self, his_titles: Sequence[str], target_title: str) -> BuiltPrompt:
        """his_titles oldest first (already cut to max_his)."""
        his = [self.title_ids(t) for t in his_titles]
        target = self.title_ids(target_title)
        fixed = len(self.bos) + len(target) + self.n_user_slots + self.n_item_slots
        fixed += sum(len(ids) for ids in self.part_ids.values())
        # Drop the oldest titles until the prompt fits.
        start = 0
        his_len = sum(len(h) for h in his) + len(self.sep_ids) * max(len(his) - 1, 0)
        while fixed + his_len > self.max_len and start < len(his):
            his_len -= len(his[start]) + (len(self.sep_ids) if len(his) - start > 1 else 0)
            start += 1
        if fixed + his_len > self.max_len:
            raise PromptError(f"prompt needs {fixed} tokens without any history, more than max_txt_len={self.max_len}")
        ids: List[int] = list(self.bos)
        slot: List[int] = [SLOT_NONE] * len(ids)
        prefix_len = 0
        for i, part in enumerate(self.parts):
            if part == HIS:
                for j, h in enumerate(his[start:]):
                    if j:
                        ids += self.sep_ids
                    ids += h
            elif part == TARGET:
                prefix_len = len(ids)
                ids += target
            elif part in (USER, ITEM):
                kind = SLOT_USER if part == USER else SLOT_ITEM
                ids += [self.slot_token_id] * self.proj_token_num
                slot += [SLOT_NONE] * (len(ids) - len(slot) - self.proj_token_num) + [kind] * self.proj_token_num
                continue
            else:
                ids += self.part_ids[i]
            slot += [SLOT_NONE] * (len(ids) - len(slot))
        return BuiltPrompt(ids, slot, len(his) - start, prefix_len)
