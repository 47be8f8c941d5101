"""Which settings belong to which task, and a run configuration completed for one task.

`TASK_ONLY` lists the settings only the masked-residue or only the forecasting task reads;
`for_task` refuses the other task's settings (naming the key), fills in the model fields
derived from the task and its data (`sciformer.config.DERIVED_FIELDS`) and checks that a
learned position table covers the task's longest sequence.
"""

from __future__ import annotations

import copy
from typing import Any

from sciformer.config import RunConfig, explicit_keys
from sciformer.errors import ConfigError

#: Settings that only one task reads; setting one for the other task is an error naming it.
TASK_ONLY = {
    "masked": ("data.split_identity", "data.split_kmer", "data.crop_length", "data.mask_rate",
               "data.eval_mask_rate",
               "data.mask_token_rate", "data.random_token_rate", "data.tokens_per_batch",
               "model.token_dropout", "model.composition_prior", "model.composition_scope"),
    "forecast": ("data.tokenizer", "data.channels", "data.scaling", "data.context",
                 "data.horizon", "data.patch_len", "data.space_patch", "data.n_bins",
                 "data.bin_limit", "data.quantiles", "data.stride", "data.samples", "data.draws",
                 "data.anchor", "data.anchor_steps", "data.anchor_seconds", "data.pushforward", "data.pushforward_warmup",
                 "data.sampled_inputs", "data.sampled_inputs_from", "data.input_noise",
                 "train.batch_size", "model.channel_attention"),
}
TASK_WORDS = {"masked": "masked-residue (FASTA)", "forecast": "forecasting (HDF5)"}


def for_task(cfg: RunConfig, task: str, **derived: Any) -> RunConfig:
    """A copy of `cfg` completed for `task`: settings of the other task and derived fields
    the user set are refused (naming the key); `derived` model fields are filled in.

    The user's `cfg` is never modified.
    """
    other = next(t for t in TASK_ONLY if t != task)
    user = explicit_keys(cfg)
    for key in sorted(user & set(TASK_ONLY[other])):
        raise ConfigError(f"config field '{key}' does not apply to {TASK_WORDS[task]} runs "
                          f"(it is a {TASK_WORDS[other]} setting); remove it")
    decoder = cfg.model.n_decoder_layers
    if task == "masked" and "model.n_decoder_layers" in user and decoder != 0:
        raise ConfigError(f"config field 'model.n_decoder_layers': masked-residue runs are "
                          f"encoder-only; {decoder} decoder layers would never be used")
    if task == "forecast" and decoder < 1:
        raise ConfigError("config field 'model.n_decoder_layers': forecasting needs at least "
                          "one decoder layer")
    _check_learned_positions(cfg, task)
    out = copy.deepcopy(cfg)
    if task == "masked":
        out.model.n_decoder_layers = 0
    for name, value in derived.items():
        setattr(out.model, name, value)
    return out.validate()


def _check_learned_positions(cfg: RunConfig, task: str) -> None:
    """A learned position table must cover the longest sequence the task builds: a masked
    crop plus its two special tokens, or the forecast context / horizon in tokens (patches;
    for the bins tokenizer at least one token per time step)."""
    if cfg.model.positions != "learned":
        return
    d = cfg.data
    if task == "masked":
        need, what = d.crop_length + 2, f"data.crop_length={d.crop_length} + 2 special tokens"
    else:
        steps = max(d.context, d.horizon)
        need = -(-steps // d.patch_len) if d.tokenizer == "patch" else steps
        what = (f"data.context={d.context} / data.horizon={d.horizon} steps as "
                + (f"patches of {d.patch_len}" if d.tokenizer == "patch" else "bin tokens"))
    if cfg.model.max_len < need:
        raise ConfigError(f"config field 'model.max_len': {cfg.model.max_len} learned "
                          f"positions are fewer than the {need} tokens of {what}; raise "
                          f"model.max_len to at least {need}")
