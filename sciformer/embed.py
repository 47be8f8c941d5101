"""`sciformer embed`: per-residue and pooled embeddings of FASTA records, written to HDF5.

Layout of the output file (all arrays float32; layer keys are absolute layer numbers, 0 = the
input embedding and n_encoder_layers = the final, normalised output):

    /ids                         (N,) str   record ids in input order
    /lengths                     (N,) int   residues per record
    /pooled/<layer>              (N, D)     one vector per record (row i = ids[i])
    /per_residue/<key>/<layer>   (L, D)     with --per-residue; <key> = `safe_key(id)`,
                                            the group's attrs hold `id` and `index`
    root attrs                   run, fasta, layers, pooled, window, overlap, complete

Record ids may hold '/' (the HDF5 path separator) or be '.'/'..': `safe_key` percent-encodes
them reversibly, so distinct ids always get distinct keys; the exact id is kept in the group's
`id` attribute and in /ids. (Duplicate ids within one FASTA are an error of the reader.)

Long sequences are covered by overlapping windows of the run's crop length; in each overlap
the windows' per-residue vectors are blended with linear ramp weights that sum to one, so the
result changes smoothly from one window to the next instead of jumping at a hard cut. Work is
streamed in groups of records batched to a token budget. The file is written as OUT.partial,
flushed after every group, and renamed onto OUT when complete; re-running resumes a partial
file (records already written are skipped) and does nothing for a complete one.
"""

from __future__ import annotations

import os
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from sciformer.errors import ConfigError, InputError
from sciformer.io.fasta import grouped, read_fasta
from sciformer.tasks.masked import TOKENIZER, frame
from sciformer.tokenizers.protein import iter_windows, token_budget_batches

POOLING = ("mean", "cls")


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


def resolve_layers(layers: list[int], n_layers: int) -> list[int]:
    """Absolute layer numbers 0..n_layers (negative counts from the end), order kept, unique."""
    out: list[int] = []
    for layer in layers:
        absolute = layer + n_layers + 1 if layer < 0 else layer
        if not 0 <= absolute <= n_layers:
            raise ConfigError(f"--layers: layer {layer} does not exist; this model has layers "
                              f"0..{n_layers} (0 = input embedding, -1 = last)")
        if absolute not in out:
            out.append(absolute)
    return out


def safe_key(record_id: str) -> str:
    """An HDF5 group name for `record_id`: percent-encoding of '/', '%' and a leading '.'.

    Injective (decode with `urllib.parse.unquote`), so different ids never collide.
    """
    key = urllib.parse.quote(record_id, safe="".join(c for c in map(chr, range(33, 127))
                                                     if c not in "/%"))
    return "%2E" + key[1:] if key.startswith(".") else key


