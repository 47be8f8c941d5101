"""Atomic file writes: a temp file in the same folder, then `os.replace`.

A reader therefore sees either the old file or the complete new one, never a half-written
file, even if the process is killed mid-write (POSIX rename is atomic within a filesystem).

A write that fails for any reason removes its temp file, and removes again the parent folders
it had to create, so a failed command leaves nothing behind. A full disk, a read-only disk or
a folder the user may not write in is a `WriteError` with a one-line message naming the path,
not a traceback. SIGKILL is the one exit that can leave a hidden ``.NAME.*.tmp`` file; SIGTERM
goes through the same clean-up as Ctrl-C when `sciformer.signals` is installed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sciformer.errors import SciformerError


class WriteError(SciformerError):
    """An output could not be written (full disk, read-only disk, no permission)."""


#: errno values that mean "this disk cannot take the output", with the user's words.
_WHY = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system", errno.EFBIG: "file too large for this disk"}
#: ... and those that mean "not allowed here": only where sciformer itself creates a file or
#: folder (a PermissionError inside a writer may come from reading an input).
_DENIED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()


def write_failure(path: Path, exc: BaseException, creating: bool = False) -> WriteError | None:
    """The one-line `WriteError` for `exc` raised while writing `path`, or None when `exc`
    is not a disk problem (then it is re-raised as it is); `creating`: `exc` came from
    creating the file or a folder, so a permission error is about `path` too.

    Writers report a full disk in several ways: an OSError with errno ENOSPC, or (torch's
    zip writer, some HDF5 builds) a RuntimeError/OSError whose text holds "No space left".
    """
    why = {**_WHY, **_DENIED} if creating else _WHY
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code not in why and ("No space left" in text or "errno = 28" in text):
        code = errno.ENOSPC
    if code not in why:
        return None
    return WriteError(f"{path}: cannot write ({why[code]})")


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, deepest first.

    Raises `WriteError` (naming the folder) when a parent cannot be created.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if p.is_dir():
                continue  # another process made it meanwhile: not ours to remove
            remove_created(created)
            raise WriteError(f"{folder}: cannot create the folder ({p} is a file)") from None
        except OSError as exc:
            remove_created(created)
            err = write_failure(folder, exc, creating=True)
            raise (err or WriteError(f"{folder}: cannot create the folder ({exc.strerror})")
                   ) from None
        created.insert(0, p)
    if not folder.is_dir():
        raise WriteError(f"{folder}: not a folder")
    return created


def remove_created(created: list[Path]) -> None:
    """Remove folders `make_parents` created (deepest first), where they are still empty."""
    for p in created:
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, else delete it.

    On failure the temp file and any parent folder created here are removed; a disk or
    permission problem becomes a one-line `WriteError` naming `path`.
    """
    path = Path(path)
    created = make_parents(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        remove_created(created)
        err = write_failure(path, exc, creating=True)
        if err is None:
            raise
        raise err from None
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush file contents to disk before the rename
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _remove(tmp_path)
        remove_created(created)
        err = write_failure(path, exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if err is None:
            raise
        raise err from exc


def _remove(path: Path) -> None:
    """Remove a temp path, whether a writer left a file or (rarely) a folder there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, non_finite: str = "error") -> None:
    """Write `obj` as indented, strict JSON to `path` atomically.

    NaN and Infinity are not JSON (Python would write them as bare words other readers
    refuse). With `non_finite="error"` (settings: config.json, split.json) such a value is a
    one-line `SciformerError` naming the file and the entry, and nothing is written; with
    "null" (results: metrics.json, where a score can be undefined) it is written as `null`.
    """
    if non_finite == "null":
        obj = _nulls(obj)
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise SciformerError(f"{path}: refused to write {_non_finite_entry(obj)}, which is "
                             "NaN or infinite (not valid JSON)") from None
    write_text_atomic(path, text + "\n")


def _nulls(obj: Any) -> Any:
    """A copy of nested dicts/lists with every NaN/Inf float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nulls(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nulls(v) for v in obj]
    return obj


def _non_finite_entry(obj: Any, where: str = "") -> str:
    """The dotted key of the first NaN/Inf float in nested dicts/lists, e.g. 'train.lr'."""
    items = obj.items() if isinstance(obj, dict) else \
        enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        here = f"{where}.{key}" if where else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            return f"'{here}' = {value}"
        if isinstance(value, (dict, list, tuple)):
            found = _non_finite_entry(value, here)
            if found:
                return found
    return "" if where else "a value"
