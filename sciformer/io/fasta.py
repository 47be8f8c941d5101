"""Streaming FASTA reader with validation (the FASTA contract in docs/formats.md).

The file is read in binary, in large chunks, regrouped into blocks of whole records, and each
block is parsed with a handful of vectorised passes: numpy finds the record and header spans,
drops whitespace and counts residues per record; one `bytes.translate` upper-cases the whole
block. Only the header line of each record is touched in Python, so the reader runs at tens
to hundreds of MB/s and holds at most one chunk plus one record. `read_fasta_batches` hands
out those blocks as `FastaBatch`es (sequences concatenated, for bulk tokenisation);
`read_fasta` yields one `FastaRecord` at a time. Plain and gzip files are told apart by their
magic bytes, not their suffix.

Every problem with the input is an `InputError` whose one-line message names the file, the
line and, where there is one, the record id; records before a bad one are still yielded
first. A UTF-8 byte-order mark at the start is skipped, and CRLF and CR-only line ends are
read as LF. Letters outside the ESM alphabet are kept in the sequence (the tokenizer maps them to
`<unk>`) and reported by ONE warning after the last record.
"""

from __future__ import annotations

import gzip
import itertools
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from sciformer.errors import InputError

#: Residue letters of the ESM-2 alphabet; anything else in a sequence is an "unknown letter".
RESIDUE_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
MASK_TOKEN = "<mask>"

_CHUNK = 1 << 20  # bytes per read: large enough that per-chunk Python overhead is negligible
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark
_WHITESPACE = b" \t\r\n\v\f"
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + _WHITESPACE  # printable ASCII; the rest is binary
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RESIDUE_BYTES = RESIDUE_LETTERS.encode("ascii")
_MASK = MASK_TOKEN.encode("ascii")
_MASK_UPPER = _MASK.upper()
_NOT_RESIDUE = np.ones(256, dtype=bool)  # byte -> True unless an ESM residue letter
_NOT_RESIDUE[np.frombuffer(_RESIDUE_BYTES, dtype=np.uint8)] = False


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

    def warn(self, name: str, stacklevel: int) -> None:
        """Emit the single end-of-file warning, if anything unknown was seen."""
        if self.letters:
            warnings.warn(
                f"{name}: {self.letters} unknown residue letters in {self.records} records "
                f"mapped to <unk> (e.g. {self.example})",
                UserWarning,
                stacklevel=stacklevel,
            )


def _open_binary(path: Path) -> BinaryIO:
    """Open `path` for binary reading, transparently gunzipping when it starts with 1f 8b."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open FASTA file ({exc.strerror or exc})") from None
    try:
        magic = fh.peek(2)[:2]
    except OSError as exc:  # e.g. an I/O error of the disk or network file system
        fh.close()
        raise InputError(f"{path}: cannot read FASTA file ({exc.strerror or exc})") from None
    if magic != _GZIP_MAGIC:
        return fh
    fh.close()
    return gzip.open(path, "rb")  # type: ignore[return-value]


def _text_chunks(fh: BinaryIO) -> Iterator[bytes]:
    """Raw chunks with a leading UTF-8 byte-order mark dropped (Excel and some Windows
    editors write one) and CR-only (classic Mac) and CRLF line ends turned into LF, so every
    line is counted; a CR at a chunk's end waits for the next chunk (it may start with LF)."""
    reads = iter(partial(fh.read, _CHUNK), b"")
    head = b""
    for chunk in reads:  # enough bytes to tell whether the file starts with a BOM
        head += chunk
        if len(head) >= len(_BOM) or not _BOM.startswith(head):
            break
    carry = b""
    for chunk in itertools.chain([head.removeprefix(_BOM)], reads):
        chunk, carry = carry + chunk, b""
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, carry = chunk[:-1], b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if chunk:
            yield chunk
    if carry:
        yield b"\n"


def _read_chunks(fh: BinaryIO, name: str) -> Iterator[bytes]:
    """Yield text chunks (see `_text_chunks`), checking each is text; bad bytes and corrupt
    gzip name the line."""
    lines_before = 0  # newlines in the chunks already yielded
    try:
        for chunk in _text_chunks(fh):
            newlines = chunk.count(b"\n")
            a = np.frombuffer(chunk, dtype=np.uint8)
            # fast check (two vectorised passes): printable ASCII and newlines only
            if not (a.max() < 0x7F and np.count_nonzero(a < 0x20) == newlines):
                bad = chunk.translate(None, _TEXT_BYTES)  # exact check: any other whitespace
                if bad:
                    where = lines_before + chunk.count(b"\n", 0, chunk.index(bad[:1])) + 1
                    raise InputError(
                        f"{name} line {where}: not a text FASTA file "
                        f"(byte 0x{bad[0]:02x}; binary data?)"
                    )
            lines_before += newlines
            yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        if type(exc) is OSError and exc.errno is not None:  # the disk, not the gzip stream
            raise InputError(f"{name} near line {lines_before + 1}: cannot read "
                             f"({exc.strerror})") from None
        raise InputError(
            f"{name} near line {lines_before + 1}: corrupt or truncated gzip data ({exc})"
        ) from None


