"""Prepare MovieLens-100K in the CoLLM interaction format.

Two ways to get the raw data:

* ``--raw DIR``: a directory with the GroupLens files ``u.data`` (tab-separated
  user, item, rating, timestamp) and ``u.item`` (``|``-separated, latin-1,
  title in the second column).
* ``--from-recbole``: fetch the data automatically.  First the GroupLens zip is
  tried (5 s timeout, cached next to the cache dir as ``ml-100k.zip``); when it
  is unreachable, the ``recbole==1.2.1`` wheel is downloaded with pip into
  ``--cache-dir`` (skipped when it is already there) and its bundled RecBole
  atomic files ``ml-100k.inter`` / ``ml-100k.item`` are read straight out of the
  wheel; recbole itself is not installed.  RecBole stores the title and the
  release year apart; they are joined as ``Title (Year)`` to match MovieLens.

Label = rating > 3 by default.

Example::

    collm-prepare ml100k --from-recbole --out data/ml-100k

From a checkout, ``python dataset/prepare_ml100k.py`` takes the same options.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import TextIO

from .collm_format import (
    DataError,
    PrepareError,
    RawData,
    drop_untitled,
    filter_since,
    interactions_frame,
    make_parser,
    numbered_lines,
    open_text,
    open_zip_member,
    parse_args,
    parse_int,
    parse_rating_lines,
    run_prepare,
    split_fields,
    zip_source_name,
)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_TIMEOUT_S = 5.0
RECBOLE_VERSION = "1.2.1"
RECBOLE_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"
# Relative to the working directory, like every path in the configs (an installed
# package has no repository root to anchor them to).
DEFAULT_CACHE = Path("data") / "raw" / "recbole_wheel"
DEFAULT_OUT = Path("data") / "ml-100k"
U_ITEM_FIELDS = 24  # id, title, two dates, IMDb URL, 19 genre flags

Columns = tuple[list, list, list, list]


# ---------------------------------------------------------------- GroupLens files


def parse_u_data(handle: TextIO, source: str) -> Columns:
    """u.data: ``user<TAB>item<TAB>rating<TAB>timestamp`` per line."""
    return parse_rating_lines(handle, "\t", source, ("user id", "item id", "rating", "timestamp"))


def parse_u_item(handle: TextIO, source: str) -> dict[int, str]:
    """u.item: ``id|title|...`` per line; returns {item id: title}."""
    titles = {}
    for lineno, line in numbered_lines(handle):
        fields = split_fields(line, "|", U_ITEM_FIELDS, source, lineno)
        titles[parse_int(fields[0], source, lineno, "item id")] = fields[1].strip()
    return titles


def read_grouplens_dir(raw_dir: Path) -> tuple[Columns, dict[int, str]]:
    """Read u.data and u.item from an unpacked GroupLens release."""
    with open_text(raw_dir / "u.data", "latin-1") as handle:
        columns = parse_u_data(handle, str(raw_dir / "u.data"))
    with open_text(raw_dir / "u.item", "latin-1") as handle:
        titles = parse_u_item(handle, str(raw_dir / "u.item"))
    return columns, titles


def read_grouplens_zip(zip_path: Path) -> tuple[Columns, dict[int, str]]:
    """Read u.data and u.item straight out of GroupLens' ml-100k.zip."""
    data_member, item_member = "ml-100k/u.data", "ml-100k/u.item"
    with open_zip_member(zip_path, data_member, "latin-1") as handle:
        columns = parse_u_data(handle, zip_source_name(zip_path, data_member))
    with open_zip_member(zip_path, item_member, "latin-1") as handle:
        titles = parse_u_item(handle, zip_source_name(zip_path, item_member))
    return columns, titles


def fetch_grouplens(dest: Path) -> Path | None:
    """Download GroupLens' zip to ``dest`` (reused when present); None when unreachable.

    This is only a first try: any network or archive problem just means
    falling back to the RecBole wheel, so it never fails the run.
    """
    if dest.is_file() and zipfile.is_zipfile(dest):
        return dest
    try:
        with urllib.request.urlopen(GROUPLENS_URL, timeout=GROUPLENS_TIMEOUT_S) as response:
            payload = response.read()
    except OSError as exc:  # URLError, timeouts and resets are all OSErrors
        print(f"GroupLens not reachable ({exc}); using the RecBole wheel instead")
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".part")
    partial.write_bytes(payload)
    if not zipfile.is_zipfile(partial):
        partial.unlink()
        print("GroupLens answered with something that is not a zip; using the RecBole wheel instead")
        return None
    partial.replace(dest)
    return dest


# ---------------------------------------------------------------- RecBole wheel


