"""Prepare MovieLens-1M (GroupLens release) in the CoLLM interaction format.

Reads ``ratings.dat`` (UserID::MovieID::Rating::Timestamp) and ``movies.dat``
(MovieID::Title::Genres) from the ``--raw`` directory; both are ``::``-separated
and latin-1 encoded.  Label = rating > 3 by default, as in CoLLM.

The output has CoLLM's layout, not CoLLM's split: their published ML-1M split
covers only a recent time window of the release; ``--since`` restricts the data in
the same spirit, but no exact reproduction of their subset is claimed. Compare
with the paper on their published files.

Example::

    collm-prepare ml1m --raw data/raw/ml-1m --out data/ml-1m

From a checkout, ``python dataset/prepare_ml1m.py`` takes the same options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .collm_format import (
    RawData,
    drop_untitled,
    filter_since,
    interactions_frame,
    make_parser,
    numbered_lines,
    open_text,
    parse_args,
    parse_int,
    parse_rating_lines,
    run_prepare,
    split_fields,
)

ENCODING = "latin-1"


def read_ratings(path: Path) -> tuple[list, list, list, list]:
    """Parse ratings.dat into parallel lists (user, item, rating, timestamp)."""
    with open_text(path, ENCODING) as handle:
        return parse_rating_lines(handle, "::", str(path), ("UserID", "MovieID", "Rating", "Timestamp"))


def read_movies(path: Path) -> dict[int, str]:
    """Parse movies.dat into {MovieID: title}."""
    titles = {}
    source = str(path)
    with open_text(path, ENCODING) as handle:
        for lineno, line in numbered_lines(handle):
            movie, title, _genres = split_fields(line, "::", 3, source, lineno)
            titles[parse_int(movie, source, lineno, "MovieID")] = title.strip()
    return titles


def load(raw_dir: Path, since: int | None) -> RawData:
    """Read the release and apply the optional time window."""
    inter = interactions_frame(*read_ratings(raw_dir / "ratings.dat"))
    titles = read_movies(raw_dir / "movies.dat")
    inter, notes = filter_since(inter, since)
    inter, more = drop_untitled(inter, titles)
    return RawData(inter, titles, notes + more)


def build_parser():
    """Command-line options: the shared ones plus --raw."""
    parser = make_parser(__doc__, default_threshold=3)
    parser.add_argument("--raw", type=Path, required=True,
                        help="directory holding ratings.dat and movies.dat (required)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(build_parser(), argv)
    return run_prepare(args, lambda: load(args.raw, args.since))


if __name__ == "__main__":
    sys.exit(main())
