"""provenance.json: what made a run -- the code (sciformer version, git commit of the source
tree when it is a checkout, with a flag for uncommitted changes), the command line, the
library versions and the start time. Written by `pretrain` next to config.json; a shipped
run carries it, so its numbers can be traced to a commit and a workflow."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROVENANCE = "provenance.json"


def source_commit(where: Path | None = None) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} of the git checkout holding `where` (default: this
    package), or None when it is not a checkout or git is not available."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(dirty)} if sha else None


def _program() -> str:
    """How this process was started: `sciformer`, `python -m sciformer`, or the script."""
    name = Path(sys.argv[0]).name
    return "python -m sciformer" if name == "__main__.py" else name


def provenance() -> dict[str, Any]:
    """The provenance record of a run started now by this process."""
    import numpy as np
    import torch

    from sciformer import __version__

    return {"sciformer": __version__, "source": source_commit(),
            "command": shlex.join([_program(), *sys.argv[1:]]),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