def _header_index(header: str, wanted: tuple[str, ...], source: str) -> dict[str, int]:
    """Map field names (RecBole headers look like ``user_id:token``) to column numbers."""
    names = [column.split(":", 1)[0] for column in header.split("\t")]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataError(source, 1, f"header lacks column(s) {', '.join(missing)}")
    return {name: names.index(name) for name in wanted}


def parse_recbole_inter(handle: TextIO, source: str) -> Columns:
    """RecBole ``.inter``: tab-separated, header ``user_id:token item_id:token rating:float timestamp:float``."""
    lines = numbered_lines(handle)
    first = next(lines, None)
    if first is None:
        raise DataError(source, 1, "file is empty")
    header_width = len(first[1].split("\t"))
    col = _header_index(first[1], ("user_id", "item_id", "rating", "timestamp"), source)
    users, items, ratings, stamps = [], [], [], []
    for lineno, line in lines:
        fields = split_fields(line, "\t", header_width, source, lineno)
        users.append(parse_int(fields[col["user_id"]], source, lineno, "user_id"))
        items.append(parse_int(fields[col["item_id"]], source, lineno, "item_id"))
        ratings.append(parse_int(fields[col["rating"]], source, lineno, "rating"))
        stamps.append(parse_int(fields[col["timestamp"]], source, lineno, "timestamp"))
    return users, items, ratings, stamps


def parse_recbole_item(handle: TextIO, source: str) -> dict[int, str]:
    """RecBole ``.item``: titles rebuilt as ``movie_title (release_year)`` like MovieLens."""
    lines = numbered_lines(handle)
    first = next(lines, None)
    if first is None:
        raise DataError(source, 1, "file is empty")
    header_width = len(first[1].split("\t"))
    col = _header_index(first[1], ("item_id", "movie_title", "release_year"), source)
    titles = {}
    for lineno, line in lines:
        fields = split_fields(line, "\t", header_width, source, lineno)
        title = fields[col["movie_title"]].strip()
        year = fields[col["release_year"]].strip()
        # RecBole writes a placeholder (e.g. 'unkonwn') when the year is unknown.
        titles[parse_int(fields[col["item_id"]], source, lineno, "item_id")] = (
            f"{title} ({year})" if year.isdigit() else title
        )
    return titles


def read_recbole_wheel(wheel: Path) -> tuple[Columns, dict[int, str]]:
    """Read ml-100k.inter and ml-100k.item out of a recbole wheel (any zip with those paths)."""
    with open_zip_member(wheel, RECBOLE_INTER) as handle:
        columns = parse_recbole_inter(handle, zip_source_name(wheel, RECBOLE_INTER))
    with open_zip_member(wheel, RECBOLE_ITEM) as handle:
        titles = parse_recbole_item(handle, zip_source_name(wheel, RECBOLE_ITEM))
    return columns, titles


def fetch_recbole_wheel(cache_dir: Path) -> Path:
    """Return the cached recbole wheel, downloading it with pip when absent."""
    pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
    cached = sorted(cache_dir.glob(pattern))
    if cached:
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"recbole=={RECBOLE_VERSION}", "-d", str(cache_dir)]
    print(f"downloading recbole=={RECBOLE_VERSION} into {cache_dir}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    cached = sorted(cache_dir.glob(pattern))
    if result.returncode != 0 or not cached:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrepareError(f"pip download of recbole=={RECBOLE_VERSION} failed: {detail}")
    return cached[0]


# ---------------------------------------------------------------- script


def load(args) -> RawData:
    """Read the raw data from --raw, or fetch it for --from-recbole."""
    if args.raw is not None:
        columns, titles = read_grouplens_dir(args.raw)
    else:
        zip_path = fetch_grouplens(args.cache_dir.parent / "ml-100k.zip")
        if zip_path is not None:
            columns, titles = read_grouplens_zip(zip_path)
        else:
            columns, titles = read_recbole_wheel(fetch_recbole_wheel(args.cache_dir))
    inter, notes = filter_since(interactions_frame(*columns), args.since)
    inter, more = drop_untitled(inter, titles)
    return RawData(inter, titles, notes + more)


def build_parser():
    """Command-line options: the shared ones plus the two input modes."""
    parser = make_parser(__doc__, default_threshold=3, default_out=DEFAULT_OUT)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw", type=Path, default=None,
                        help="directory holding GroupLens' u.data and u.item")
    source.add_argument("--from-recbole", action="store_true",
                        help="fetch the data: GroupLens' zip if reachable, else the files bundled "
                             f"in the recbole=={RECBOLE_VERSION} wheel (downloaded with pip)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where --from-recbole keeps the downloaded wheel; GroupLens' zip goes "
                             "to its parent directory (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(build_parser(), argv)
    return run_prepare(args, lambda: load(args))


if __name__ == "__main__":
    sys.exit(main())
