"""Output safety: `check_output` refuses every path whose replacement would lose data,
`atomic_dir` writes a folder as a unit, `atomic_path` turns a full or read-only disk into one
line and leaves nothing behind, and SIGTERM cleans up like Ctrl-C (`sciformer.signals`)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sciformer.errors import InputError
from sciformer.io import atomic, outputs
from sciformer.io.atomic import WriteError, atomic_path, write_text_atomic
from sciformer.io.outputs import REPORT_MARKER, atomic_dir, check_output, run_files

ROOT = Path(__file__).resolve().parents[1]


def refused(out, *fragments: str, **kwargs) -> str:
    """check_output must raise a one-line InputError naming `out` and every fragment."""
    with pytest.raises(InputError) as info:
        check_output(out, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(out)), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- check_output: the output is an input or a protected file -------------------------------------
def test_output_that_is_the_input_is_refused_by_any_path(tmp_path: Path, monkeypatch):
    q = tmp_path / "q.fa"
    q.write_text(">a\nMK\n")
    refused(q, "is an input (", inputs=[q])
    monkeypatch.chdir(tmp_path)
    refused(Path("q.fa"), "is an input", inputs=[q])  # relative vs absolute
    (tmp_path / "sub").mkdir()
    refused(Path("sub/../q.fa"), "is an input", inputs=[q])
    link = tmp_path / "link.fa"
    link.symlink_to(q)
    refused(link, "is an input", inputs=[q])  # a symlink to the input
    refused(q, "is an input", inputs=[link])  # the input given through a symlink
    hard = tmp_path / "hard.fa"
    os.link(q, hard)
    refused(hard, "is an input", inputs=[q])  # another name of the same inode
    assert q.read_text() == ">a\nMK\n"


def test_output_that_is_a_run_file_is_refused(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000003").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "split.json"):
        (run / name).write_text("{}")
    refused(run / "model.safetensors", "must not replace", protected=run_files(run))
    refused(run / "split.json", "must not replace", protected=run_files(run))
    refused(run / "checkpoints" / "x.tsv", "is inside", protected=run_files(run))
    assert check_output(run / "preds.tsv", protected=run_files(run)) == run / "preds.tsv"
    refused(run, "holds a file the command must not replace", protected=run_files(run), kind="dir")


def test_folder_output_holding_an_input_is_refused(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "q.fa").write_text(">a\nMK\n")
    refused(data, "holds an input", inputs=[data / "q.fa"], kind="dir")
    refused(tmp_path, "holds an input", inputs=[data / "q.fa"], kind="dir")


# ---- check_output: what the path is ------------------------------------------------------------
def test_devices_fifos_and_sockets_are_refused(tmp_path: Path):
    refused(Path("/dev/null"), "is a character device, not a regular file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(fifo, "is a named pipe (FIFO)")
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        refused(sock_path, "is a socket")
    assert Path("/dev/null").is_char_device()


def test_symlinks_are_refused_and_named(tmp_path: Path):
    target = tmp_path / "elsewhere.tsv"
    target.write_text("keep")
    link = tmp_path / "out.tsv"
    link.symlink_to(target)
    refused(link, f"is a symbolic link (to {target})", "does not replace links")
    dangling = tmp_path / "dangling.tsv"
    dangling.symlink_to(tmp_path / "missing")
    refused(dangling, "is a symbolic link")
    assert target.read_text() == "keep"


def test_file_vs_folder_kinds(tmp_path: Path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    refused(tmp_path / "folder", "is a folder; give a file path")
    refused(tmp_path / "file.txt", "is a file, not a folder", kind="dir")
    refused(tmp_path / "file.txt" / "out.tsv", "is not a folder")  # parent is a file
    assert check_output(tmp_path / "file.txt") == tmp_path / "file.txt"  # overwriting a file
    assert check_output(tmp_path / "new" / "deep" / "out.tsv") == tmp_path / "new/deep/out.tsv"


def test_existing_folder_is_replaced_only_when_empty_or_a_report(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    refused(tmp_path / "mine", "is not a sciformer report folder", kind="dir")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", kind="dir")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / REPORT_MARKER).write_text("")
    check_output(tmp_path / "report", kind="dir")


def test_unwritable_parent_is_refused(tmp_path: Path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    refused(tmp_path / "new" / "out.tsv", f"cannot write in {tmp_path} (permission denied)")
    monkeypatch.setattr(outputs, "_read_only", lambda folder: True)
    refused(tmp_path / "out.tsv", "(read-only file system)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_for_real(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    refused(ro / "out.tsv", "permission denied")


# ---- atomic_path: failures are one line and leave nothing ----------------------------------------
@pytest.mark.parametrize("exc, why", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk full"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing "
                  "file data/0: file write failed (No space left on device)"), "disk full"),
], ids=["enospc", "erofs", "torch-zip-writer"])
def test_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path: Path, exc, why):
    out = tmp_path / "new" / "deeper" / "out.h5"
    with pytest.raises(WriteError) as info:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert str(info.value) == f"{out}: cannot write ({why})"
    assert leftovers(tmp_path) == []  # no temp file, no parent folder created for it


def test_temp_file_that_cannot_be_created_is_one_line(tmp_path: Path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", no_space)
    with pytest.raises(WriteError, match=r"out\.tsv: cannot write \(read-only file system\)"):
        write_text_atomic(tmp_path / "a" / "out.tsv", "x")
    assert leftovers(tmp_path) == []


def test_other_failures_propagate_and_clean_up(tmp_path: Path):
    (tmp_path / "keep").mkdir()
    with pytest.raises(ValueError, match="bug"):
        with atomic_path(tmp_path / "keep" / "new" / "out.tsv") as tmp:
            tmp.write_text("partial")
            raise ValueError("bug")
    assert leftovers(tmp_path) == ["keep"] and leftovers(tmp_path / "keep") == []
    with pytest.raises(PermissionError):  # a permission error inside a writer is not blamed
        with atomic_path(tmp_path / "out.tsv"):  # on the output (it may be an input's)
            raise PermissionError(errno.EACCES, "Permission denied", "input.fa")
    assert leftovers(tmp_path) == ["keep"]


def test_real_full_device_is_one_line(tmp_path: Path):
    """A real ENOSPC from the kernel (/dev/full answers every write with it) inside a writer."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(WriteError, match="cannot write \\(disk full\\)"):
        with atomic_path(tmp_path / "out.bin"):
            with open("/dev/full", "wb", buffering=0) as full:
                full.write(b"x" * 10)
    assert leftovers(tmp_path) == []


