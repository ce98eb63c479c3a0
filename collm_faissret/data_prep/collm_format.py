"""Shared code of the data set converters (``collm-prepare NAME``, ``dataset/prepare_*.py``).

Every script parses one raw release into a *normalized interactions table*
(columns ``user``, ``item``, ``rating``, ``timestamp``; one row per rating, in
file order) plus a mapping from item key to title, then hands both to
:func:`run_prepare`, which builds and writes the CoLLM interaction format:

========== ======= =========================================================
column     dtype   meaning
========== ======= =========================================================
uid        int64   dense user id, 1..n_users (0 is reserved for padding)
iid        int64   dense item id, 1..n_items (0 is reserved for padding)
label      int64   1 when rating > threshold, else 0
timestamp  int64   unix seconds (or a time proxy, see the script)
his        object  list: 0, then the iids the user liked before this row
his_title  object  list: '', then the titles of those items
title      object  str, the target item's title
flag       float64 always -1.0 (kept because CoLLM's files have it)
not_cold   int64   1 when uid and iid both occur in the training split
========== ======= =========================================================

Splits are by time, as in CoLLM: all interactions are sorted by timestamp
(ties keep file order) and cut into train / valid / test by row fractions.
Histories run over *all* of a user's earlier rows, across splits, so cold
(unseen in training) users in valid/test still have a history.

Output files are ``<split>_ood2.pkl`` (``DataFrame.to_pickle``, the layout
CoLLM users have on disk) and/or ``<split>_ood2.parquet``.  Read back with
``pandas.read_parquet``, the list columns come as numpy arrays rather than
Python lists and ``title`` as pandas' string dtype; the values are the same.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import numpy as np
import pandas as pd

from ..errors import DataError, PrepareError

# The raw-reading helpers, re-exported: the scripts import everything shared from this module.
from .raw_text import (  # noqa: F401
    numbered_lines,
    open_text,
    open_zip_member,
    parse_int,
    parse_rating_lines,
    split_fields,
    zip_source_name,
)

SPLITS = ("train", "valid", "test")
COLUMNS = ("uid", "iid", "label", "timestamp", "his", "his_title", "title", "flag", "not_cold")
FORMATS = ("pickle", "parquet", "both")


class RawData(NamedTuple):
    """What a script's loader returns: interactions, titles, and notes to print."""

    interactions: pd.DataFrame
    titles: Mapping[object, str]
    notes: list[str]


# ---------------------------------------------------------------- filters


def interactions_frame(users: list, items: list, ratings: list, timestamps: list) -> pd.DataFrame:
    """Assemble the normalized interactions table from parallel lists (file order kept)."""
    return pd.DataFrame(
        {
            "user": pd.Series(users, dtype=object),
            "item": pd.Series(items, dtype=object),
            "rating": np.asarray(ratings, dtype=np.float64),
            "timestamp": np.asarray(timestamps, dtype=np.int64),
        }
    )


def filter_since(inter: pd.DataFrame, since: int | None) -> tuple[pd.DataFrame, list[str]]:
    """Keep rows with ``timestamp >= since`` (CoLLM keeps only a recent window of ML-1M)."""
    if since is None:
        return inter, []
    keep = inter["timestamp"].to_numpy() >= since
    dropped = int((~keep).sum())
    return inter[keep].reset_index(drop=True), [f"--since {since}: dropped {dropped} earlier interactions"]


def drop_untitled(inter: pd.DataFrame, titles: Mapping[object, str]) -> tuple[pd.DataFrame, list[str]]:
    """Drop interactions whose item has no (non-empty) title: the prompts need one."""
    has_title = inter["item"].map(lambda key: bool(titles.get(key))).to_numpy(dtype=bool)
    if has_title.all():
        return inter, []
    lost = inter.loc[~has_title, "item"]
    note = f"dropped {len(lost)} interactions with {lost.nunique()} items that have no title"
    return inter[has_title].reset_index(drop=True), [note]


def kcore_filter(inter: pd.DataFrame, min_user: int, min_item: int) -> tuple[pd.DataFrame, list[str]]:
    """Repeatedly drop users with < ``min_user`` and items with < ``min_item`` interactions.

    Dropping a user can push an item below its minimum and vice versa, hence the loop
    until nothing changes.  A minimum of 0 (or 1) switches that side off.
    """
    if min_user <= 1 and min_item <= 1:
        return inter, []
    before = len(inter)
    while True:
        user_counts = inter["user"].map(inter["user"].value_counts())
        item_counts = inter["item"].map(inter["item"].value_counts())
        keep = ((user_counts >= min_user) & (item_counts >= min_item)).to_numpy(dtype=bool)
        if keep.all():
            break
        inter = inter[keep].reset_index(drop=True)
    note = f"k-core (users >= {min_user}, items >= {min_item}): dropped {before - len(inter)} interactions"
    return inter, [note]


