"""One progress bar for every long-running verb (pretrain, predict, evaluate, embed).

The CLI switches bars on only when stderr is a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool,
                 initial: int = 0) -> tqdm:
    """A tqdm bar on stderr when `enabled`, else a silent one with the same interface."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                dynamic_ncols=True)
