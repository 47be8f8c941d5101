"""Fine-tuning: start a forecasting run from another run's weights (`--init-from RUN`).

Few-shot transfer, as in the foundation-model recipe (pretrain once on many systems, then
adapt briefly to the user's data): the new run keeps the SOURCE run's architecture and token
format (the `model` section; the data fields that fix the token and head widths and the
positions: tokenizer, channels, scaling, patch_len, context, horizon, bins, quantiles, the
anchor kind) and takes everything else -- the data files, the optimiser, the step budget, the
seed -- from the user; an NVAR anchor is refitted on the new data. The weights are loaded
before the first step, so the first loss is the source model's loss on the first batch.
`train.init_from` is recorded in config.json (provenance).

Refused with one line: a masked-residue source run (forecasting only), a user setting that
contradicts the source's architecture, and weights whose shapes do not fit the new data (a
per-dataset run trained on another channel count; use a channel-agnostic run instead).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sciformer.config import DERIVED_FIELDS, RunConfig, explicit_keys, read_run_config
from sciformer.errors import CheckpointError, ConfigError
from sciformer.model.anchor import PREFIX
from sciformer.runs import CONFIG, WEIGHTS, check_weights, read_tensors

#: Data fields that fix the model's token format, head widths and positions.
TOKEN_FIELDS = ("tokenizer", "channels", "scaling", "patch_len", "context", "horizon",
                "n_bins", "bin_limit", "quantiles", "anchor")


def finetune_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with the architecture and token format of the run at `cfg.train.init_from`."""
    source = Path(cfg.train.init_from)
    saved, extra = read_run_config(source / CONFIG)
    if extra.get("task") != "forecast":
        raise ConfigError(f"{source}: --init-from needs a forecasting run; this is a "
                          f"'{extra.get('task')}' run")
    # the anchor the source was trained with (a run from before data.anchor reads as the
    # default, auto, but was persistence-anchored)
    anchor = extra.get("anchor")  # what the fit chose; NVAR runs recorded no "kind"
    kind = anchor.get("kind", "nvar") if isinstance(anchor, dict) else "nvar"
    saved.data.anchor = kind if anchor else "persistence"
    user = explicit_keys(cfg)
    derived = {k.split(".", 1)[1] for k in DERIVED_FIELDS}
    pairs = [("model", k) for k in vars(saved.model) if not k.startswith("_")
             and k not in derived] + [("data", k) for k in TOKEN_FIELDS]
    for section, key in pairs:
        want = getattr(getattr(saved, section), key)
        have = getattr(getattr(cfg, section), key)
        if f"{section}.{key}" in user and have != want:
            raise ConfigError(f"{section}.{key}={have!r} differs from {source}'s {want!r}; "
                              "a fine-tuning run keeps the source run's architecture")
        setattr(getattr(cfg, section), key, want)
    return cfg


def load_init_weights(model: nn.Module, source: str | Path) -> None:
    """Load the source run's weights into `model` (the model built for the new data)."""
    path = Path(source) / WEIGHTS
    try:  # the source's NVAR anchor (if any) stays behind: the task fits one on the new data
        tensors = {k: v for k, v in read_tensors(path).items() if not k.startswith(PREFIX)}
        check_weights(model, tensors, str(path), "match config.json", "config.json implies")
        model.load_state_dict(tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {source}: incompatible with this data ({exc}); a "
                              "run trained on another channel count needs "
                              "data.scaling=instance with data.channels=independent") from None
