"""Content fingerprints: held-out status decided by content, never by path."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from sciformer.errors import InputError
from sciformer.fingerprints import (
    SCHEME,
    Fingerprint,
    RecordedPrints,
    bytes_fingerprint,
    combined_fingerprint,
    count_statuses,
    duplicates,
    fasta_fingerprints,
    file_fingerprints,
    iter_trajectory_fingerprints,
    match_records,
    record_fingerprint,
    sampled_steps,
    sequence_fingerprint,
    trajectory_fingerprint,
    trajectory_fingerprints,
)
from sciformer.io.trajectories import write_trajectories


def test_known_digests():
    """The scheme is pinned: BLAKE2b-64 of length-prefixed parts (changing it needs a new
    SCHEME, or every recorded run would look 'unknown')."""
    def ref(*parts: bytes) -> str:
        h = hashlib.blake2b(digest_size=8)
        for p in parts:
            h.update(len(p).to_bytes(8, "little") + p)
        return h.hexdigest()

    assert sequence_fingerprint("MKV") == ref(b"seq", b"MKV")
    assert record_fingerprint("a", "MKV") == ref(b"rec", b"a", b"MKV")
    assert len(sequence_fingerprint("MKV")) == 16
    assert record_fingerprint("ab", "C") != record_fingerprint("a", "BC")  # no run-together
    assert SCHEME == "blake2b-64/v1"


def test_fasta_fingerprints_follow_the_normalised_sequence(tmp_path: Path):
    a = tmp_path / "a.fa"
    a.write_text(">x one\nMKV\nLLA\n>y\nGG*\n")
    b = tmp_path / "b.fa"
    b.write_bytes(b"\xef\xbb\xbf>x other description\r\nmkvlla\r\n>z\r\nGG\r\n")  # BOM, CRLF
    pa, pb = fasta_fingerprints(a), fasta_fingerprints(b)
    assert [p.label for p in pa] == ["x", "y"]
    assert pa[0] == Fingerprint("x", sequence_fingerprint("MKVLLA"),
                                record_fingerprint("x", "MKVLLA"))
    assert pa[0] == pb[0]  # description, case, line ends and BOM do not matter
    assert pa[1].content == pb[1].content and pa[1].exact != pb[1].exact  # renamed: y -> z


def test_fasta_copy_gz_and_other_folder_are_recognised_by_content(tmp_path: Path):
    train = tmp_path / "train.fa"
    train.write_text(">a\nMKV\n>b\nGGL\n>c\nPPW\n>d\nAAA\n")
    prints = fasta_fingerprints(train)
    recorded = RecordedPrints.from_units(prints, train_idx=[0, 1, 3], heldout_idx=[2])
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy = other / "train.fa"
    shutil.copy(train, copy)
    gz = tmp_path / "train.fa.gz"
    gz.write_bytes(gzip.compress(train.read_bytes()))
    for path in (copy, gz):
        assert match_records(fasta_fingerprints(path), recorded) == \
            ["training", "training", "heldout", "training"]
    # same name, other content: nothing is training
    same_name = tmp_path / "x" / "train.fa"
    same_name.parent.mkdir()
    same_name.write_text(">a\nWWW\n>c\nPPW\n")
    assert match_records(fasta_fingerprints(same_name), recorded) == ["unknown", "heldout"]


def test_a_sequence_both_trained_on_and_held_out_counts_as_training():
    prints = [Fingerprint("a", "s1", "r1"), Fingerprint("b", "s1", "r2"),
              Fingerprint("c", "s2", "r3")]
    recorded = RecordedPrints.from_units(prints, [0], [1, 2])
    assert match_records(prints, recorded) == ["training", "training", "heldout"]
    assert count_statuses(match_records(prints, recorded)) == \
        {"training": 2, "heldout": 1, "unknown": 0}
    assert duplicates(prints) == [(0, 1)]


def test_split_json_round_trip_and_bad_entries():
    recorded = RecordedPrints({"b", "a"}, {"c"})
    entry = recorded.to_split()
    assert entry == {"scheme": SCHEME, "train": ["a", "b"], "heldout": ["c"]}
    assert RecordedPrints.from_split({"fingerprints": entry}) == recorded
    assert RecordedPrints.from_split({"unit": "record"}) is None  # a run from before
    with pytest.raises(InputError, match="unknown scheme 'md5'"):
        RecordedPrints.from_split({"fingerprints": {"scheme": "md5"}}, "run/split.json")
    with pytest.raises(InputError, match="run/split.json: 'fingerprints' is malformed"):
        RecordedPrints.from_split({"fingerprints": {"scheme": SCHEME}}, "run/split.json")


# ---- trajectories ------------------------------------------------------------------------------
def _states(seed: int = 0, n: int = 5, t: int = 100) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, t, 3))


def test_sampled_steps():
    assert sampled_steps(1) == [0]
    assert sampled_steps(5) == [0, 1, 2, 3, 4]
    steps = sampled_steps(1000)
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) == 18


def test_trajectory_fingerprints_by_content_not_path_nor_dtype(tmp_path: Path):
    states = _states()
    f32 = tmp_path / "a.h5"
    write_trajectories(f32, states.astype(np.float32), dt=0.1)
    f64 = tmp_path / "b.h5"
    write_trajectories(f64, states.astype(np.float32).astype(np.float64), dt=0.1)
    pa, pb = trajectory_fingerprints(f32), trajectory_fingerprints(f64)
    assert [p.content for p in pa] == [p.content for p in pb]
    assert pa[2].label == f"{f32}#2"
    assert [p.content for p in pa] == [trajectory_fingerprint(s) for s in states]
    assert len({p.content for p in pa}) == 5
    assert file_fingerprints(f32) == pa


def test_trajectory_fingerprint_sees_changes_at_sampled_and_end_steps():
    s = _states(n=1, t=200)[0]
    base = trajectory_fingerprint(s)
    for step in (0, 199, sampled_steps(200)[5]):
        changed = s.copy()
        changed[step, 1] += 1e-3
        assert trajectory_fingerprint(changed) != base, step
    assert trajectory_fingerprint(s[:150]) != base  # a cut trajectory is another trajectory


def test_pdebench_layout_and_blocks(tmp_path: Path, monkeypatch):
    """A (N, T, X) PDEBench tensor fingerprints like the same fields as (N, T, X, 1), and
    reading in small blocks gives the same answer."""
    tensor = np.random.default_rng(1).normal(size=(7, 40, 16)).astype(np.float32)
    path = tmp_path / "pde.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = tensor
        f["t-coordinate"] = np.arange(41) * 0.1
        f["x-coordinate"] = np.linspace(0, 1, 16)
    whole = list(iter_trajectory_fingerprints(path))
    assert whole == [trajectory_fingerprint(t[..., None]) for t in tensor]
    monkeypatch.setattr("sciformer.fingerprints._TRAJ_BLOCK_BYTES", 1)  # one trajectory a read
    assert list(iter_trajectory_fingerprints(path)) == whole


def test_same_hdf5_twice_is_found_as_duplicates(tmp_path: Path):
    a = tmp_path / "a.h5"
    write_trajectories(a, _states(n=3).astype(np.float32), dt=0.1)
    b = tmp_path / "copy.h5"
    shutil.copy(a, b)
    prints = trajectory_fingerprints(a) + trajectory_fingerprints(b)
    assert duplicates(prints) == [(0, 3), (1, 4), (2, 5)]


def test_bytes_fingerprint(tmp_path: Path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc" * 1000)
    assert bytes_fingerprint(p, chunk=7) == hashlib.blake2b(b"abc" * 1000, digest_size=8).hexdigest()
    with pytest.raises(InputError, match="missing.bin: cannot read"):
        bytes_fingerprint(tmp_path / "missing.bin")


def test_combined_fingerprint_changes_with_any_id_sequence_or_order():
    a, b = Fingerprint("a", "00" * 8, "11" * 8), Fingerprint("b", "22" * 8, "33" * 8)
    base = combined_fingerprint([a, b])
    assert base == combined_fingerprint([Fingerprint("x", "ff" * 8, "11" * 8), b])  # by exact
    assert base != combined_fingerprint([b, a])
    assert base != combined_fingerprint([a])
    assert base != combined_fingerprint([a, Fingerprint("b", "22" * 8, "34" * 8)])
