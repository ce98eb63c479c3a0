"""Reading raw release files line by line: text (plain or .gz) and zip members, with
errors that name the file and the line (``collm-prepare`` scripts use these through
``collm_format``)."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError, PrepareError


def numbered_lines(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, line ending stripped), skipping blank lines."""
    for lineno, line in enumerate(stream, start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file, transparently decompressing ``.gz``; missing files raise FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    # newline="" keeps csv quoting intact; numbered_lines strips endings itself.
    return open(path, encoding=encoding, newline="")


def open_zip_member(zip_path: Path, member: str, encoding: str = "utf-8") -> io.TextIOBase:
    """Open one member of a zip (or wheel) as text, without extracting it."""
    if not Path(zip_path).is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise PrepareError(f"{zip_path}: not a valid zip file") from None
    with archive:
        try:
            raw = archive.open(member)
        except KeyError:
            raise FileNotFoundError(f"{zip_path}: has no member {member}") from None
    # Closing the archive first is fine: zipfile keeps the file open until the member closes.
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def zip_source_name(zip_path: Path, member: str) -> str:
    """How error messages name a file inside an archive."""
    return f"{zip_path}[{member}]"


def split_fields(line: str, sep: str, n_fields: int, source: str, lineno: int) -> list[str]:
    """Split ``line`` on ``sep`` and insist on exactly ``n_fields`` fields."""
    fields = line.split(sep)
    if len(fields) != n_fields:
        raise DataError(source, lineno, f"expected {n_fields} {sep!r}-separated fields, got {len(fields)}")
    return fields


def parse_int(value: str, source: str, lineno: int, what: str) -> int:
    """Parse an integer field; anything else (including '3.5') is a DataError."""
    try:
        return int(value.strip())
    except ValueError:
        raise DataError(source, lineno, f"{what} is not an integer: {value!r}") from None


def parse_rating_lines(lines: Iterable[str], sep: str, source: str,
                       names: tuple[str, str, str, str]) -> tuple[list, list, list, list]:
    """``user SEP item SEP rating SEP timestamp`` lines -> four parallel int lists;
    ``names``: what the four fields are called in error messages (the file's own terms)."""
    columns = ([], [], [], [])
    for lineno, line in numbered_lines(lines):
        for column, value, name in zip(columns, split_fields(line, sep, 4, source, lineno), names):
            column.append(parse_int(value, source, lineno, name))
    return columns
