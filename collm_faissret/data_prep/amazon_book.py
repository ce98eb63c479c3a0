"""Prepare Amazon Books (2018 release) in the CoLLM interaction format.

Inputs are the JSON-lines files of the 2018 Amazon review data (gzip or plain):

* ``--reviews Books.json.gz``: one review per line with ``reviewerID``, ``asin``,
  ``overall`` (rating 1-5) and ``unixReviewTime`` (unix seconds).
* ``--meta meta_Books.json.gz``: one product per line with ``asin`` and ``title``.

Reviews of books without a (non-empty) title in the metadata are dropped, and
exact repeats of a review (same reviewer, book, rating and time; the 2018 dump
contains some) are dropped; both counts are printed.  An optional k-core
filter (``--min-user-inter`` / ``--min-item-inter``) then keeps only users and
books with enough interactions.  Label = rating > 3 by default.

The full release has ~51M reviews: use ``--since`` and/or the k-core filter to
keep the result (and memory use) reasonable.

Example::

    collm-prepare amazon_book --reviews data/raw/Books.json.gz \\
        --meta data/raw/meta_Books.json.gz --out data/amazon-book --since 1514764800

From a checkout, ``python dataset/prepare_amazon_book.py`` takes the same options.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .collm_format import (
    DataError,
    RawData,
    drop_untitled,
    interactions_frame,
    kcore_filter,
    make_parser,
    numbered_lines,
    open_text,
    parse_args,
    run_prepare,
)


def _json_record(line: str, source: str, lineno: int) -> dict:
    """Decode one JSON line that must hold an object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(source, lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(source, lineno, "expected a JSON object")
    return record


def _field(record: dict, name: str, source: str, lineno: int):
    """A required field of a JSON record."""
    if name not in record:
        raise DataError(source, lineno, f"missing field {name!r}")
    return record[name]


def _whole_number(value, source: str, lineno: int, what: str) -> int:
    """Accept 5, 5.0 or "5" (the dump writes ratings as floats); reject 4.5 and text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(source, lineno, f"{what} is not an integer: {value!r}") from None
    if isinstance(value, bool) or not number.is_integer():
        raise DataError(source, lineno, f"{what} is not an integer: {value!r}")
    return int(number)


def read_reviews(path: Path, since: int | None) -> tuple[list, list, list, list]:
    """Parse the reviews file; rows before ``since`` are skipped while reading to save memory."""
    users, items, ratings, stamps = [], [], [], []
    source = str(path)
    with open_text(path) as handle:
        for lineno, line in numbered_lines(handle):
            record = _json_record(line, source, lineno)
            stamp = _whole_number(_field(record, "unixReviewTime", source, lineno), source, lineno,
                                  "unixReviewTime")
            rating = _whole_number(_field(record, "overall", source, lineno), source, lineno, "overall")
            user = _field(record, "reviewerID", source, lineno)
            item = _field(record, "asin", source, lineno)
            if since is not None and stamp < since:
                continue
            users.append(str(user))
            items.append(str(item))
            ratings.append(rating)
            stamps.append(stamp)
    return users, items, ratings, stamps


def read_titles(path: Path, wanted: set[str]) -> dict[str, str]:
    """Parse the metadata file into {asin: title}, keeping only the asins in ``wanted``."""
    titles: dict[str, str] = {}
    source = str(path)
    with open_text(path) as handle:
        for lineno, line in numbered_lines(handle):
            record = _json_record(line, source, lineno)
            asin = str(_field(record, "asin", source, lineno))
            title = record.get("title")
            # The first non-empty title wins: the dump repeats some products.
            if asin in wanted and asin not in titles and isinstance(title, str) and title.strip():
                titles[asin] = " ".join(title.split())
    return titles


def load(args) -> RawData:
    """Read reviews and titles, then drop repeats, untitled books and (optionally) sparse ones."""
    inter = interactions_frame(*read_reviews(args.reviews, args.since))
    titles = read_titles(args.meta, set(inter["item"]))
    notes = []
    if args.since is not None:
        notes.append(f"--since {args.since}: kept {len(inter)} reviews")
    before = len(inter)
    inter = inter.drop_duplicates().reset_index(drop=True)
    if len(inter) < before:
        notes.append(f"dropped {before - len(inter)} repeated reviews")
    inter, more = drop_untitled(inter, titles)
    notes += more
    inter, more = kcore_filter(inter, args.min_user_inter, args.min_item_inter)
    return RawData(inter, titles, notes + more)


def build_parser():
    """Command-line options: the shared ones plus the two input files and the k-core filter."""
    parser = make_parser(__doc__, default_threshold=3)
    parser.add_argument("--reviews", type=Path, required=True,
                        help="reviews JSON lines, e.g. Books.json.gz (required)")
    parser.add_argument("--meta", type=Path, required=True,
                        help="metadata JSON lines with asin and title, e.g. meta_Books.json.gz (required)")
    parser.add_argument("--min-user-inter", type=int, default=0, metavar="K",
                        help="k-core: keep only users with >= K interactions; applied after dropping "
                             "repeats and untitled books, alternating with --min-item-inter until "
                             "both hold; 0 = off (default: %(default)s)")
    parser.add_argument("--min-item-inter", type=int, default=0, metavar="K",
                        help="k-core: keep only books with >= K interactions; 0 = off (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(build_parser(), argv)
    return run_prepare(args, lambda: load(args))


if __name__ == "__main__":
    sys.exit(main())