# ---- atomic_dir --------------------------------------------------------------------------------
def test_atomic_dir_appears_whole_and_replaces_a_report_at_the_end(tmp_path: Path):
    final = tmp_path / "reports" / "r1"
    with atomic_dir(final) as tmp:
        assert not final.exists() and tmp.parent == final.parent
        (tmp / "metrics.json").write_text("{1}")
    assert leftovers(final) == [REPORT_MARKER, "metrics.json"]
    with atomic_dir(final) as tmp:
        (tmp / "plot.png").write_text("new")
        assert (final / "metrics.json").read_text() == "{1}"  # old report intact until the end
    assert leftovers(final) == [REPORT_MARKER, "plot.png"]
    assert leftovers(final.parent) == ["r1"]  # no temp, no old copy


def test_atomic_dir_without_an_atomic_exchange(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    final = tmp_path / "r"
    for text in ("one", "two"):
        with atomic_dir(final) as tmp:
            (tmp / "m.txt").write_text(text)
    assert (final / "m.txt").read_text() == "two" and leftovers(tmp_path) == ["r"]


def test_atomic_dir_failure_leaves_nothing_not_even_parents(tmp_path: Path):
    final = tmp_path / "new" / "deep" / "report"
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "metrics.json").write_text("{}")
            raise ValueError("a model failed")
    assert leftovers(tmp_path) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text("previous")
    (tmp_path / "old" / REPORT_MARKER).write_text("")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "old") as tmp:
            (tmp / "metrics.json").write_text("new")
            raise KeyboardInterrupt
    assert (tmp_path / "old" / "metrics.json").read_text() == "previous"
    assert leftovers(tmp_path) == ["old"]


def test_atomic_dir_refuses_a_folder_that_is_not_a_report_before_writing(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.fa").write_text(">a\nMK\n")
    with pytest.raises(InputError, match="is not a sciformer report folder"):
        with atomic_dir(tmp_path / "data"):
            raise AssertionError("not reached")
    assert leftovers(tmp_path / "data") == ["q.fa"]


# ---- SIGTERM cleans up like Ctrl-C -------------------------------------------------------------
_WRITER = """
import sys, time
from pathlib import Path
from sciformer.io.atomic import atomic_path
from sciformer.io.outputs import atomic_dir
from sciformer.signals import Terminated, terminate_as_interrupt

out = Path(sys.argv[1])
try:
    with terminate_as_interrupt():
        with atomic_dir(out / "new" / "report") as folder, atomic_path(out / "a.h5") as tmp:
            (folder / "metrics.json").write_text("{}")
            tmp.write_bytes(b"half-written")
            print("writing", flush=True)
            time.sleep(60)
except Terminated as exc:
    print(f"Error: {exc.message}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_sigterm_mid_write_removes_temp_files_and_exits_143(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # mid-write
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["Error: Terminated by SIGTERM; temporary files removed."]
    assert leftovers(tmp_path) == []  # no hidden temp file, temp folder or parent folder


def test_terminate_as_interrupt_restores_handlers_and_ignores_a_second_signal():
    from sciformer.signals import Terminated, terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with terminate_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises right after
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # during clean-up: ignored
    assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == before


def test_temp_names_are_hidden_and_beside_the_output(tmp_path: Path):
    with atomic_path(tmp_path / "x.tsv") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.tsv.")
        assert tmp.name.endswith(".tmp")
    assert leftovers(tmp_path) == ["x.tsv"]


_PRETRAIN = """
import sys
from sciformer.config import load_config
from sciformer.signals import Terminated, terminate_as_interrupt
from sciformer.train.loop import pretrain

data, run, *sets = sys.argv[1:]
try:
    with terminate_as_interrupt():
        pretrain([data], load_config(None, sets), run, progress=False)
except Terminated as exc:
    sys.exit(exc.exit_code)
"""


@pytest.mark.slow
def test_sigterm_during_the_first_checkpoint_of_a_new_run_leaves_nothing(tmp_path: Path):
    """A new run stopped by SIGTERM before its first checkpoint completes removes all it
    wrote, its lock and the folders it created (the run would otherwise block a rerun)."""
    import time

    from tests.conftest import TINY_MASKED, write_fasta

    fa = write_fasta(tmp_path / "prot.fa")
    run = tmp_path / "new" / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SCIFORMER_TEST_SLOW_CHECKPOINT": "60:3"}
    proc = subprocess.Popen([sys.executable, "-c", _PRETRAIN, str(fa), str(run), *TINY_MASKED],
                            env=env, stderr=subprocess.PIPE, text=True)
    half = run / "checkpoints" / ".tmp-step_00000003" / "model.safetensors"
    deadline = time.monotonic() + 60
    while not half.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert half.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert leftovers(tmp_path) == ["prot.fa"]
