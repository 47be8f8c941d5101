"""Protein tokenizer on the ESM-2 alphabet, token-budget batching and long-sequence windows.

The 33 ids are in exactly ESM-2's order (Lin et al. 2023, Science 379:1123; the `Alphabet` of
fair-esm), so token ids and embedding rows interoperate with ESM-2 checkpoints. Encoding is one
256-entry byte -> id lookup table applied by `bytes.translate` (C speed, no per-character
Python), then viewed with `np.frombuffer`; only the literal `<mask>` token needs a rare split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from sciformer.errors import ConfigError

SPECIAL_PREFIX = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUES = tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
SPECIAL_SUFFIX = ("<null_1>", "<mask>")
#: The ESM-2 alphabet; a token's id is its index here.
ALPHABET: tuple[str, ...] = SPECIAL_PREFIX + RESIDUES + SPECIAL_SUFFIX
#: The 20 standard amino acids (the residues ESM's masking draws random replacements from).
STANDARD_AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"

_MASK_RE = re.compile(re.escape("<mask>"), re.IGNORECASE)


def _lookup_table(unk_id: int) -> bytes:
    """256-entry byte -> id table for `bytes.translate`: residue letters (either case) to
    their ids, every other byte to `unk_id`. All ids are < 256, so one byte holds each."""
    table = bytearray([unk_id]) * 256
    for letter in RESIDUES:
        table[ord(letter)] = table[ord(letter.lower())] = ALPHABET.index(letter)
    return bytes(table)


class ProteinTokenizer:
    """Maps protein strings to ESM-2 token ids and back (the fair-esm `Alphabet` role).

    `encode` adds `<cls>` ... `<eos>` (as ESM-2 does), maps the literal `<mask>` (any case) to
    `mask_id`, lowercase letters to their uppercase ids, and every other unknown character to
    `unk_id`. `decode` is its inverse up to case: `<mask>` decodes to the text `<mask>` and
    `<unk>` to the text `<unk>` (the original letter is not recoverable); `skip_special` drops
    only the framing tokens `<cls> <pad> <eos> <null_1>`.
    """

    vocab_size: int = len(ALPHABET)
    cls_id: int = ALPHABET.index("<cls>")
    pad_id: int = ALPHABET.index("<pad>")
    eos_id: int = ALPHABET.index("<eos>")
    unk_id: int = ALPHABET.index("<unk>")
    mask_id: int = ALPHABET.index("<mask>")

    def __init__(self) -> None:
        self.alphabet = ALPHABET
        self.standard_ids = np.array([ALPHABET.index(a) for a in STANDARD_AMINO_ACIDS], np.int64)
        self._table = _lookup_table(self.unk_id)
        self._cls, self._eos = bytes([self.cls_id]), bytes([self.eos_id])
        self._framing = np.zeros(self.vocab_size, dtype=bool)
        for token in ("<cls>", "<pad>", "<eos>", "<null_1>"):
            self._framing[ALPHABET.index(token)] = True
        self._strings = np.array(ALPHABET, dtype=object)

    def _encode_plain(self, text: str) -> bytes:
        """Ids (one byte each) of a string with no `<mask>` token: one table lookup, in C."""
        # 'replace' turns each non-ASCII character into one '?', so lengths are preserved
        return text.encode("ascii", errors="replace").translate(self._table)

    def encode(self, sequence: str, add_special: bool = True) -> np.ndarray:
        """Token ids (int64) of `sequence`, framed by `<cls>`/`<eos>` when `add_special`."""
        if "<" in sequence and _MASK_RE.search(sequence):
            mask = bytes([self.mask_id])
            ids = mask.join(self._encode_plain(p) for p in _MASK_RE.split(sequence))
        else:
            ids = self._encode_plain(sequence)
        if add_special:
            ids = self._cls + ids + self._eos
        return np.frombuffer(ids, dtype=np.uint8).astype(np.int64)

    def encode_concatenated(self, text: bytes,
                            offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids (uint8, no specials) of many sequences stored back to back, and their offsets.

        `text[offsets[i]:offsets[i + 1]]` is sequence i (ASCII, as `FastaBatch.residues`
        holds them). One table lookup over the whole buffer; only sequences holding a literal
        `<mask>` (which shortens them) go through `encode` one by one. Returns (ids, new
        offsets) with ids of sequence i at ``ids[new[i]:new[i + 1]]``.
        """
        ids = np.frombuffer(text.translate(self._table), dtype=np.uint8)
        offsets = np.asarray(offsets, dtype=np.int64)
        if b"<" not in text or not _MASK_RE.search(text.decode("ascii", errors="replace")):
            return ids, offsets
        lt = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("<"))
        odd = set((np.searchsorted(offsets, lt, side="right") - 1).tolist())
        bounds = offsets.tolist()
        pieces = [self.encode(text[bounds[i]:bounds[i + 1]].decode("ascii", errors="replace"),
                              add_special=False).astype(np.uint8)
                  if i in odd else ids[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        new_offsets = np.concatenate(([0], np.cumsum(lengths)))
        return (np.concatenate(pieces) if pieces else ids[:0]), new_offsets

    def encode_many(self, sequences: Sequence[str], add_special: bool = True) -> list[np.ndarray]:
        """`encode` of every sequence, with one table lookup for all of them (bulk path)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        text = "".join(sequences).encode("ascii", errors="replace")  # one byte per character
        ids, offsets = self.encode_concatenated(text, offsets)
        parts = np.split(ids.astype(np.int64), offsets[1:-1]) if len(sequences) else []
        if add_special:
            return [np.concatenate(([self.cls_id], p, [self.eos_id])) for p in parts]
        return parts

    def decode(
        self, ids: Sequence[int] | np.ndarray | torch.Tensor, skip_special: bool = True
    ) -> str:
        """The string of `ids`; `skip_special` drops `<cls> <pad> <eos> <null_1>`.

        `<mask>` and `<unk>` always render as their token text, so positions stay visible.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got {arr.min()}..{arr.max()}"
            )
        if skip_special:
            arr = arr[~self._framing[arr]]
        return "".join(self._strings[arr])

    def unknown_count(self, sequence: str) -> int:
        """How many characters of `sequence` map to `<unk>` (`<mask>` tokens excluded)."""
        return int(np.count_nonzero(self.encode(sequence, add_special=False) == self.unk_id))

    def pad_batch(self, seqs: list[np.ndarray]) -> torch.Tensor:
        """Stack 1-D id arrays into a (B, Lmax) int64 tensor, right-padded with `pad_id`."""
        longest = max((len(s) for s in seqs), default=0)
        batch = torch.full((len(seqs), longest), self.pad_id, dtype=torch.int64)  # (B, Lmax)
        for row, seq in enumerate(seqs):
            batch[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        return batch


#: The one tokenizer instance every module shares (it holds only the fixed alphabet).
TOKENIZER = ProteinTokenizer()
#: Residue letters a prediction may name: ids of L..O (no gaps, no special tokens).
RESIDUE_IDS = np.array([ALPHABET.index(a) for a in "LAGVSERTIDPKQNFYMHWCXBUZO"], np.int64)


def frame(residues: np.ndarray) -> np.ndarray:
    """<cls> + residue ids + <eos> as int64 (how ESM-2 frames every sequence)."""
    return np.concatenate(([TOKENIZER.cls_id], residues.astype(np.int64), [TOKENIZER.eos_id]))


def token_budget_batches(
    lengths: Sequence[int], tokens_per_batch: int, *, shuffle: bool, seed: int | None = None,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Group sequence indices into batches whose padded size n_seqs * max_len fits the budget.

    fair-esm's `get_batch_indices` recipe: sort by length so each batch pads little, fill
    greedily, then (optionally, seeded) shuffle the order of batches -- not their contents --
    so training does not see lengths in order. A sequence longer than the budget gets a batch
    of its own rather than being dropped. Pass lengths as they will be padded (with specials).
    With `max_padding`, a batch is also closed before its padding would exceed that fraction
    of its real tokens (inference: padding costs only time, and small batches cost little).
    """
    if tokens_per_batch < 1:
        raise ConfigError(f"data.tokens_per_batch: must be at least 1, got {tokens_per_batch}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0  # longest length and sum of lengths in `current`
    for idx in order.tolist():
        size = int(lengths[idx])
        padded = (len(current) + 1) * max(longest, size)
        if current and (padded > tokens_per_batch or (
                max_padding is not None and padded > (1 + max_padding) * (real + size))):
            batches.append(current)
            current, longest, real = [], 0, 0
        current.append(idx)
        longest, real = max(longest, size), real + size
    if current:
        batches.append(current)
    if shuffle:
        perm = np.random.default_rng(seed).permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def iter_windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping [start, end) windows that cover 0..length, for sequences over the model limit.

    Starts are spread evenly from 0 to length - window using the fewest windows whose stride
    is at most window - overlap, so consecutive windows share >= overlap positions and the
    last ends exactly at `length`. predict/embed/evaluate use this instead of truncating.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window; got {window}, {overlap}")
    if length <= window:
        return [(0, length)] if length > 0 else []
    stride = window - overlap
    n = -(-(length - window) // stride) + 1  # ceil division: fewest windows that fit the stride
    starts = np.floor(np.linspace(0, length - window, n) + 0.5).astype(np.int64)
    return [(int(s), int(s) + window) for s in starts]