# ---------------------------------------------------------------- CoLLM frames


def split_points(n_rows: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Row offsets where valid and test start: train gets floor(n * a / (a + b + c)) rows."""
    total = sum(fractions)
    # The tiny epsilon stops float noise (0.7 + 0.2 == 0.8999999999999999) from losing a row.
    cut_train = math.floor(n_rows * fractions[0] / total + 1e-9)
    cut_valid = math.floor(n_rows * (fractions[0] + fractions[1]) / total + 1e-9)
    return cut_train, cut_valid


def _histories(uids: list[int], iids: list[int], labels: list[int], titles_by_iid: list[str],
               max_his_keep: int) -> tuple[list[list[int]], list[list[str]]]:
    """For each row (in time order): the user's earlier liked iids and their titles.

    Both lists always start with the padding entry (0 / ''), also when the history is
    otherwise empty: CoLLM's published ML-1M files pair ``[0]`` with ``['']`` as well.
    """
    liked_ids: dict[int, list[int]] = {}
    liked_titles: dict[int, list[str]] = {}
    his_col: list[list[int]] = []
    title_col: list[list[str]] = []
    for uid, iid, label in zip(uids, iids, labels, strict=True):
        ids = liked_ids.setdefault(uid, [])
        names = liked_titles.setdefault(uid, [])
        start = max(len(ids) - max_his_keep, 0) if max_his_keep > 0 else 0
        # Slices copy, so each row owns its list; the int/str objects stay shared.
        his_col.append([0] + ids[start:])
        title_col.append([""] + names[start:])
        if label:
            ids.append(iid)
            names.append(titles_by_iid[iid])
    return his_col, title_col


def build_collm_splits(inter: pd.DataFrame, titles: Mapping[object, str], threshold: float,
                       fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                       max_his_keep: int = 0) -> dict[str, pd.DataFrame]:
    """Turn a normalized interactions table into CoLLM's train/valid/test DataFrames.

    Ids are assigned in order of first appearance in time order, so training users
    and items get the small ids.  Every item in ``inter`` must have a title.
    """
    if inter.empty:
        raise PrepareError("no interactions left to write (check the input and the filters)")
    # Stable sort: equal timestamps keep their file order, which makes runs reproducible.
    order = np.argsort(inter["timestamp"].to_numpy(), kind="stable")
    inter = inter.iloc[order].reset_index(drop=True)
    user_codes, _ = pd.factorize(inter["user"])
    item_codes, item_keys = pd.factorize(inter["item"])
    uid = (user_codes + 1).astype(np.int64)
    iid = (item_codes + 1).astype(np.int64)
    label = (inter["rating"].to_numpy() > threshold).astype(np.int64)
    titles_by_iid = [""] + [titles[key] for key in item_keys]

    his, his_title = _histories(uid.tolist(), iid.tolist(), label.tolist(), titles_by_iid, max_his_keep)
    cut_train, cut_valid = split_points(len(inter), fractions)
    warm_users = np.isin(uid, uid[:cut_train])
    warm_items = np.isin(iid, iid[:cut_train])
    not_cold = (warm_users & warm_items).astype(np.int64)

    full = pd.DataFrame(
        {
            "uid": uid,
            "iid": iid,
            "label": label,
            "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
            # Explicit object dtype: pandas >= 3 would otherwise store str columns
            # with its own string dtype, which older pandas cannot unpickle.
            "his": pd.Series(his, dtype=object),
            "his_title": pd.Series(his_title, dtype=object),
            "title": pd.Series([titles_by_iid[i] for i in iid.tolist()], dtype=object),
            "flag": np.full(len(inter), -1.0),
            "not_cold": not_cold,
        }
    )
    bounds = {"train": (0, cut_train), "valid": (cut_train, cut_valid), "test": (cut_valid, len(inter))}
    frames = {}
    for split, (lo, hi) in bounds.items():
        part = full.iloc[lo:hi]
        # CoLLM's files list each user's rows together, oldest first.
        part = part.sort_values("uid", kind="stable").reset_index(drop=True)
        frames[split] = part
    return frames


def compute_stats(frames: Mapping[str, pd.DataFrame], threshold: float, args: Mapping) -> dict:
    """The ``stats.json`` summary: per-split sizes, label mean and cold fraction."""
    stats: dict = {}
    users: set[int] = set()
    items: set[int] = set()
    for split in SPLITS:
        df = frames[split]
        users.update(df["uid"].tolist())
        items.update(df["iid"].tolist())
        rows = len(df)
        stats[split] = {
            "rows": rows,
            "users": int(df["uid"].nunique()),
            "items": int(df["iid"].nunique()),
            # None (JSON null) for an empty split rather than NaN, which is not valid JSON.
            "label_mean": round(float(df["label"].mean()), 6) if rows else None,
            "cold_fraction": round(float((df["not_cold"] == 0).mean()), 6) if rows else None,
        }
    stats["n_users"] = len(users)
    stats["n_items"] = len(items)
    stats["threshold"] = threshold
    stats["args"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in args.items()}
    return stats


# ---------------------------------------------------------------- output


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing non-empty output (or a file in its place) unless ``force``."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PrepareError(f"output directory {out} is not empty; pass --force to overwrite it")


def write_output(frames: Mapping[str, pd.DataFrame], stats: dict, out: Path, fmt: str, force: bool) -> None:
    """Write the splits and stats.json into ``out`` all at once.

    Everything is written into a temporary directory next to ``out`` and renamed
    into place only when complete, so an interrupted run never leaves half a data set.
    """
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, whose 0700 mode would stick to the renamed result) honours the umask.
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for split in SPLITS:
            if fmt in ("pickle", "both"):
                frames[split].to_pickle(staging / f"{split}_ood2.pkl")
            if fmt in ("parquet", "both"):
                frames[split].to_parquet(staging / f"{split}_ood2.parquet", index=False)
        with open(staging / "stats.json", "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2)
            handle.write("\n")
        if out.exists():
            # Move the old output aside first: rename cannot replace a non-empty directory.
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


# ---------------------------------------------------------------- command line


def _split_fraction(text: str) -> float:
    """argparse type for one --split fraction: a non-negative number."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"split fractions must be >= 0, got {text}")
    return value


def make_parser(description: str, *, default_threshold: float, default_out: Path | None = None,
                timestamps: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options every prepare script shares.

    Scripts add their own input options (``--raw``, ``--reviews``...) to it.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    out_help = "output directory for <split>_ood2.pkl/.parquet and stats.json"
    if default_out is None:
        parser.add_argument("--out", type=Path, required=True, help=out_help + " (required)")
    else:
        parser.add_argument("--out", type=Path, default=default_out, help=out_help + " (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=float(default_threshold),
                        help="label = 1 when rating > THRESHOLD, else 0 (default: %(default)s)")
    parser.add_argument("--split", type=_split_fraction, nargs=3, default=[0.8, 0.1, 0.1],
                        metavar=("TRAIN", "VALID", "TEST"),
                        help="fractions of the time-sorted interactions for train, valid and test; "
                             "normalized by their sum (default: 0.8 0.1 0.1)")
    parser.add_argument("--format", choices=FORMATS, default="pickle",
                        help="pickle writes <split>_ood2.pkl (CoLLM's layout), parquet writes "
                             "<split>_ood2.parquet, both writes both (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a non-empty output directory (refused otherwise)")
    parser.add_argument("--max-his-keep", type=int, default=0, metavar="N",
                        help="keep only the N most recent liked items in each history; "
                             "0 keeps them all, as CoLLM does (default: %(default)s)")
    if timestamps:
        parser.add_argument("--since", type=int, default=None, metavar="UNIX_SECONDS",
                            help="drop interactions before this unix time before anything else "
                                 "(CoLLM uses a recent window; default: keep all)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the shared options (argparse exits with code 2 on errors)."""
    args = parser.parse_args(argv)
    if sum(args.split) <= 0:
        parser.error("--split fractions must not all be zero")
    if args.max_his_keep < 0:
        parser.error("--max-his-keep must be >= 0")
    return args


def run_prepare(args: argparse.Namespace, load: Callable[[], RawData]) -> int:
    """Load, build and write one data set; the common body of every script's ``main``.

    Returns the exit code: 0 on success, 2 (after one ``error:`` line on stderr)
    when the input is missing or malformed or the output is refused.
    """
    try:
        # Checked before reading anything, so a refused run is quick and touches nothing.
        check_output_dir(args.out, args.force)
        raw = load()
        frames = build_collm_splits(raw.interactions, raw.titles, args.threshold,
                                    tuple(args.split), args.max_his_keep)
        stats = compute_stats(frames, args.threshold, vars(args))
        write_output(frames, stats, args.out, args.format, args.force)
    except (PrepareError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in raw.notes:
        print(note)
    for split in SPLITS:
        part = stats[split]
        print(f"{split}: {part['rows']} rows, {part['users']} users, {part['items']} items, "
              f"label mean {part['label_mean']}, cold fraction {part['cold_fraction']}")
    print(f"wrote {args.out}")
    return 0
