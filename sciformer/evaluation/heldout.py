"""Which units (FASTA records, trajectories) of a file are fair to score: by content.

Pretraining records a content fingerprint of every training and held-out unit in split.json
(`sciformer.fingerprints`). Evaluation fingerprints the file it is given and scores only units
whose content was NOT trained on: the held-out ones and those the run never saw. So the
training FASTA evaluated from another folder, a copy or its .gz scores only its held-out
records, and a different file of the same name is scored whole. A file with nothing left to
score is an error. Runs written before fingerprints existed fall back to comparing paths, and
the report says so.
"""

from __future__ import annotations

from pathlib import Path

from sciformer.errors import InputError
from sciformer.fingerprints import (
    RecordedPrints,
    count_statuses,
    fasta_fingerprints,
    match_records,
    trajectory_fingerprints,
)
from sciformer.runs import read_split

UNIT_WORDS = {"record": "records", "trajectory": "trajectories"}


def select_unseen(run_dir: Path, data: Path, train_files: list[str], unit: str
                  ) -> tuple[list[int] | None, str]:
    """(indices of `data`'s units to score, or None for all; a phrase for the report)."""
    split = read_split(run_dir)
    recorded = RecordedPrints.from_split(split, str(run_dir / "split.json"))
    words = UNIT_WORDS[unit]
    if recorded is None:
        return _by_path(split, data, train_files, words)
    prints = fasta_fingerprints(data) if unit == "record" else trajectory_fingerprints(data)
    statuses = match_records(prints, recorded)
    counts = count_statuses(statuses)
    keep = [i for i, s in enumerate(statuses) if s != "training"]
    if not keep:
        raise InputError(f"{data}: all {len(statuses)} {words} were used in training; evaluate "
                         "on held-out data")
    if counts["training"] == 0:
        return None, (f"all {len(statuses)} {words} of {data.name} (not used in training: "
                      f"{counts['heldout']} held-out by this run, {counts['unknown']} never "
                      "seen; checked by content)")
    return keep, (f"{len(keep)} of {len(statuses)} {words} of {data.name}: "
                  f"{counts['heldout']} held-out, {counts['unknown']} never seen by this run; "
                  f"{counts['training']} skipped as used in training (checked by content)")


def _by_path(split: dict, data: Path, train_files: list[str], words: str
             ) -> tuple[list[int] | None, str]:
    """Old runs without fingerprints: a training file is recognised by its path only."""
    resolved = [Path(p).resolve() for p in train_files]
    if data.resolve() not in resolved:
        return None, (f"all {words} of {data.name} (not a training file by path; this run "
                      "predates content fingerprints, so copies are not recognised)")
    idx = resolved.index(data.resolve())
    keep = sorted(r for fi, r in split.get("heldout_origin", []) if fi == idx)
    if not keep:
        raise InputError(f"{data}: is a training file of this run and none of its {words} was "
                         "held out (data.val_fraction=0?); evaluate on another file")
    return keep, (f"held-out {words} of training file {data.name} ({len(keep)}, not used in "
                  "training; by path: this run predates content fingerprints)")
