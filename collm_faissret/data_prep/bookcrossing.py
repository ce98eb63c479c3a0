"""Prepare Book-Crossing in the CoLLM interaction format.

Reads, from the ``--raw`` directory, the two ``;``-separated, double-quoted,
latin-1 CSV files of the release (each with a header line):

* ``BX-Book-Ratings.csv``: ``"User-ID";"ISBN";"Book-Rating"``, ratings 0-10,
  where 0 means an implicit interaction: those rows are dropped.
* ``BX-Books.csv``: ``"ISBN";"Book-Title";"Book-Author";...``: only ISBN and
  title are used.  A few lines of the release carry a backslash-escaped quote
  that shifts the later columns; since only the first two columns are read,
  extra columns are accepted there.  HTML entities in titles (``&amp;``) are
  decoded.  Ratings of ISBNs without a title are dropped (count printed).

Label = rating > 5 by default, as in TALLRec.

Book-Crossing has **no timestamps**.  The rating's line number in
BX-Book-Ratings.csv stands in for time: ``timestamp`` holds that line number,
and the train/valid/test split follows file order.  The release lists ratings
grouped by user, so this split is close to a split by user: most valid/test
rows belong to users never seen in training (cold users), and each user's
history is the order in which the file lists their books.

Example::

    collm-prepare bookcrossing --raw data/raw/BX-CSV-Dump --out data/bookcrossing

From a checkout, ``python dataset/prepare_bookcrossing.py`` takes the same options.
"""

from __future__ import annotations

import csv
import html
import sys
from pathlib import Path

from .collm_format import (
    DataError,
    RawData,
    drop_untitled,
    interactions_frame,
    make_parser,
    open_text,
    parse_args,
    parse_int,
    run_prepare,
)

ENCODING = "latin-1"
RATINGS_FILE = "BX-Book-Ratings.csv"
BOOKS_FILE = "BX-Books.csv"


def _rows(path: Path):
    """Yield ``(line_number, fields)`` for the data rows (header skipped, blank lines ignored)."""
    with open_text(path, ENCODING) as handle:
        reader = csv.reader(handle, delimiter=";", quotechar='"')
        try:
            next(reader, None)
            for fields in reader:
                if fields:
                    # line_num counts physical lines read so far, so it names the row's (last) line.
                    yield reader.line_num, fields
        except csv.Error as exc:
            raise DataError(str(path), reader.line_num, f"unreadable CSV ({exc})") from None


def read_ratings(path: Path) -> tuple[list, list, list, list]:
    """Parse BX-Book-Ratings.csv, dropping implicit (0) ratings; time = line number."""
    users, items, ratings, stamps = [], [], [], []
    source = str(path)
    for lineno, fields in _rows(path):
        if len(fields) != 3:
            raise DataError(source, lineno, f"expected 3 ';'-separated fields, got {len(fields)}")
        user, isbn, rating_text = fields
        rating = parse_int(rating_text, source, lineno, "Book-Rating")
        if not 0 <= rating <= 10:
            raise DataError(source, lineno, f"Book-Rating {rating} is outside 0-10")
        if rating == 0:
            continue
        users.append(parse_int(user, source, lineno, "User-ID"))
        items.append(isbn.strip())
        ratings.append(rating)
        stamps.append(lineno)
    return users, items, ratings, stamps


def read_titles(path: Path) -> dict[str, str]:
    """Parse BX-Books.csv into {ISBN: title}."""
    titles: dict[str, str] = {}
    source = str(path)
    for lineno, fields in _rows(path):
        if len(fields) < 2:
            raise DataError(source, lineno, f"expected at least 2 ';'-separated fields, got {len(fields)}")
        isbn, title = fields[0].strip(), html.unescape(fields[1]).strip()
        titles.setdefault(isbn, title)
    return titles


def load(raw_dir: Path) -> RawData:
    """Read both files and drop ratings of books without a title."""
    inter = interactions_frame(*read_ratings(raw_dir / RATINGS_FILE))
    titles = read_titles(raw_dir / BOOKS_FILE)
    inter, notes = drop_untitled(inter, titles)
    return RawData(inter, titles, notes)


def build_parser():
    """Command-line options: the shared ones (no --since: there is no time) plus --raw."""
    parser = make_parser(__doc__, default_threshold=5, timestamps=False)
    parser.add_argument("--raw", type=Path, required=True,
                        help=f"directory holding {RATINGS_FILE} and {BOOKS_FILE} (required)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(build_parser(), argv)
    return run_prepare(args, lambda: load(args.raw))


if __name__ == "__main__":
    sys.exit(main())
