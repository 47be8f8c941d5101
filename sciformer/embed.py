"""`sciformer embed`: per-residue and pooled embeddings of FASTA records, written to HDF5.

Layout of the output file (all arrays float32; layer keys are absolute layer numbers, 0 = the
input embedding and n_encoder_layers = the final, normalised output):

    /ids                         (N,) str   record ids in input order
    /lengths                     (N,) int   residues per record
    /pooled/<layer>              (N, D)     one vector per record (row i = ids[i])
    /per_residue/<key>/<layer>   (L, D)     with --per-residue; <key> = `safe_key(id)`,
                                            the group's attrs hold `id` and `index`
    root attrs                   weights, records (content hashes), run, fasta (paths, for
                                 information), layers, pooled, window, overlap, precision
                                 (fp32 | bf16, as computed), complete

Record ids may hold '/' (the HDF5 path separator) or be '.'/'..': `safe_key` percent-encodes
them reversibly, so distinct ids always get distinct keys; the exact id is kept in the group's
`id` attribute and in /ids. (Duplicate ids within one FASTA are an error of the reader.)

Long sequences are covered by overlapping windows of the run's crop length; in each overlap
the windows' per-residue vectors are blended with linear ramp weights that sum to one, so the
result changes smoothly from one window to the next instead of jumping at a hard cut. Work is
streamed in groups of records batched to a token budget. The file is written as OUT.partial,
flushed after every group, and renamed onto OUT when complete; re-running resumes a partial
file (records already written are skipped) and does nothing for a complete one -- but only
when the weights and the records' sequences are the same (content hashes), never because a
path or an id matches.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from sciformer.errors import ConfigError, InputError
from sciformer.io.atomic import make_parents, remove_created, write_failure
from sciformer.io.fasta import grouped, read_fasta
from sciformer.io.lock import RunLock
from sciformer.io.outputs import check_output, run_files
from sciformer.pipelines.protein import POOLING, ProteinLM
from sciformer.pipelines.residues import pool
from sciformer.tokenizers.protein import TOKENIZER


# ---- options --------------------------------------------------------------------------------
def parse_layers(text: str) -> list[int]:
    """'-1,0,3' -> [-1, 0, 3]; anything else is a ConfigError naming --layers."""
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--layers '{text}': expected comma-separated integers like -1,0"
                          ) from None
    if not layers:
        raise ConfigError("--layers: give at least one layer")
    return layers


def safe_key(record_id: str) -> str:
    """An HDF5 group name for `record_id`: percent-encoding of '/', '%' and a leading '.'.

    Injective (decode with `urllib.parse.unquote`), so different ids never collide.
    """
    key = urllib.parse.quote(record_id, safe="".join(c for c in map(chr, range(33, 127))
                                                     if c not in "/%"))
    return "%2E" + key[1:] if key.startswith(".") else key


# ---- the HDF5 file --------------------------------------------------------------------------
@dataclass
class EmbedSettings:
    """What an embeddings file was made from; a resumed file must match all of it."""

    weights: str  # blake2b of model.safetensors: other weights never resume this file
    records: str  # blake2b of the records' ids and sequences: nor do other records
    layers: list[int]
    pooled: str
    per_residue: bool
    window: int
    overlap: int
    precision: str = "fp32"  # as computed (`auto` resolved); files without it were fp32

    def check(self, f: h5py.File, path: Path) -> None:
        """InputError naming the first setting in which `f` differs."""
        for name, want in vars(self).items():
            have = f.attrs.get(name, "fp32" if name == "precision" else None)
            have = have.tolist() if isinstance(have, np.ndarray) else have
            have = bool(have) if isinstance(want, bool) and have is not None else have
            if have != want:
                what = _CHANGED.get(name, f"{name}={have!r}, not {want!r}")
                raise InputError(f"{path}: was made with {what}; delete it or choose another "
                                 "--out")


_CHANGED = {"weights": "other model weights (model.safetensors differs)",
            "records": "other records (ids or sequences differ)"}


def _create(path: Path, settings: EmbedSettings, ids: list[str], lengths: list[int],
            d_model: int) -> h5py.File:
    f = h5py.File(path, "w")
    for name, value in vars(settings).items():
        f.attrs[name] = value
    f.attrs["complete"] = False
    f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("lengths", data=np.asarray(lengths, dtype=np.int64))
    f.create_dataset("done", data=np.zeros(len(ids), dtype=bool))
    for layer in settings.layers:
        f.create_dataset(f"pooled/{layer}", shape=(len(ids), d_model), dtype=np.float32,
                         fillvalue=np.nan)
    if settings.per_residue:
        f.create_group("per_residue")
    return f


def _open_partial(path: Path, settings: EmbedSettings, ids: list[str]) -> h5py.File | None:
    """The partial file to resume, or None when there is none (or it is unreadable)."""
    if not path.exists():
        return None
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        return _restart(path, str(exc))
    if "done" not in f or "ids" not in f:  # cut short while being created
        f.close()
        return _restart(path, "incomplete header")
    try:
        _check_same(f, path, settings, ids)
    except InputError:
        f.close()
        raise
    return f


def _restart(path: Path, why: str) -> None:
    warnings.warn(f"{path}: unreadable partial embeddings ({why}); starting again",
                  UserWarning, stacklevel=4)
    path.unlink()


def _check_same(f: h5py.File, path: Path, settings: EmbedSettings, ids: list[str]) -> None:
    settings.check(f, path)
    stored = [x.decode() if isinstance(x, bytes) else x for x in f["ids"][()]]
    if stored != ids:
        raise InputError(f"{path}: holds embeddings of different records; "
                         "delete it or choose another --out")


def _write_record(f: h5py.File, i: int, record_id: str, per_residue: np.ndarray,
                  cls: np.ndarray, settings: EmbedSettings) -> None:
    pooled = pool(per_residue, cls, settings.pooled)
    for k, layer in enumerate(settings.layers):
        f[f"pooled/{layer}"][i] = pooled[k]
    if settings.per_residue:
        key = safe_key(record_id)
        if key in f["per_residue"]:  # left by an interrupted run before `done` was set
            del f["per_residue"][key]
        g = f["per_residue"].create_group(key)
        g.attrs["id"], g.attrs["index"] = record_id, i
        for k, layer in enumerate(settings.layers):
            g.create_dataset(str(layer), data=per_residue[k])
    f["done"][i] = True


# ---- the command ----------------------------------------------------------------------------
@dataclass
class EmbedResult:
    """What one `embed` call did."""

    path: Path
    n_records: int
    n_written: int
    n_skipped: int
    residues: int


def _index_fasta(path: Path) -> tuple[list[str], list[int], str]:
    """Ids, lengths and a content hash of every record, in order (a first, validating pass)."""
    ids, lengths, digest = [], [], hashlib.blake2b(digest_size=16)
    for rec in read_fasta(path):
        ids.append(rec.id)
        lengths.append(len(TOKENIZER.encode(rec.sequence, add_special=False)))
        digest.update(f"{rec.id}\t{rec.sequence.upper()}\n".encode())
    return ids, lengths, digest.hexdigest()


def file_hash(path: Path) -> str:
    """blake2b of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _groups(path: Path, todo: np.ndarray, budget: int
            ) -> Iterator[list[tuple[int, str, np.ndarray]]]:
    """Records still to do, in groups of about `budget` residues: [(index, id, residue ids)]."""
    todo_records = ((i, rec.id, TOKENIZER.encode(rec.sequence, add_special=False))
                    for i, rec in enumerate(read_fasta(path)) if todo[i])
    return grouped(todo_records, budget, weight=lambda item: len(item[2]))