# ---- windows and blending -------------------------------------------------------------------
def blend_weights(length: int, window: int, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    """[(start, end, weights)] of the windows covering 0..length.

    Inside a window the weight is 1, and over each overlap with a neighbour it ramps linearly,
    (k + 1) / (overlap + 1) from the window's inner edge, so that two neighbours' weights sum to
    one there. Every weight is > 0, so every residue is covered.
    """
    spans = iter_windows(length, window, overlap) if length else []
    out = []
    for w, (s, e) in enumerate(spans):
        weight = np.ones(e - s)
        if w > 0:
            left = spans[w - 1][1] - s  # overlap with the previous window
            weight[:left] = np.minimum(weight[:left], np.arange(1, left + 1) / (left + 1))
        if w + 1 < len(spans):
            right = e - spans[w + 1][0]
            ramp = np.arange(right, 0, -1) / (right + 1)
            weight[e - s - right:] = np.minimum(weight[e - s - right:], ramp)
        out.append((s, e, weight))
    return out


@dataclass
class _Pending:
    """Running weighted sums of one record's windows."""

    acc: np.ndarray  # (n_layers, L, D) sum of weight * vector
    weight: np.ndarray  # (L,) sum of weights
    cls: np.ndarray  # (n_layers, D) sum of the windows' <cls> vectors
    n_windows: int = 0


@torch.no_grad()
def embed_sequences(model: nn.Module, seqs: list[np.ndarray], layers: list[int], window: int,
                    tokens_per_batch: int, device: torch.device, overlap: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(i, per-residue (n_layers, L, D), <cls> (n_layers, D)) for each residue-id sequence.

    Windows of every sequence are batched together to the token budget; results come in
    input order once all of a sequence's windows are done (at the end of the call).
    """
    overlap = window // 4 if overlap is None else overlap
    pieces = [(i, s, e, wt) for i, seq in enumerate(seqs)
              for s, e, wt in blend_weights(len(seq), window, overlap)]
    d = model.cfg.d_model
    pending = [_Pending(np.zeros((len(layers), len(q), d), np.float32), np.zeros(len(q)),
                        np.zeros((len(layers), d), np.float32)) for q in seqs]
    lengths = [p[2] - p[1] + 2 for p in pieces]
    for members in token_budget_batches(lengths, tokens_per_batch, shuffle=False):
        tokens = TOKENIZER.pad_batch([frame(seqs[pieces[m][0]][pieces[m][1]:pieces[m][2]])
                                      for m in members]).to(device)
        outs = model.encode(tokens, tokens == TOKENIZER.pad_id, return_layers=True)
        chosen = torch.stack([outs[k] for k in layers]).float().cpu().numpy()  # (n, B, T, D)
        for row, m in enumerate(members):
            i, s, e, wt = pieces[m]
            rec = pending[i]
            rec.acc[:, s:e] += chosen[:, row, 1:1 + e - s] * wt[None, :, None].astype(np.float32)
            rec.weight[s:e] += wt
            rec.cls += chosen[:, row, 0]
            rec.n_windows += 1
    for i, rec in enumerate(pending):
        per_residue = rec.acc / rec.weight[None, :, None].astype(np.float32)
        yield i, per_residue, rec.cls / max(rec.n_windows, 1)
        pending[i] = None  # type: ignore[call-overload]  # free as we go


def pool(per_residue: np.ndarray, cls: np.ndarray, how: str) -> np.ndarray:
    """(n_layers, D) vector per record: mean over residues, or the <cls> token's vector
    (averaged over windows when a long sequence needed several)."""
    return per_residue.mean(axis=1) if how == "mean" else cls


# ---- the HDF5 file --------------------------------------------------------------------------
@dataclass
class EmbedSettings:
    """What an embeddings file was made from; a resumed file must match all of it."""

    run: str
    fasta: str
    layers: list[int]
    pooled: str
    per_residue: bool
    window: int
    overlap: int

    def check(self, f: h5py.File, path: Path) -> None:
        """InputError naming the first setting in which `f` differs."""
        for name, want in vars(self).items():
            have = f.attrs.get(name)
            have = have.tolist() if isinstance(have, np.ndarray) else have
            have = bool(have) if isinstance(want, bool) and have is not None else have
            if have != want:
                raise InputError(f"{path}: was made with {name}={have!r}, not {want!r}; "
                                 "delete it or choose another --out")


def _create(path: Path, settings: EmbedSettings, ids: list[str], lengths: list[int],
            d_model: int) -> h5py.File:
    path.parent.mkdir(parents=True, exist_ok=True)
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
        raise InputError(f"{path}: holds embeddings of different records than {settings.fasta}; "
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


def _index_fasta(path: Path) -> tuple[list[str], list[int]]:
    """Ids and lengths of every record, in order (a first, validating pass)."""
    ids, lengths = [], []
    for rec in read_fasta(path):
        ids.append(rec.id)
        lengths.append(len(TOKENIZER.encode(rec.sequence, add_special=False)))
    return ids, lengths


def _groups(path: Path, todo: np.ndarray, budget: int
            ) -> Iterator[list[tuple[int, str, np.ndarray]]]:
    """Records still to do, in groups of about `budget` residues: [(index, id, residue ids)]."""
    todo_records = ((i, rec.id, TOKENIZER.encode(rec.sequence, add_special=False))
                    for i, rec in enumerate(read_fasta(path)) if todo[i])
    return grouped(todo_records, budget, weight=lambda item: len(item[2]))


def embed(run_dir: str | Path, fasta: str | Path, out: str | Path, *,
          layers: str | list[int] = "-1", per_residue: bool = False, pooled: str = "mean", device: str = "auto",
          tokens_per_batch: int | None = None, progress: bool = False) -> EmbedResult:
    """Embed every record of `fasta` with the model of `run_dir` into the HDF5 file `out`."""
    from sciformer.train.checkpoint import load_run
    from sciformer.train.loop import pick_device

    if pooled not in POOLING:
        raise ConfigError(f"--pooled '{pooled}': must be one of {', '.join(POOLING)}")
    fasta, out = Path(fasta), Path(out)
    dev = pick_device(device)
    model, cfg, extra = load_run(run_dir, dev)
    if extra.get("task") == "forecast" or model.embed is None:
        raise InputError(f"{run_dir}: embed needs a protein (masked-residue) run")
    wanted = parse_layers(layers) if isinstance(layers, str) else list(layers)
    window = cfg.data.crop_length
    settings = EmbedSettings(str(Path(run_dir).resolve()), str(fasta.resolve()),
                             resolve_layers(wanted, cfg.model.n_encoder_layers), pooled,
                             per_residue, window, window // 4)
    ids, lengths = _index_fasta(fasta)
    if out.exists() and _already_done(out, settings, ids):
        return EmbedResult(out, len(ids), 0, len(ids), 0)
    partial = out.with_name(out.name + ".partial")
    f = _open_partial(partial, settings, ids) or _create(partial, settings, ids, lengths,
                                                         cfg.model.d_model)
    budget = tokens_per_batch or cfg.data.tokens_per_batch
    with f:
        todo = ~f["done"][()]
        written, residues = _run_groups(model, f, fasta, todo, settings, budget, dev, progress)
        f.attrs["complete"] = True
    os.replace(partial, out)
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


def _run_groups(model: nn.Module, f: h5py.File, fasta: Path, todo: np.ndarray,
                settings: EmbedSettings, budget: int, device: torch.device,
                progress: bool) -> tuple[int, int]:
    """Embed and write the records still to do; flush after each group. (records, residues)"""
    from sciformer.progress import progress_bar

    bar = progress_bar(int(todo.sum()), "embed", "seq", progress)
    written = residues = 0
    for group in _groups(fasta, todo, 4 * budget):
        seqs = [g[2] for g in group]
        for j, per_res, cls in embed_sequences(model, seqs, settings.layers, settings.window,
                                               budget, device, settings.overlap):
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
