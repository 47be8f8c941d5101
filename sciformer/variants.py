"""Zero-shot variant-effect scores from a masked protein language model (Meier et al. 2021).

Input: a wild-type FASTA and a CSV with a `mutant` column, e.g. `A42G` (wild-type residue,
1-based position, mutant residue) or `A42G:R57K` for a multi-mutant; other columns are passed
through. With several wild-type records, a `record` column names each row's record.

Scores (natural-log units, positive = the model prefers the mutant):

- **masked marginal**: sum over the mutated positions i of
  log p(x_i = mt | x with i masked) - log p(x_i = wt | x with i masked); each position is
  masked alone in the wild type, as the ESM variant-prediction scripts do (Meier et al.
  2021 mask a multi-mutant's positions together; for single mutants the two agree).
- **wild-type marginal**: the same difference read from one pass over the unmasked wild type.

Every distinct mutated position costs one forward pass (windows cover long sequences), shared
by all rows that mutate it. Bad rows are `InputError`s naming the CSV line and the mutation.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sciformer.errors import InputError
from sciformer.io.atomic import atomic_path
from sciformer.io.csvfile import read_rows
from sciformer.io.fasta import read_fasta
from sciformer.tokenizers.protein import TOKENIZER

if TYPE_CHECKING:
    from sciformer.pipelines.protein import ProteinLM

_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"  # residue letters of the ESM alphabet (no gaps)
_MUTATION = re.compile(rf"([{_LETTERS}])([1-9][0-9]*)([{_LETTERS}])")
SCORE_COLUMNS = ("masked_marginal", "wt_marginal")


@dataclass(frozen=True)
class Mutation:
    """One substitution: wild-type letter, 0-based position, mutant letter."""

    wt: str
    pos: int
    mt: str

    def __str__(self) -> str:
        return f"{self.wt}{self.pos + 1}{self.mt}"


def parse_mutant(text: str, where: str) -> list[Mutation]:
    """'A42G:R57K' -> [Mutation('A', 41, 'G'), Mutation('R', 56, 'K')].

    `where` (e.g. 'variants.csv line 3') starts the message of any InputError: bad syntax, an
    empty mutant, or the same position twice.
    """
    parts = [p.strip().upper() for p in text.strip().split(":")]
    if not text.strip():
        raise InputError(f"{where}: empty mutant")
    out, seen = [], set()
    for part in parts:
        m = _MUTATION.fullmatch(part)
        if m is None:
            raise InputError(f"{where}: mutation '{part}' of '{text}' is not like A42G "
                             "(wild-type letter, 1-based position, mutant letter)")
        mut = Mutation(m.group(1), int(m.group(2)) - 1, m.group(3))
        if mut.pos in seen:
            raise InputError(f"{where}: position {mut.pos + 1} is mutated twice in '{text}'")
        seen.add(mut.pos)
        out.append(mut)
    return out


def check_against(muts: list[Mutation], wild_type: str, record: str, where: str) -> None:
    """Each mutation must name a position of the wild type and its actual residue."""
    for m in muts:
        if m.pos >= len(wild_type):
            raise InputError(f"{where}: mutation {m} is beyond the end of '{record}' "
                             f"({len(wild_type)} residues)")
        if wild_type[m.pos] != m.wt:
            raise InputError(f"{where}: mutation {m} names wild-type {m.wt} at position "
                             f"{m.pos + 1} but '{record}' has {wild_type[m.pos]} there")


@dataclass
class VariantRow:
    """One CSV row: its line, all its cells, the record it mutates and the mutations."""

    line: int
    cells: dict[str, str]
    record: str
    muts: list[Mutation]


def read_variants(path: Path, wild_types: dict[str, str]) -> tuple[list[str], list[VariantRow]]:
    """(CSV columns, validated rows) of a variants CSV against the wild-type sequences."""
    columns, cells_by_line = read_rows(path, "variants CSV")
    if "mutant" not in columns:
        raise InputError(f"{path} line 1: no 'mutant' column (columns: {', '.join(columns)})")
    clash = [c for c in SCORE_COLUMNS if c in columns]
    if clash:
        raise InputError(f"{path} line 1: column '{clash[0]}' would be overwritten by the "
                         "scores")
    rows = [_row(path, line, cells, wild_types) for line, cells in cells_by_line]
    if not rows:
        raise InputError(f"{path}: no variants (only a header)")
    return columns, rows


def _row(path: Path, line: int, cells: dict, wild_types: dict[str, str]) -> VariantRow:
    where = f"{path} line {line}"
    record = (cells.get("record") or "").strip()
    if not record:
        if len(wild_types) > 1:
            raise InputError(f"{where}: the wild-type FASTA has {len(wild_types)} records; "
                             "add a 'record' column naming each row's record")
        record = next(iter(wild_types))
    if record not in wild_types:
        raise InputError(f"{where}: record '{record}' is not in the wild-type FASTA")
    muts = parse_mutant(cells.get("mutant") or "", where)
    check_against(muts, wild_types[record], record, where)
    return VariantRow(line, cells, record, muts)


def score(muts: list[Mutation], masked: dict[int, np.ndarray], unmasked: np.ndarray
          ) -> tuple[float, float]:
    """(masked marginal, wild-type marginal) of one (multi-)mutant, summed over positions."""
    ids = TOKENIZER.alphabet.index
    mm = sum(masked[m.pos][ids(m.mt)] - masked[m.pos][ids(m.wt)] for m in muts)
    wt = sum(unmasked[m.pos, ids(m.mt)] - unmasked[m.pos, ids(m.wt)] for m in muts)
    return float(mm), float(wt)


def score_variants_file(lm: ProteinLM, wt_fasta: Path, variants: Path, out: Path) -> Path:
    """Score every row of `variants` against `wt_fasta`; write the CSV plus two score columns."""
    wild_types = {r.id: r.sequence for r in read_fasta(wt_fasta)}
    for record, seq in wild_types.items():
        if "<" in seq:
            raise InputError(f"{wt_fasta}: wild-type record '{record}' contains <mask>")
    columns, rows = read_variants(variants, wild_types)
    scores: dict[int, tuple[float, float]] = {}
    for record in dict.fromkeys(r.record for r in rows):
        mine = [r for r in rows if r.record == record]
        positions = sorted({m.pos for r in mine for m in r.muts})
        masked, unmasked = lm.marginal_tables(wild_types[record], positions)
        for r in mine:
            scores[r.line] = score(r.muts, masked, unmasked)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*columns, *SCORE_COLUMNS])
        for r in rows:
            writer.writerow([r.cells[c] for c in columns] + [f"{v:.6f}" for v in scores[r.line]])
    return out
