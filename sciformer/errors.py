"""User-facing errors.

Every problem with a user's input (a file, a record, a config field) is raised as a
`SciformerError` whose message names the culprit. The CLI prints it as one line and exits
non-zero; library users can catch it. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class SciformerError(Exception):
    """A problem with user input; the message is shown to the user as one line."""

    exit_code = 1


class InputError(SciformerError):
    """A data file (FASTA, HDF5, CSV) is malformed; the message names file and record/line."""


class ConfigError(SciformerError):
    """A config key is unknown, has the wrong type, or is out of range."""


class CheckpointError(SciformerError):
    """A run directory is missing, corrupt, or does not match the model it is loaded into."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when empty), cut to `limit`
    characters where given: what a one-line error quotes of an underlying library's error."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if limit is None else text[:limit]
