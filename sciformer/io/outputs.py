"""Output-path safety: an output never replaces an input, a run's own file, a device, a
folder or a symlink, and a report folder appears whole or not at all.

Every file sciformer writes goes through a temp name and `os.replace` (`sciformer.io.atomic`),
which REPLACES whatever the name pointed to: the input file given as ``--out`` (data loss), a
device node such as ``/dev/null`` (replaced by a regular file, for every user of the machine
when run as root), or a symlink (the link is replaced, its target silently left stale). So
`check_output` is called on every output path, after the inputs are known and before any
work, and refuses those cases with a one-line `InputError` naming the path.

`atomic_dir` is the folder counterpart of `atomic_path`: a report folder is built under a
hidden temp name beside its final place and renamed into place only when complete, replacing
an earlier report in one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
renames), so a killed or failed command never leaves half a report, nor one model's plot
beside another's metrics. Parent folders are created for the write and removed again if it
fails. A folder is only ever replaced when it is a sciformer report (it holds the marker
file `REPORT_MARKER`, which `atomic_dir` writes); any other existing folder is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from sciformer.errors import InputError
from sciformer.io.atomic import UMASK, make_parents, remove_created, write_failure

#: Hidden file that marks a folder written by `atomic_dir`; only such a folder is replaced.
REPORT_MARKER = ".sciformer-report"

PathLike = str | os.PathLike
_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket"}


def check_output(out: PathLike, *, inputs: Iterable[PathLike] = (),
                 protected: Iterable[PathLike] = (),
                 kind: Literal["file", "dir"] = "file") -> Path:
    """Refuse an output path that writing would make lose data; return it as a Path.

    `inputs`: the files the command reads. `protected`: paths that must survive, e.g. a run
    directory's own files (`run_files`); a protected FOLDER protects everything inside it.
    Refused, each with a one-line `InputError` naming `out`:
    `out` is (or resolves to, through a symlink, a hard link or any other path to the same
    file) an input or a protected path; `out` is a symlink, a device, a FIFO or a socket; a
    file output names an existing folder, a folder output an existing file; a folder output
    holds an input or protected path, or is an existing non-empty folder that is not a
    sciformer report; the nearest existing parent is not a writable folder.
    """
    out = Path(out)
    guarded = [(Path(p), "input") for p in inputs] + [(Path(p), "protected") for p in protected]
    for other, role in guarded:
        _check_not_same(out, other, role, kind)
    st = _lstat(out)
    if st is not None:
        _check_kind(out, st, kind)
    _check_parent_writable(out)
    return out


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # (a parent is a file: said below)
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot check the output path ({exc.strerror})") from None


def _same(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are the same file (inode), or resolve to the same path."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return a.resolve() == b.resolve()


def _inside(a: Path, folder: Path) -> bool:
    """Whether `a` (resolved) lies inside `folder` (resolved)."""
    return folder.resolve() in a.resolve().parents


def _check_not_same(out: Path, other: Path, role: str, kind: str) -> None:
    """`out` must not be `other`, nor lie inside a protected folder `other`, nor (a folder
    output) contain `other`."""
    noun = "an input" if role == "input" else "a file the command must not replace"
    if _same(out, other):
        raise InputError(f"{out}: is {noun} ({other}); choose another output path")
    if role == "protected" and other.is_dir() and _inside(out, other):
        raise InputError(f"{out}: is inside {other}, which must not be replaced; "
                         "choose another output path")
    if kind == "dir" and _inside(other, out):
        raise InputError(f"{out}: holds {noun} ({other}), which writing this folder would "
                         "replace; choose another output folder")


def _check_kind(out: Path, st: os.stat_result, kind: str) -> None:
    """An existing `out` must be something writing it may replace."""
    mode = stat.S_IFMT(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(out)
        raise InputError(f"{out}: is a symbolic link (to {target}); sciformer does not replace "
                         "links: give the target's path or another name")
    if mode in _SPECIAL:
        raise InputError(f"{out}: is {_SPECIAL[mode]}, not a regular file; choose an output "
                         "file path")
    if kind == "file" and stat.S_ISDIR(mode):
        raise InputError(f"{out}: is a folder; give a file path")
    if kind == "dir" and not stat.S_ISDIR(mode):
        raise InputError(f"{out}: is a file, not a folder; give a folder path")
    if kind == "dir" and not is_replaceable_dir(out):
        raise InputError(f"{out}: exists and is not a sciformer report folder (it would be "
                         "replaced); choose a new output folder or remove it")


def is_replaceable_dir(folder: Path) -> bool:
    """Whether `folder` may be replaced by a new report: empty, or marked as a report."""
    try:
        return (folder / REPORT_MARKER).is_file() or not any(folder.iterdir())
    except OSError:
        return False


def _check_parent_writable(out: Path) -> None:
    """The nearest existing ancestor of `out` must be a folder this process may write in."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{out}: cannot write there ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(parent) else "permission denied"
        raise InputError(f"{out}: cannot write in {parent} ({why})")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ---- report folders written as a unit ---------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(final: PathLike, *, mark: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final`; on success it becomes `final`, else it is
    removed (with any parent folder created for it).

    An existing `final` is replaced only at the very end, and only when it is empty or a
    sciformer report (`REPORT_MARKER`); `mark` writes that marker into the new folder.
    """
    final = Path(final)
    st = _lstat(final)
    if st is not None:
        _check_kind(final, st, "dir")
    created = make_parents(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        remove_created(created)
        raise (write_failure(final, exc, creating=True) or exc) from None
    try:
        tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; give a normal folder's mode
        yield tmp
        if mark:
            (tmp / REPORT_MARKER).write_text("written by sciformer; replaced by its next run\n")
        _put_in_place(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        err = write_failure(final, exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if err is None:
            raise
        raise err from exc


def _put_in_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final`, exchanging it atomically with an earlier
    report there (whose files are then deleted)."""
    st = _lstat(final)
    if st is None:
        os.rename(tmp, final)  # fails (rather than replacing) if a folder appeared meanwhile
        return
    _check_kind(final, st, "dir")  # still a replaceable report folder
    if not _exchange(tmp, final):
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        tmp = old
    shutil.rmtree(tmp, ignore_errors=True)  # now the earlier report


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    C library, kernel or filesystem cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def run_files(run_dir: PathLike) -> list[Path]:
    """The paths of a run directory that no output may replace (pass as `protected`): its
    files (the run-directory layout of `sciformer.train.checkpoint`), its lock and its
    checkpoints folder. Other names inside the run directory stay writable."""
    run_dir = Path(run_dir)
    names = ["config.json", "model.safetensors", "train_state.pt", "metrics.jsonl",
             "split.json", ".lock", "checkpoints"]
    return [run_dir / n for n in names]


__all__ = ["REPORT_MARKER", "atomic_dir", "check_output", "is_replaceable_dir", "run_files"]
