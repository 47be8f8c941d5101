"""Streaming FASTA reader with validation (the FASTA contract in DESIGN.md).

The file is read in binary, in large chunks, and cut into records at every line that starts
with `>`; whitespace removal and upper-casing happen in one `bytes.translate` pass per record,
so the reader does no per-character Python work and holds at most one chunk plus one record.
Plain and gzip files are told apart by their magic bytes, not their suffix.

Every problem with the input is an `InputError` whose one-line message names the file, the
line and, where there is one, the record id. Letters outside the ESM alphabet are kept in the
sequence (the tokenizer maps them to `<unk>`) and reported by ONE warning after the last record.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from sciformer.errors import InputError

#: Residue letters of the ESM-2 alphabet; anything else in a sequence is an "unknown letter".
RESIDUE_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
MASK_TOKEN = "<mask>"

_CHUNK = 1 << 20  # bytes per read: large enough that per-chunk Python overhead is negligible
_GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE = b" \t\r\n\v\f"
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + _WHITESPACE  # printable ASCII; the rest is binary
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RESIDUE_BYTES = RESIDUE_LETTERS.encode("ascii")
_MASK = MASK_TOKEN.encode("ascii")
_MASK_UPPER = _MASK.upper()


@dataclass(frozen=True, slots=True)
class FastaRecord:
    """One FASTA record, validated and normalised.

    `sequence` is upper-cased with whitespace removed and one trailing `*` (stop codon)
    dropped; it may contain literal `<mask>` tokens and unknown letters, which the tokenizer
    maps to `<mask>` and `<unk>`. `line` is the 1-based line of the header, for messages.
    """

    id: str
    description: str
    sequence: str
    line: int


@dataclass
class _UnknownTally:
    """Counts unknown residue letters over a file, keeping the first example for the warning."""

    letters: int = 0
    records: int = 0
    example: str = ""

    def add(self, unknown: bytes, record_id: str, line: int) -> None:
        """Record the unknown letters `unknown` found in one record."""
        if not self.example:
            self.example = f"{chr(unknown[0])!r} in record {record_id} at line {line}"
        self.letters += len(unknown)
        self.records += 1

    def warn(self, name: str) -> None:
        """Emit the single end-of-file warning, if anything unknown was seen."""
        if self.letters:
            warnings.warn(
                f"{name}: {self.letters} unknown residue letters in {self.records} records "
                f"mapped to <unk> (e.g. {self.example})",
                UserWarning,
                stacklevel=3,
            )


def _open_binary(path: Path) -> BinaryIO:
    """Open `path` for binary reading, transparently gunzipping when it starts with 1f 8b."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open FASTA file ({exc.strerror or exc})") from None
    if fh.peek(2)[:2] != _GZIP_MAGIC:
        return fh
    fh.close()
    return gzip.open(path, "rb")  # type: ignore[return-value]


def _read_chunks(fh: BinaryIO, name: str) -> Iterator[bytes]:
    """Yield raw chunks, checking each is text; bad bytes and corrupt gzip name the line."""
    lines_before = 0  # newlines in the chunks already yielded
    try:
        for chunk in iter(partial(fh.read, _CHUNK), b""):
            bad = chunk.translate(None, _TEXT_BYTES)  # one C pass per chunk
            if bad:
                where = lines_before + chunk.count(b"\n", 0, chunk.index(bad[:1])) + 1
                raise InputError(
                    f"{name} line {where}: not a text FASTA file "
                    f"(byte 0x{bad[0]:02x}; binary data?)"
                )
            lines_before += chunk.count(b"\n")
            yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{name} near line {lines_before + 1}: corrupt or truncated gzip data ({exc})"
        ) from None