def _cut_blocks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Regroup a byte stream into blocks of whole records, cut just before each last '\\n>'.

    The stream is treated as if it began with a newline (so a '>' on line 1 starts a record);
    every block therefore starts with a newline, and the first holds the preamble (text before
    the first record). One block is yielded per chunk that contains a record start; a record
    spanning many chunks is joined once (no quadratic copying). The last block is always
    yielded, even when it is only the virtual newline of an empty file.
    """
    pending: list[bytes] = [b"\n"]
    for chunk in chunks:
        probe = pending[-1][-1:] + chunk  # one byte of context: a '\\n>' across the seam
        cut = probe.rfind(b"\n>")
        if cut < 0:
            pending.append(chunk)
        elif cut == 0:  # the newline ended the previous chunk
            pending[-1] = pending[-1][:-1]
            yield b"".join(pending)
            pending = [b"\n" + chunk]
        else:
            yield b"".join([*pending, chunk[: cut - 1]])
            pending = [chunk[cut - 1 :]]
    yield b"".join(pending)


def _record_spans(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(record starts at '>', header ends, header line numbers within the block, newlines) of
    block `a`.

    A record starts at a '>' that follows a newline; its header ends at the next newline (`a`
    ends with a sentinel newline, so there always is one). Line numbers count the newlines
    before the '>' (1-based, as the block's first byte is a newline).
    """
    nl = np.flatnonzero(a == 10)  # every newline
    k = np.flatnonzero(a[np.minimum(nl + 1, len(a) - 1)] == 62)  # newlines followed by '>'
    starts = nl[k] + 1
    header_ends = nl[np.minimum(k + 1, len(nl) - 1)]
    return starts, header_ends, k + 1, len(nl) - 1  # the sentinel is not a line


