"""Reading small CSV/TSV inputs (variants, probe labels) strictly, with one-line errors.

Spreadsheets write CSV in ways Python's `csv` module takes silently but wrongly: Excel puts
a UTF-8 byte-order mark before the first column name (which then reads as ``\\ufeffmutant``),
a header may name a column twice (a `DictReader` keeps only the last cell), and a file saved
in a legacy encoding (Latin-1, UTF-16) is not UTF-8. Here the byte-order mark is dropped, a
repeated column and bytes that are not UTF-8 are `InputError`s naming the file and line, and
an I/O error while reading is one line too. The whole file is read at once: these inputs are
small tables (one row per protein or variant).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from sciformer.errors import InputError


def read_text(path: Path, what: str) -> str:
    """The text of `path` decoded as UTF-8 (a leading byte-order mark dropped); `what` names
    the kind of file in messages (e.g. "variants CSV")."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                         "save the file as UTF-8") from None


def read_rows(path: Path, what: str, delimiter: str = ","
              ) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """(column names, iterator of (line number, {column: cell})) of a CSV file.

    Refuses a header that names a column twice (unnamed columns aside); a row with more
    cells than the header is an error naming its line (a row with fewer cells leaves the
    missing ones empty, as `csv.DictReader` does).
    """
    reader = csv.reader(io.StringIO(read_text(path, what), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: empty {what} (no header line)") from None
    except csv.Error as exc:
        raise InputError(f"{path} line 1: not a valid {what} ({exc})") from None
    columns = [c.strip() for c in header]
    seen: set[str] = set()
    for c in columns:
        if c and c in seen:
            raise InputError(f"{path} line 1: column '{c}' appears twice in the header")
        seen.add(c)
    return columns, _rows(path, what, reader, columns)


def _rows(path: Path, what: str, reader, columns: list[str]
          ) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            if len(cells) > len(columns):
                raise InputError(f"{path} line {reader.line_num}: more cells than columns "
                                 "in the header")
            yield reader.line_num, dict(zip(columns, cells + [""] * (len(columns) - len(cells))))
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: not a valid {what} ({exc})") from None
