"""SIGTERM (and SIGHUP) take the same clean-up path as Ctrl-C.

``timeout``, Slurm (at the time limit or on ``scancel``), ``docker stop`` and systemd stop a
process with SIGTERM, whose default action ends it at once: no ``finally`` block runs, so
every temp file being written (``.NAME.*.tmp``, a report's temp folder) stays behind. Inside
`terminate_as_interrupt` the signal instead raises `Terminated`, a `KeyboardInterrupt`, in the
main thread: the same unwinding as Ctrl-C, which removes temp files and parent folders
(`sciformer.io.atomic`, `sciformer.io.outputs`) and releases run locks. The command then exits
with `exit_code` (128 + the signal number: 143 for SIGTERM, the shell's convention) and a
one-line message.

A second signal while the first is being handled is ignored, so clean-up is not cut short;
SIGKILL remains the way to stop a process at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: Signals turned into `Terminated` (SIGINT keeps Python's own KeyboardInterrupt).
SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.name}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it (143: SIGTERM)."""
        return 128 + self.signum

    @property
    def message(self) -> str:
        """The one line the CLI prints."""
        return f"Terminated by {self.name}; temporary files removed."


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Within the block, `signals` raise `Terminated` in the main thread; the previous
    handlers are restored on exit. Outside the main thread (where Python cannot install
    handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return  # already unwinding: let the clean-up finish
        fired = True
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


__all__ = ["SIGNALS", "Terminated", "terminate_as_interrupt"]
