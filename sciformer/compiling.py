"""Host-side work kept out of `torch.compile` graphs, without importing the compiler.

A few functions on the training path do data-dependent host work (a NaN check of a batch,
an index whose size depends on the data). Inside a compiled training step they should run
as plain Python, a deliberate graph break, rather than be traced (Dynamo then splits the
graph anyway and prints a long warning). Wrapping them in `torch.compiler.disable` when
their module is imported would import the compiler (torch._dynamo, ~2 s) in every command,
most of which never compile; so `eager` only marks them, and `prepare()`, called just before
compiling, makes their disabled twins.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

Fn = TypeVar("Fn", bound=Callable[..., Any])
_MARKED: list[Callable[..., Any]] = []
_TWINS: dict[Callable[..., Any], Callable[..., Any]] = {}


def eager(fn: Fn) -> Fn:
    """Mark `fn` to run outside the graph when a compiled region calls it (after `prepare`);
    a plain call costs one flag check."""
    _MARKED.append(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() and fn in _TWINS:
            return _TWINS[fn](*args, **kwargs)
        return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


def prepare() -> None:
    """Make the disabled twins of every marked function (imports the compiler)."""
    for fn in _MARKED:
        if fn not in _TWINS:
            _TWINS[fn] = torch.compiler.disable(fn)