def _split_records(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Cut a byte stream at every newline followed by '>'.

    Yields the text before the first record (the preamble, usually empty), then each record
    without its leading '>' and without the newline before the next '>'. The stream is
    treated as if it began with a newline, so a '>' on line 1 starts a record. A trailing
    newline is held back to the next chunk so a "\\n>" across a chunk boundary is found.
    Pieces of a record that spans chunks are joined once (no quadratic copying).
    """
    carry, pending = b"\n", []
    for chunk in chunks:
        data = carry + chunk
        carry = b"\n" if data.endswith(b"\n") else b""
        parts = data[: len(data) - len(carry)].split(b"\n>")
        if len(parts) == 1:
            pending.append(parts[0])
            continue
        pending.append(parts[0])
        yield b"".join(pending)
        yield from parts[1:-1]
        pending = [parts[-1]]
    pending.append(carry)
    yield b"".join(pending)


def _check_preamble(block: bytes, name: str) -> int:
    """Validate the text before the first '>' (blank lines only); return the first record's line.

    `block` starts with the virtual newline of `_split_records`, so its line k is file line k.
    """
    for number, text in enumerate(block.split(b"\n")):
        if text.strip():
            shown = text.strip()[:30].decode("ascii")
            raise InputError(f"{name} line {number}: text before the first '>' ({shown!r})")
    return block.count(b"\n")


def _record_error(name: str, line: int, words: list[bytes], seen: dict[bytes, int]) -> None:
    """Raise the InputError for a record that failed the cheap checks in `read_fasta`."""
    if not words:
        raise InputError(f"{name} line {line}: header with no id")
    record_id, first = words[0].decode("ascii"), seen.get(words[0], line)
    if first != line:
        raise InputError(
            f"{name} line {line}: duplicate id {record_id!r} (first seen at line {first})"
        )
    raise InputError(f"{name} line {line}: empty record {record_id!r} (no residues)")


def _unusual_sequence(seq: bytes, record_id: bytes, line: int, tally: _UnknownTally) -> bytes:
    """Slow path for a sequence with gaps, `<mask>` or unknown letters: count and normalise.

    The unknown letters are what is left after deleting every ESM residue letter (one
    C-speed translate); `<MASK>` tokens are excepted and restored to lowercase `<mask>`.
    """
    if b"<" in seq and _MASK_UPPER in seq:
        unknown = seq.replace(_MASK_UPPER, b"").translate(None, _RESIDUE_BYTES)
        seq = seq.replace(_MASK_UPPER, _MASK)
    else:
        unknown = seq.translate(None, _RESIDUE_BYTES)
    if unknown:
        tally.add(unknown, record_id.decode("ascii"), line)
    return seq


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Stream the records of a plain or gzipped FASTA file, validating as it goes.

    Errors (all `InputError`, naming file, line and record id): missing/unreadable file,
    binary data, text before the first '>', a header with no id, an empty record, a duplicate
    id (both lines named), and a file with no records at all. Unknown residue letters are kept
    and counted; one `UserWarning` summarises them when the generator is exhausted.
    The per-record path is kept inline for speed: each step is one C-level bytes method.
    """
    name = str(path)
    seen: dict[bytes, int] = {}
    tally = _UnknownTally()
    with _open_binary(Path(path)) as fh:
        blocks = _split_records(_read_chunks(fh, name))
        line = _check_preamble(next(blocks), name) + 1
        for block in blocks:  # block = header line (without '>') + residue lines
            header, _, body = block.partition(b"\n")
            words = header.split(None, 1)
            seq = body.translate(_UPPER, _WHITESPACE)  # upper-case + drop whitespace, one pass
            if seq[-1:] == b"*":  # one trailing stop codon, as gene callers write it
                seq = seq[:-1]
            if not (words and seq) or seen.setdefault(words[0], line) != line:
                _record_error(name, line, words, seen)
            if not seq.isalpha() or b"J" in seq:  # ESM letters are A-Z except J, plus . and -
                seq = _unusual_sequence(seq, words[0], line, tally)
            description = words[1].strip().decode("ascii") if len(words) > 1 else ""
            yield FastaRecord(words[0].decode("ascii"), description, seq.decode("ascii"), line)
            line += block.count(b"\n") + 1  # +1: the newline eaten by the split
    if not seen:
        raise InputError(f"{name}: no FASTA records (empty file or no line starting with '>')")
    tally.warn(name)


def count_records(path: str | Path) -> int:
    """Count the lines starting with '>' in one cheap pass (for progress bars).

    Only the text check is done (binary input and corrupt gzip raise `InputError`); the
    records themselves are validated by `read_fasta`.
    """
    path = Path(path)
    count, at_line_start = 0, True
    with _open_binary(path) as fh:
        for chunk in _read_chunks(fh, str(path)):
            count += chunk.count(b"\n>") + (at_line_start and chunk[:1] == b">")
            at_line_start = chunk.endswith(b"\n")
    return count