def embed(run_dir: str | Path, fasta: str | Path, out: str | Path, *,
          layers: str | list[int] = "-1", per_residue: bool = False, pooled: str = "mean",
          device: str = "auto", tokens_per_batch: int | None = None,
          progress: bool = False, precision: str = "fp32") -> EmbedResult:
    """Embed every record of `fasta` with the model of `run_dir` into the HDF5 file `out`
    (`precision`: fp32, bf16 or auto, see `sciformer.precision`)."""
    from sciformer.pipelines import ProteinLM, load
    from sciformer.runs import WEIGHTS

    if pooled not in POOLING:
        raise ConfigError(f"--pooled '{pooled}': must be one of {', '.join(POOLING)}")
    fasta, out = Path(fasta), Path(out)
    partial = out.with_name(out.name + ".partial")
    for path in (out, partial):
        check_output(path, inputs=[fasta], protected=run_files(run_dir))
    lm = load(run_dir, device, precision)
    if not isinstance(lm, ProteinLM):
        raise InputError(f"{run_dir}: embed needs a protein (masked-residue) run")
    wanted = parse_layers(layers) if isinstance(layers, str) else list(layers)
    ids, lengths, records = _index_fasta(fasta)
    settings = EmbedSettings(file_hash(Path(run_dir) / WEIGHTS), records, lm.layers(wanted),
                             pooled, per_residue, lm.window, lm.window // 4, lm.precision)
    if out.exists() and _already_done(out, settings, ids):
        return EmbedResult(out, len(ids), 0, len(ids), 0)
    created = make_parents(out.parent)
    try:
        with RunLock.for_file(partial):  # a second writer of the same output is refused
            f = _open_partial(partial, settings, ids) or _create(
                partial, settings, ids, lengths, lm.cfg.model.d_model)
            with f:
                f.attrs["run"] = str(Path(run_dir).resolve())
                f.attrs["fasta"] = str(fasta.resolve())
                todo = ~f["done"][()]
                written, residues = _run_groups(lm, f, fasta, todo, settings,
                                                tokens_per_batch or lm.tokens_per_batch,
                                                progress)
                f.attrs["complete"] = True
            os.replace(partial, out)
    except OSError as exc:  # a full or read-only disk: one line, the partial file stays
        raise (write_failure(partial, exc) or exc) from None
    except BaseException:
        remove_created(created)  # folders made for an output that never appeared
        raise
    return EmbedResult(out, len(ids), written, len(ids) - int(todo.sum()), residues)


def _already_done(out: Path, settings: EmbedSettings, ids: list[str]) -> bool:
    """True when `out` is a complete embeddings file of the same records and settings."""
    try:
        f = h5py.File(out, "r")
    except OSError:
        raise InputError(f"{out}: exists and is not an HDF5 embeddings file; choose another "
                         "--out") from None
    with f:
        if "ids" not in f:
            raise InputError(f"{out}: exists and is not an embeddings file; choose another --out")
        _check_same(f, out, settings, ids)
        return bool(f.attrs.get("complete"))


def _run_groups(lm: ProteinLM, f: h5py.File, fasta: Path, todo: np.ndarray,
                settings: EmbedSettings, budget: int, progress: bool) -> tuple[int, int]:
    """Embed and write the records still to do; flush after each group. (records, residues)"""
    from sciformer.progress import progress_bar

    bar = progress_bar(int(todo.sum()), "embed", "seq", progress)
    written = residues = 0
    for group in _groups(fasta, todo, 4 * budget):
        seqs = [g[2] for g in group]
        for j, per_res, cls in lm.embedding_stream(seqs, settings.layers, budget):
            i, record_id, _ = group[j]
            _write_record(f, i, record_id, per_res, cls, settings)
            residues += len(seqs[j])
        f.flush()
        written += len(group)
        bar.update(len(group))
    bar.close()
    return written, residues


def read_pooled(path: str | Path, layer: int | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, (N, D) pooled vectors) of an embeddings file; `layer` defaults to the last stored."""
    with h5py.File(path, "r") as f:
        ids = [x.decode() if isinstance(x, bytes) else x for x in f["ids"][()]]
        layer = layer if layer is not None else int(list(f.attrs["layers"])[-1])
        return ids, f[f"pooled/{layer}"][()]