def _spans_index(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Positions lo[0]..hi[0]-1, lo[1]..hi[1]-1, ... as one int64 array (no Python loop).

    A cumulative sum of steps: +1 inside a span, a jump to the next span's start between them.
    """
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if not len(lo):
        return np.zeros(0, dtype=np.int64)
    lens = hi - lo
    step = np.ones(int(lens.sum()), dtype=np.int64)
    step[0] = lo[0]
    step[(np.cumsum(lens) - lens)[1:]] = lo[1:] - hi[:-1] + 1
    return np.cumsum(step)


def _gather_text(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[str]:
    """The strings a[lo[i]:hi[i]], cut apart at the sentinel newline `a[-1]` placed after each."""
    if not len(lo):
        return []
    idx = _spans_index(lo, hi + 1)
    idx[np.cumsum(hi + 1 - lo) - 1] = len(a) - 1  # one separator after each span
    return a[idx].tobytes().decode("ascii").split("\n")[:-1]


def _header_fields(a: np.ndarray, starts: np.ndarray,
                   header_ends: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, descriptions, has-id flags) of every header, as `header.split(None, 1)` would cut
    them (the description stripped), found by binary searches among the header bytes."""
    region = _spans_index(starts, header_ends + 1)  # header bytes and their newline
    text = region[a[region] > 0x20]  # non-whitespace positions in headers
    space = region[a[region] <= 0x20]  # whitespace positions (each header ends with one)
    id_lo = text[np.minimum(np.searchsorted(text, starts + 1), len(text) - 1)]
    has_id = (id_lo > starts) & (id_lo < header_ends)
    id_lo = np.where(has_id, id_lo, header_ends)
    id_hi = space[np.searchsorted(space, id_lo)]
    after = np.searchsorted(text, id_hi)
    desc_lo = np.minimum(text[np.minimum(after, len(text) - 1)], header_ends)
    desc_lo = np.where(after < len(text), desc_lo, header_ends)
    desc_hi = np.maximum(text[np.searchsorted(text, header_ends) - 1] + 1, desc_lo)
    return _gather_text(a, id_lo, id_hi), _gather_text(a, desc_lo, desc_hi), has_id


def _residue_bytes(a: np.ndarray, starts: np.ndarray,
                   header_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of every record, upper-cased, whitespace and one trailing '*' removed.

    Vectorised: every non-whitespace byte (> 0x20 once the text check passed) outside the
    headers is kept by one boolean selection; each record's '>' is kept too, turned into a
    0 byte (absent from text), so the record boundaries are the zeros of the result.
    Returns the concatenated residues (uint8) and the (n + 1,) record offsets into them.
    """
    keep = a > 0x20  # (N,)
    keep[_spans_index(starts + 1, header_ends)] = False
    marked = a.copy()
    marked[starts] = 0  # record separators
    picked = marked[keep]  # (n + residues,)
    zeros = np.flatnonzero(picked == 0)
    seq = np.delete(picked, zeros)
    offsets = np.append(zeros - np.arange(len(zeros)), len(seq))  # (n + 1,)
    if len(seq) and seq.max() >= ord("a"):  # upper-case only when something is lower-case
        seq = np.frombuffer(seq.tobytes().translate(_UPPER), dtype=np.uint8)
    counts = np.diff(offsets)
    last = offsets[1:] - 1  # each record's last residue
    stop = np.flatnonzero((counts > 0) & (seq[np.maximum(last, 0)] == ord("*"))) if len(seq) else []
    if len(stop):  # one trailing stop codon per record, as gene callers write it
        seq = np.delete(seq, last[stop])
        counts[stop] -= 1
        offsets[1:] = np.cumsum(counts)
    return seq, offsets


def _check_preamble(block: bytes, name: str) -> None:
    """Validate the text before the first '>': blank lines only.

    `block` starts with the virtual newline of `_cut_blocks`, so its line k is file line k.
    """
    for number, text in enumerate(block.split(b"\n")):
        if text.strip():
            shown = text.strip()[:30].decode("ascii")
            raise InputError(f"{name} line {number}: text before the first '>' ({shown!r})")


def _record_error(name: str, line: int, record_id: str | None, seen: dict[str, int]) -> InputError:
    """The InputError for a record with no id, a duplicate id or no residues."""
    if record_id is None:
        return InputError(f"{name} line {line}: header with no id")
    first = seen.get(record_id, line)
    if first != line:
        return InputError(
            f"{name} line {line}: duplicate id {record_id!r} (first seen at line {first})"
        )
    return InputError(f"{name} line {line}: empty record {record_id!r} (no residues)")


def _unusual_sequence(seq: bytes, record_id: str, line: int, tally: _UnknownTally) -> bytes:
    """Slow path for a sequence with gaps, `<mask>` or unknown letters: count and normalise.

    The unknown letters are what is left after deleting every ESM residue letter (one
    C-speed translate); `<MASK>` tokens are excepted and restored to lowercase `<mask>`
    (same length, so record offsets do not move).
    """
    if b"<" in seq and _MASK_UPPER in seq:
        unknown = seq.replace(_MASK_UPPER, b"").translate(None, _RESIDUE_BYTES)
        seq = seq.replace(_MASK_UPPER, _MASK)
    else:
        unknown = seq.translate(None, _RESIDUE_BYTES)
    if unknown:
        tally.add(unknown, record_id, line)
    return seq


@dataclass(frozen=True)
class FastaBatch:
    """Consecutive validated records of one file, their sequences stored back to back.

    Record i is ``residues[offsets[i]:offsets[i + 1]]``, the same text as its
    `FastaRecord.sequence`; this is the bulk path for tokenisation
    (`ProteinTokenizer.encode_concatenated`), with no per-record Python work.
    """

    ids: list[str]
    descriptions: list[str]
    lines: np.ndarray  # (n,) 1-based line of each header
    residues: bytes  # normalised sequences, concatenated
    offsets: np.ndarray  # (n + 1,) int64 record boundaries in `residues`

    def __len__(self) -> int:
        return len(self.ids)

    def sequence(self, i: int) -> str:
        """The normalised sequence of record i."""
        return self.residues[self.offsets[i] : self.offsets[i + 1]].decode("ascii")

    def records(self) -> Iterator[FastaRecord]:
        """The batch as `FastaRecord`s, in file order."""
        text, bounds = self.residues.decode("ascii"), self.offsets.tolist()
        fields = zip(self.ids, self.descriptions, self.lines.tolist())
        for i, (rid, desc, line) in enumerate(fields):
            yield FastaRecord(rid, desc, text[bounds[i] : bounds[i + 1]], line)


class _BlockParser:
    """Parses the blocks of one file in order, keeping line numbers, seen ids and the tally."""

    def __init__(self, name: str) -> None:
        self.name, self.lines_before = name, 0  # newlines in the blocks already parsed
        self.seen: dict[str, int] = {}
        self.tally = _UnknownTally()

    def parse(self, block: bytes) -> tuple[FastaBatch, InputError | None]:
        """The valid records of `block` up to the first bad one, and that one's error."""
        a = np.frombuffer(block + b"\n", dtype=np.uint8)  # a sentinel newline ends every header
        starts, header_ends, block_lines, n_newlines = _record_spans(a)
        if self.lines_before == 0:
            _check_preamble(block[: starts[0] - 1] if len(starts) else block, self.name)
        lines = self.lines_before + block_lines  # (n,) file lines of the headers
        self.lines_before += n_newlines
        ids, descriptions, has_id = _header_fields(a, starts, header_ends)
        seq, offsets = _residue_bytes(a, starts, header_ends)
        n_ok, error = self._validate(ids, has_id, lines, np.diff(offsets))
        if n_ok < len(ids):
            ids, descriptions, lines = ids[:n_ok], descriptions[:n_ok], lines[:n_ok]
            offsets = offsets[: n_ok + 1]
            seq = seq[: offsets[-1]]
        residues = self._normalise_unusual(seq, offsets, ids, lines)
        return FastaBatch(ids, descriptions, lines, residues, offsets), error

    def _validate(self, ids: list[str], has_id: np.ndarray, lines: np.ndarray,
                  counts: np.ndarray) -> tuple[int, InputError | None]:
        """How many leading records are valid, and the error of the first invalid one.

        Fast path: every header has an id, every record residues, and no id repeats (within
        the block or with earlier blocks): dict and set operations in C. Else scan in order.
        """
        line_list = lines.tolist()
        fresh = dict(zip(ids, line_list))
        if (len(fresh) == len(ids) and has_id.all() and counts.all()
                and self.seen.keys().isdisjoint(fresh)):
            self.seen.update(fresh)
            return len(ids), None
        for i, (rid, line) in enumerate(zip(ids, line_list)):
            if not (has_id[i] and counts[i]) or self.seen.setdefault(rid, line) != line:
                return i, _record_error(self.name, line, rid if has_id[i] else None, self.seen)
        raise AssertionError("unreachable: the fast check failed but every record is valid")

    def _normalise_unusual(self, seq: np.ndarray, offsets: np.ndarray, ids: list[str],
                           lines: np.ndarray) -> bytes:
        """The residues as bytes, after counting unknown letters and restoring `<mask>` in the
        few records that hold anything but residue letters (A-Z except J; '.' and '-')."""
        if not len(seq) or (seq.min() >= ord("A") and seq.max() <= ord("Z")
                            and not (seq == ord("J")).any()):
            return seq.tobytes()  # common case: plain letters, three vectorised passes
        odd = np.flatnonzero(_NOT_RESIDUE[seq])
        if not len(odd):
            return seq.tobytes()
        out = bytearray(seq.tobytes())
        for i in np.unique(np.searchsorted(offsets, odd, side="right") - 1).tolist():
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            out[lo:hi] = _unusual_sequence(bytes(out[lo:hi]), ids[i], int(lines[i]), self.tally)
        return bytes(out)


def _batches(path: str | Path, stacklevel: int) -> Iterator[FastaBatch]:
    """The shared generator behind `read_fasta_batches` and `read_fasta`."""
    name = str(path)
    parser = _BlockParser(name)
    with _open_binary(Path(path)) as fh:
        for block in _cut_blocks(_read_chunks(fh, name)):
            batch, error = parser.parse(block)
            if len(batch):
                yield batch
            if error is not None:
                raise error
    if not parser.seen:
        raise InputError(f"{name}: no FASTA records (empty file or no line starting with '>')")
    parser.tally.warn(name, stacklevel)


def read_fasta_batches(path: str | Path) -> Iterator[FastaBatch]:
    """Stream a plain or gzipped FASTA file as `FastaBatch`es of about one read chunk each.

    Same validation, errors and warning as `read_fasta`; the fast path for bulk work
    (tokenising a whole file: see `ProteinTokenizer.encode_concatenated`).
    """
    return _batches(path, stacklevel=3)


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Stream the records of a plain or gzipped FASTA file, validating as it goes.

    Errors (all `InputError`, naming file, line and record id): missing/unreadable file,
    binary data, text before the first '>', a header with no id, an empty record, a duplicate
    id (both lines named), and a file with no records at all. Unknown residue letters are kept
    and counted; one `UserWarning` summarises them when the generator is exhausted.
    """
    for batch in _batches(path, stacklevel=4):
        yield from batch.records()


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


T = TypeVar("T")


def grouped(items: Iterable[T], size: int,
            weight: Callable[[T], int] | None = None) -> Iterator[list[T]]:
    """Consecutive lists of `items` (e.g. streamed records), each closed once its total weight
    reaches `size` (weight 1 per item by default); the last list may be lighter. Lets large
    files be processed a bounded group at a time."""
    group: list[T] = []
    total = 0
    for item in items:
        group.append(item)
        total += 1 if weight is None else weight(item)
        if total >= size:
            yield group
            group, total = [], 0
    if group:
        yield group
