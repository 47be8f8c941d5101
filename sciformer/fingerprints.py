"""Content fingerprints: what a model was trained on, decided by content, never by path.

Held-out scoring must know which records of a file were used in training. A path says
nothing about content: the training FASTA evaluated from another folder, a copy of it or its
``.gz`` holds the same training records under another name, and a different file of the same
name holds different ones. So pretraining records a fingerprint of every unit it split
(``split.json``, see `RecordedPrints`), and evaluation fingerprints the records it is given
and looks them up (`match_records`): each is ``training``, ``heldout`` or ``unknown``.

Fingerprints are 64-bit BLAKE2b digests (RFC 7693) as 16 hex characters: small enough to
store one per training record in JSON, and for a million records the chance that any two
different contents share one is about 3e-8.

- FASTA: `record_fingerprint` hashes (id, sequence), `sequence_fingerprint` the sequence
  alone (as the reader normalises it: upper case, no whitespace, no trailing ``*``). Training
  is decided by the sequence: a training sequence under another id is still training data.
  The (id, sequence) hash tells an unchanged record from an edited one (e.g. for resuming
  ``embed``).
- Trajectories: `trajectory_fingerprint` hashes the state shape and length, the first and
  last steps and 16 evenly spaced steps in between, as float32 (how the reader hands them to
  the model, so a float64 copy matches a float32 one). Only those steps are read (lazily,
  through `TrajectoryFile.windows`), so a file far larger than memory is fingerprinted in a
  few reads per block of trajectories. A trajectory cut shorter or re-sampled is a different
  trajectory here ("unknown"), not a copy.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sciformer.errors import InputError

SCHEME = "blake2b-64/v1"  # recorded in split.json; a reader refuses a scheme it does not know
DIGEST_BYTES = 8
SAMPLED_STEPS = 16  # evenly spaced steps hashed besides the first and the last
_TRAJ_BLOCK_BYTES = 8 * 2**20  # memory bound per read while fingerprinting trajectories

Status = Literal["training", "heldout", "unknown"]


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed: parts cannot run together
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One unit (FASTA record or trajectory) of a file: `label` names it in messages (record
    id, or ``file#index``); `content` decides training vs held-out; `exact` also covers the
    id (FASTA) — for trajectories the two are the same."""

    label: str
    content: str
    exact: str


# ---- FASTA ------------------------------------------------------------------------------------
def sequence_fingerprint(sequence: str | bytes) -> str:
    """Fingerprint of a normalised sequence alone."""
    seq = sequence.encode("ascii") if isinstance(sequence, str) else bytes(sequence)
    return _digest(b"seq", seq)


def record_fingerprint(record_id: str, sequence: str | bytes) -> str:
    """Fingerprint of (id, normalised sequence)."""
    seq = sequence.encode("ascii") if isinstance(sequence, str) else bytes(sequence)
    return _digest(b"rec", record_id.encode("utf-8"), seq)


def fasta_fingerprints(path: str | os.PathLike) -> list[Fingerprint]:
    """Fingerprints of every record of a (plain or gzipped) FASTA file, in file order.

    Reads the file with the validating reader, so a bad file raises the usual `InputError`.
    """
    from sciformer.io.fasta import read_fasta_batches

    out: list[Fingerprint] = []
    for batch in read_fasta_batches(path):
        bounds = batch.offsets.tolist()
        for i, rid in enumerate(batch.ids):
            seq = batch.residues[bounds[i]:bounds[i + 1]]
            out.append(Fingerprint(rid, sequence_fingerprint(seq), record_fingerprint(rid, seq)))
    return out


# ---- trajectories -----------------------------------------------------------------------------
def sampled_steps(n_time: int, n_sampled: int = SAMPLED_STEPS) -> list[int]:
    """The steps a trajectory fingerprint reads: first, last and `n_sampled` evenly spaced."""
    inner = np.linspace(0, n_time - 1, n_sampled + 2).round().astype(int).tolist()
    return sorted({0, n_time - 1, *inner})


def _hash_steps(shape: tuple[int, ...], n_time: int, steps: list[int],
                values: np.ndarray) -> str:
    """Fingerprint of one trajectory from its sampled steps `values`: (len(steps), *shape)."""
    header = np.array([n_time, *shape, *steps], dtype="<i8").tobytes()
    return _digest(b"traj", header, np.ascontiguousarray(values, dtype="<f4").tobytes())


def trajectory_fingerprint(states: np.ndarray) -> str:
    """Fingerprint of one in-memory trajectory (n_time, *state_shape), as the file reader
    would compute it for the same values."""
    states = np.asarray(states)
    steps = sampled_steps(states.shape[0])
    return _hash_steps(tuple(states.shape[1:]), states.shape[0], steps,
                       states[steps].astype(np.float32))


