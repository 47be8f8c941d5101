"""Rebuild data/proteins/{train,other_organisms}.faa from the pyhmmer 0.12.3 wheel (offline).

    pip download --no-deps pyhmmer==0.12.3 -d /tmp/pyhmmer_dl
    python data/proteins/build.py /tmp/pyhmmer_dl/pyhmmer-0.12.3-*.whl

train.faa is `pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa` copied byte for byte.
other_organisms.faa gathers every other protein set in the wheel's test data: two UniProt
FASTA files, the ungapped rows of a LuxC alignment, the /translation of every CDS in a MIBiG
GenBank record, and the translations (table 11) of two nucleotide CDS files. Exact duplicate
sequences -- of train.faa or of an earlier entry -- are dropped, ids are made unique by a
source prefix where needed, and both outputs are checked with sciformer's own FASTA reader.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

from Bio import SeqIO
from Bio.Data.CodonTable import TranslationError

from sciformer.io.atomic import atomic_path
from sciformer.io.fasta import read_fasta

HERE = Path(__file__).resolve().parent
DATA = "pyhmmer/tests/data/"
TRAIN_MEMBER = DATA + "seqs/938293.PRJEB85.HG003687.faa"
Entry = tuple[str, str, str]  # (id, description, sequence)


def uniprot_fasta(text: str, source: str) -> Iterator[Entry]:
    """Entries of a plain protein FASTA file, header kept as id + description."""
    for rec in SeqIO.parse(io.StringIO(text), "fasta"):
        desc = rec.description[len(rec.id) :].strip()
        yield rec.id, f"{desc} [source={source}]", str(rec.seq).upper().rstrip("*")


def alignment_rows(text: str, source: str) -> Iterator[Entry]:
    """Rows of an aligned protein FASTA with the gap characters removed (domain regions)."""
    for rec in SeqIO.parse(io.StringIO(text), "fasta"):
        seq = re.sub(r"[-.]", "", str(rec.seq)).upper()
        yield rec.id, f"LuxC family region, ungapped alignment row [source={source}]", seq


def genbank_translations(text: str, source: str) -> Iterator[Entry]:
    """The /translation qualifier of every CDS feature of a GenBank file."""
    for record in SeqIO.parse(io.StringIO(text), "genbank"):
        organism = " ".join(record.description.split()).rstrip(".")
        organism = organism.removesuffix(", complete genome")
        for feat in record.features:
            if feat.type != "CDS" or "translation" not in feat.qualifiers:
                continue
            q = feat.qualifiers
            pid = (q.get("protein_id") or q.get("locus_tag") or [f"cds{feat.location.start}"])[0]
            product = q.get("product", ["unknown product"])[0]
            yield pid, f"{product} OS={organism} [source={source}]", q["translation"][0]


def translated_cds(text: str, source: str, skipped: list[str]) -> Iterator[Entry]:
    """Translations (bacterial code, table 11) of a nucleotide CDS FASTA; bad CDSs listed."""
    for rec in SeqIO.parse(io.StringIO(text), "fasta"):
        tags = dict(re.findall(r"\[(\w+)=([^\]]*)\]", rec.description))
        if tags.get("pseudo") == "true":
            skipped.append(f"{rec.id} (pseudogene)")
            continue
        try:
            protein = str(rec.seq.translate(table=11, cds=True))
        except TranslationError as exc:
            skipped.append(f"{rec.id} ({exc})")
            continue
        pid = tags.get("protein_id", rec.id)
        product = tags.get("protein", rec.description[len(rec.id) :].strip())
        cds = rec.id.removeprefix("lcl|")
        yield pid, f"{product} (translation of CDS {cds}, table 11) [source={source}]", protein


def collect(wheel: zipfile.ZipFile, train_seqs: set[str]) -> tuple[list[Entry], dict]:
    """All non-train proteins of the wheel, deduplicated by sequence and by id."""
    read = lambda member: wheel.read(DATA + member).decode("ascii")  # noqa: E731
    skipped: list[str] = []
    sources = [
        uniprot_fasta(read("seqs/LuxC.faa"), "seqs/LuxC.faa"),
        uniprot_fasta(read("seqs/PKSI.faa"), "seqs/PKSI.faa"),
        alignment_rows(read("msa/LuxC.faa"), "msa/LuxC.faa"),
        genbank_translations(read("seqs/BGC0001090.gbk"), "seqs/BGC0001090.gbk"),
        translated_cds(read("seqs/bmyD.fna"), "seqs/bmyD.fna", skipped),
        translated_cds(read("seqs/CP040672.1.genes_100.fna"), "seqs/CP040672.1.genes_100.fna",
                       skipped),
    ]
    stats = {"in_train": 0, "repeated": 0, "renamed": 0}
    entries: list[Entry] = []
    seen_seqs: set[str] = set()
    seen_ids: set[str] = set()
    for source in sources:
        for rid, desc, seq in source:
            if seq in train_seqs:
                stats["in_train"] += 1
                continue
            if seq in seen_seqs:
                stats["repeated"] += 1
                continue
            if rid in seen_ids:
                rid = desc.rsplit("source=", 1)[1].rstrip("]").split("/")[-1] + "|" + rid
                stats["renamed"] += 1
            seen_seqs.add(seq)
            seen_ids.add(rid)
            entries.append((rid, desc, seq))
    stats["skipped_cds"] = skipped
    return entries, stats


def write_fasta(path: Path, entries: list[Entry], width: int = 60) -> None:
    """Write entries as FASTA, 60 residues a line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
        for rid, desc, seq in entries:
            fh.write(f">{rid} {desc}\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))


def summarize(path: Path) -> str:
    """Read a file back with sciformer's reader (warnings are errors) and describe it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = list(read_fasta(path))
    residues = sum(len(r.sequence) for r in records)
    size = path.stat().st_size
    return f"{path.name}: {len(records)} sequences, {residues} residues, {size} bytes"


def main(argv: list[str] | None = None) -> None:
    """Build both files from the wheel and print what was done."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="pyhmmer-0.12.3-*.whl")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    print(f"wheel sha256 {hashlib.sha256(args.wheel.read_bytes()).hexdigest()}")
    with zipfile.ZipFile(args.wheel) as wheel:
        train_bytes = wheel.read(TRAIN_MEMBER)
        train_path = args.out_dir / "train.faa"
        with atomic_path(train_path) as tmp:
            tmp.write_bytes(train_bytes)
        train_seqs = {r.sequence for r in read_fasta(train_path)}
        entries, stats = collect(wheel, train_seqs)
    other_path = args.out_dir / "other_organisms.faa"
    write_fasta(other_path, entries)
    for path in (train_path, other_path):
        path.chmod(0o644)  # atomic_path's temp files are private (0600); data is shipped
    print(summarize(train_path))
    print(summarize(other_path))
    print(f"dropped: {stats['in_train']} identical to a train.faa sequence, "
          f"{stats['repeated']} repeated within the other sets; {stats['renamed']} ids prefixed")
    for line in stats["skipped_cds"]:
        print(f"skipped CDS: {line}")


if __name__ == "__main__":
    sys.exit(main())
