"""What a recommendation request needs from the data: item titles, each user's latest history
and the items a user has already seen, and item ids or titles given by hand turned into items.

A known user's history is what the data says they liked up to their most recent row: that
row's history plus the items liked in that row and in the rows that share its history (rows
with one timestamp share one history; CoLLM's ML-1M split has many). Rows are put in time
order by ``timestamp`` where every split has one, else in file order, splits in the data's
order (train, valid, test).
"""
import difflib
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from ..datasets.collm_data import clean_history
from .errors import RecommendError

CLOSEST = 5  # titles an error suggests for a title that matches none


class Catalog:
    """titles: item id -> title (the retrieval catalog's); data: the loaded InteractionData."""

    def __init__(self, data, titles: Dict[int, str]):
        self.titles = titles
        self.by_title: Dict[str, List[int]] = {}
        for iid, title in sorted(titles.items()):
            self.by_title.setdefault(title, []).append(iid)
        frames = list(data.splits.values())
        cols = ["uid", "iid", "label", "his", "his_title", "title"]
        timed = all("timestamp" in df.columns for df in frames)
        rows = pd.concat([df[cols + (["timestamp"] if timed else [])] for df in frames], ignore_index=True)
        if timed:
            rows = rows.sort_values("timestamp", kind="stable").reset_index(drop=True)
        self.rows = rows
        self.of_user = rows.groupby("uid").indices  # uid -> its row positions, in time order
        self.users = np.array(sorted(self.of_user), dtype=np.int64)
        self.path = data.path

    # ----- users ---------------------------------------------------------------
    def check_user(self, uid: int) -> int:
        """uid itself when the data has rows of it; else a RecommendError saying the valid range."""
        if int(uid) in self.of_user:
            return int(uid)
        lo, hi = int(self.users.min()), int(self.users.max())
        gaps = "" if hi - lo + 1 == len(self.users) else ", with gaps"
        raise RecommendError(f"user {uid} is not in the data ({self.path}): user ids run {lo}..{hi} "
                             f"({len(self.users)} users{gaps}); for a new user give a history and no user")

    def latest(self, uid: int) -> Tuple[List[int], List[str]]:
        """(item ids, titles) the user liked up to their most recent row, oldest first."""
        pos = self.of_user[self.check_user(uid)]
        last = self.rows.iloc[pos[-1]]
        ids, titles = clean_history(last["his"], last["his_title"])
        key = tuple(ids)
        group = []  # the most recent rows sharing the last row's history, oldest first
        for p in pos[::-1]:
            row = self.rows.iloc[p]
            if tuple(clean_history(row["his"], row["his_title"])[0]) != key:
                break
            group.append(row)
        for row in reversed(group):
            if int(row["label"]) == 1 and int(row["iid"]) not in ids:
                ids.append(int(row["iid"]))
                titles.append(str(row["title"]))
        return ids, titles

    def seen(self, uid: int) -> Set[int]:
        """Items of every row of the user, liked or not."""
        return set(self.rows["iid"].to_numpy()[self.of_user[self.check_user(uid)]].tolist())

    # ----- items -----------------------------------------------------------------
    def resolve(self, entries: Sequence, what: str = "history") -> Tuple[List[int], List[str]]:
        """Entries of a ``what`` (a history, an item list) -> (item ids, titles), in the given order.

        An int is an item id; a str a title, matched exactly (the error names the closest
        titles). An id outside the catalog, a title of several items, or no entry at all is a
        RecommendError.
        """
        if len(entries) == 0:
            raise RecommendError(f"the {what} is empty: give at least one item id or title")
        ids = [self._item(e, what) for e in entries]
        return ids, [self.titles[i] for i in ids]

    def _item(self, entry, what: str) -> int:
        if isinstance(entry, (int, np.integer)):
            if int(entry) not in self.titles:
                known = sorted(self.titles)
                raise RecommendError(f"{what} item {entry} is not an item of the data ({self.path}): item ids run "
                                     f"{known[0]}..{known[-1]}")
            return int(entry)
        title = str(entry)
        ids = self.by_title.get(title)
        if ids is None:
            close = difflib.get_close_matches(title, list(self.by_title), n=CLOSEST, cutoff=0.5)
            hint = ("closest: " + "; ".join(repr(t) for t in close)) if close else "no title is close"
            raise RecommendError(f"{what} title {title!r} matches no item title exactly ({hint})")
        if len(ids) > 1:
            raise RecommendError(f"{what} title {title!r} names {len(ids)} items ({', '.join(map(str, ids))}): "
                                 "give the item id instead")
        return ids[0]