def iter_trajectory_fingerprints(path: str | os.PathLike) -> Iterator[str]:
    """Fingerprints of every trajectory of a trajectory HDF5 file, in order, reading only the
    sampled steps of a block of trajectories at a time."""
    from sciformer.io.trajectories import TrajectoryFile

    with TrajectoryFile(path, check_finite=False) as tf:
        m = tf.meta
        steps = sampled_steps(m.n_time)
        step_bytes = 4 * int(np.prod(m.state_shape))
        block = max(1, _TRAJ_BLOCK_BYTES // (step_bytes * len(steps)))
        for first in range(0, m.n_traj, block):
            stop = min(first + block, m.n_traj)
            # (len(steps), b, 1, *state) -> (b, len(steps), *state)
            values = np.stack([tf.windows(first, stop, t, 1)[:, 0] for t in steps], axis=1)
            for row in values:
                yield _hash_steps(m.state_shape, m.n_time, steps, row)


def trajectory_fingerprints(path: str | os.PathLike) -> list[Fingerprint]:
    """`Fingerprint`s of every trajectory of a file, labelled ``PATH#index``."""
    return [Fingerprint(f"{path}#{i}", fp, fp)
            for i, fp in enumerate(iter_trajectory_fingerprints(path))]


def file_fingerprints(path: str | os.PathLike) -> list[Fingerprint]:
    """Fingerprints of the units of a FASTA or trajectory file, told apart by suffix."""
    from sciformer.tasks import infer_task  # imports torch: only when needed

    return fasta_fingerprints(path) if infer_task([path]) == "masked" else \
        trajectory_fingerprints(path)


def bytes_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Fingerprint of a whole file's bytes (e.g. model.safetensors: did the weights change?)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return h.hexdigest()


def combined_fingerprint(prints: Sequence[Fingerprint]) -> str:
    """One fingerprint of a whole file's units in order, by their `exact` fingerprints (ids
    and sequences): e.g. stored in a resumable output to tell that its input is unchanged."""
    return _digest(b"all", *(bytes.fromhex(p.exact) for p in prints))


# ---- what pretraining recorded, and matching against it ---------------------------------------
@dataclass
class RecordedPrints:
    """The content fingerprints of the training and held-out units of a run (split.json)."""

    train: set[str] = field(default_factory=set)
    heldout: set[str] = field(default_factory=set)

    @classmethod
    def from_units(cls, prints: Sequence[Fingerprint], train_idx: Iterable[int],
                   heldout_idx: Iterable[int]) -> RecordedPrints:
        """From the fingerprints of all units (in the task's order) and the split indices."""
        return cls({prints[i].content for i in train_idx}, {prints[i].content for i in heldout_idx})

    def to_split(self) -> dict[str, Any]:
        """The ``fingerprints`` entry of split.json (sorted lists: stable, diff-able)."""
        return {"scheme": SCHEME, "train": sorted(self.train), "heldout": sorted(self.heldout)}

    @classmethod
    def from_split(cls, split: dict[str, Any], where: str = "split.json") -> RecordedPrints | None:
        """Read the ``fingerprints`` entry of a split.json dict; None for runs written before
        fingerprints existed (callers must then say held-out status is unknown)."""
        entry = split.get("fingerprints")
        if entry is None:
            return None
        if not isinstance(entry, dict) or entry.get("scheme") != SCHEME:
            scheme = entry.get("scheme") if isinstance(entry, dict) else entry
            raise InputError(f"{where}: 'fingerprints' has unknown scheme {scheme!r} "
                             f"(expected {SCHEME!r})")
        try:
            return cls(set(map(str, entry["train"])), set(map(str, entry["heldout"])))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{where}: 'fingerprints' is malformed ({exc})") from None


def match_records(prints: Sequence[Fingerprint], recorded: RecordedPrints) -> list[Status]:
    """For each unit of a file, in order: ``training`` (its content was trained on, even when
    it was also held out under another id), ``heldout`` or ``unknown`` (not in the run)."""
    out: list[Status] = []
    for fp in prints:
        if fp.content in recorded.train:
            out.append("training")
        elif fp.content in recorded.heldout:
            out.append("heldout")
        else:
            out.append("unknown")
    return out


def duplicates(prints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    """(first, repeat) index pairs of units whose content repeats an earlier one, e.g. the same
    HDF5 given twice, whose copies could land on both sides of the split."""
    first: dict[str, int] = {}
    pairs = []
    for i, fp in enumerate(prints):
        j = first.setdefault(fp.content, i)
        if j != i:
            pairs.append((j, i))
    return pairs


def count_statuses(statuses: Iterable[Status]) -> dict[Status, int]:
    """How many units are training / heldout / unknown (for the report's scope line)."""
    counts: dict[Status, int] = {"training": 0, "heldout": 0, "unknown": 0}
    for s in statuses:
        counts[s] += 1
    return counts


__all__ = [
    "DIGEST_BYTES",
    "SCHEME",
    "Fingerprint",
    "RecordedPrints",
    "bytes_fingerprint",
    "combined_fingerprint",
    "count_statuses",
    "duplicates",
    "fasta_fingerprints",
    "file_fingerprints",
    "iter_trajectory_fingerprints",
    "match_records",
    "record_fingerprint",
    "sampled_steps",
    "sequence_fingerprint",
    "trajectory_fingerprint",
    "trajectory_fingerprints",
]
