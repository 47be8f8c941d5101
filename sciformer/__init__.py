"""sciformer: Transformers on scientific sequences (protein FASTA, simulation HDF5).

The Python API:

    import sciformer
    run = sciformer.pretrain(["train.faa"], {"train": {"max_steps": 800}}, "runs/prot")
    lm = sciformer.load("runs/prot")                 # ProteinLM or Forecaster
    metrics = sciformer.evaluate("runs/prot", "heldout.faa", "runs/prot/eval")

Submodules are imported on first use, so `import sciformer` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = [
    "Forecaster",
    "ProteinLM",
    "RunConfig",
    "SciformerError",
    "evaluate",
    "load",
    "pretrain",
]

_LAZY = {
    "load": "sciformer.pipelines", "ProteinLM": "sciformer.pipelines.protein",
    "Forecaster": "sciformer.pipelines.forecast", "pretrain": "sciformer.api",
    "evaluate": "sciformer.api", "RunConfig": "sciformer.config",
    "SciformerError": "sciformer.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from sciformer.api import evaluate, pretrain
    from sciformer.config import RunConfig
    from sciformer.errors import SciformerError
    from sciformer.pipelines import Forecaster, ProteinLM, load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sciformer' has no attribute {name!r}")
