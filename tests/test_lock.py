"""Run-directory lock: a second process is refused at once and told the holder's pid; the
lock dies with its holder (SIGKILL included); `pretrain` holds it for the whole run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.io.lock import LOCK_NAME, RunLock, RunLockedError
from tests.conftest import TINY_MASKED, write_fasta

ROOT = Path(__file__).resolve().parents[1]

_HOLDER = """
import sys, time
from sciformer.io.lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold(run: Path) -> subprocess.Popen:
    """A separate process holding the lock on `run` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_writes_pid_and_is_removed_on_release(tmp_path: Path):
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not lock.held and not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):  # free again
        pass


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"is in use by another sciformer process "
                                                 rf"\(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()


def test_other_process_is_refused_and_lock_dies_with_a_sigkilled_holder(tmp_path: Path):
    proc = hold(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        assert str(info.value) == (f"{tmp_path} is in use by another sciformer process "
                                   f"(pid {proc.pid})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert (tmp_path / LOCK_NAME).exists()  # the stale file stays, but holds no lock
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_a_lock_file_unlinked_under_a_waiter_is_not_trusted(tmp_path: Path, monkeypatch):
    """A process that locked a file its previous holder had just removed must start over
    (else two processes would both hold 'the' lock)."""
    first = RunLock(tmp_path).acquire()
    lock = RunLock(tmp_path)
    opened = []
    real_open = lock._open

    def open_then_holder_releases() -> int:
        fd = real_open()
        if not opened:  # the holder releases (unlinks) between our open and our flock
            first.release()
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock, "_open", open_then_holder_releases)
    lock.acquire()
    assert len(opened) == 2  # the unlinked file was dropped, the new one locked
    assert os.fstat(opened[1]).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    lock.release()


def test_pretrain_into_a_locked_run_directory_is_refused(tmp_path: Path):
    fa = write_fasta(tmp_path / "prot.fa")
    run = tmp_path / "run"
    run.mkdir()
    proc = hold(run)
    try:
        args = ["pretrain", str(fa), "--out-dir", str(run)] + \
            [a for item in TINY_MASKED for a in ("--set", item)]
        res = CliRunner().invoke(main, args)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert res.exit_code == 1, res.output
    assert res.output.strip() == (f"Error: {run} is in use by another sciformer process "
                                  f"(pid {proc.pid})")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written


def test_file_lock_beside_an_output_file(tmp_path: Path):
    out = tmp_path / "emb.h5"
    with RunLock.for_file(out) as lock:
        assert lock.path == tmp_path / ".emb.h5.lock"
        with pytest.raises(RunLockedError, match=rf"^{out} is in use by another sciformer"):
            RunLock.for_file(out).acquire()
        RunLock(tmp_path).acquire().release()  # the folder's own lock is another lock
    assert sorted(p.name for p in tmp_path.iterdir()) == []
