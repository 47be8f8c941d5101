"""Run-directory lock: one sciformer process writes a run directory at a time.

Two ``pretrain`` runs into the same ``--out-dir`` would interleave metrics.jsonl, mix one run's
config with the other's weights, and delete each other's temp files. `RunLock` takes an
advisory ``flock`` on ``RUN/.lock`` without waiting: a second process is refused at once with
a one-line error naming the holder's pid. The kernel drops the lock when its holder exits in
any way (SIGKILL and crashes included), so a stale lock never blocks a rerun; the pid written
in the file is only for the message.

The lock file is removed on release (while still held). Because of that a process may lock
a file that another has just unlinked; `acquire` therefore checks, once it holds the lock,
that the path still names the locked file, and starts again if not.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from sciformer.errors import SciformerError

LOCK_NAME = ".lock"


class RunLockedError(SciformerError):
    """The run directory is being written by another process."""


class RunLock:
    """Context manager holding an exclusive advisory lock on ``run_dir/.lock``.

    The folder must exist. Not re-entrant across processes by design; within one process a
    second `RunLock` on the same folder is also refused (flock locks belong to open files).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @classmethod
    def for_file(cls, path: str | os.PathLike) -> RunLock:
        """A lock on one output FILE written in place over a long time (e.g. a resumable
        ``embed`` HDF5): ``.NAME.lock`` beside it, so a second writer is refused rather than
        deleting or interleaving the first one's partial file. Its folder must exist."""
        path = Path(path)
        lock = cls(path.parent)
        lock.run_dir, lock.path = path, path.with_name(f".{path.name}.lock")
        return lock

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunLockedError` naming the holder's pid."""
        for _ in range(100):  # loops only when the file was replaced under us
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise SciformerError(f"{self.path}: cannot lock ({exc.strerror})") from None
                raise RunLockedError(f"{self.run_dir} is in use by another sciformer process "
                                     f"(pid {self._holder()})") from None
            if self._still_ours(fd):
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return self
            os.close(fd)  # unlinked by its previous holder before we locked: try again
        raise SciformerError(f"{self.path}: cannot lock (the file keeps being replaced)")

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SciformerError(f"{self.path}: cannot create the lock file "
                                 f"({exc.strerror})") from None

    def _still_ours(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _holder(self) -> str:
        """The pid written by the holder ('unknown' if it has not written it yet)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "unknown"
        return text if text.isdigit() else "unknown"

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            if self._still_ours(self._fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]
