"""Whole FASTA files as residue ids: the bulk reader training and the baselines share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sciformer.errors import InputError
from sciformer.io.fasta import read_fasta_batches
from sciformer.tokenizers.protein import TOKENIZER


@dataclass
class ProteinSet:
    """Tokenised records of one or more FASTA files (residue ids only, no <cls>/<eos>)."""

    ids: list[str] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)  # uint8 residue ids per record
    origin: list[tuple[int, int]] = field(default_factory=list)  # (file index, record index)

    def subset(self, indices: list[int]) -> ProteinSet:
        return ProteinSet([self.ids[i] for i in indices], [self.tokens[i] for i in indices],
                          [self.origin[i] for i in indices])

    def __len__(self) -> int:
        return len(self.tokens)


def load_proteins(paths: list[Path]) -> ProteinSet:
    """Read and tokenise every record of the FASTA files (duplicate ids across files: error).

    Uses the bulk path (`read_fasta_batches` + one table lookup per read chunk), so no Python
    work is done per residue.
    """
    out, seen = ProteinSet(), {}
    for f, path in enumerate(paths):
        r = 0
        for batch in read_fasta_batches(path):
            ids, offsets = TOKENIZER.encode_concatenated(batch.residues, batch.offsets)
            for i, rid in enumerate(batch.ids):
                if rid in seen:
                    raise InputError(f"{path} line {batch.lines[i]}: duplicate id '{rid}' "
                                     f"(also in {seen[rid]})")
                seen[rid] = path
                out.tokens.append(ids[offsets[i]:offsets[i + 1]])
                out.origin.append((f, r))
                r += 1
            out.ids.extend(batch.ids)
    return out
