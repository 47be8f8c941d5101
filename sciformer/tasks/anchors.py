"""The anchor of a forecasting run (`data.anchor`), fitted on its training split before the
Transformer trains: what the patch quantiles are offsets on.

- ``persistence``: the last known state (nothing to fit);
- ``nvar``: an NVAR's closed-loop forecast of the patch (`sciformer.model.anchor`), for
  whole-state patch tokens of at most `MAX_DENSE_FEATURES` values;
- ``fno``: an FNO's forecast of the next time patch of a 2-D field
  (`sciformer.model.field_anchor`);
- ``analog``: the mean continuation of the context's closest analogues of its present state
  (`sciformer.model.analog`), from each window's context alone (nothing to fit), for patch
  tokens of ODE states; what a zero-shot (zoo) model may use;
- ``auto``: nvar where it applies, else persistence.

`resolve_anchor` is what the forecasting task calls; a resumed FNO-anchored run reads its
anchor back from the checkpoint instead of fitting it again.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from sciformer.config import RunConfig
from sciformer.errors import CheckpointError, ConfigError, InputError
from sciformer.evaluation.chaos_baselines import (
    MAX_DENSE_FEATURES,
    NVAR,
    NVAR_VALIDATION_STEPS,
)
from sciformer.evaluation.fno import FNOBaseline
from sciformer.model.analog import AnalogAnchor
from sciformer.model.anchor import NVARAnchor
from sciformer.model.field_anchor import FNOAnchor
from sciformer.tasks import spread_subset
from sciformer.tokenizers.fields import FieldPatchTokenizer
from sciformer.tokenizers.timeseries import (
    BinTokenizer,
    DatasetScaledPatchTokenizer,
    PatchTokenizer,
)

if TYPE_CHECKING:
    from sciformer.tasks.forecast import TrajectoryCollection

FNO_ANCHOR_INPUTS = 4  # frames the FNO anchor reads (at most a patch), as the fno baseline


def anchor_kind(cfg: RunConfig, tok: PatchTokenizer | BinTokenizer) -> str:
    """`data.anchor` resolved for this tokenizer: nvar needs whole-state patch tokens in fixed
    training units (`DatasetScaledPatchTokenizer`, joint channels) and a state of at most
    `MAX_DENSE_FEATURES` values; fno needs field patch tokens of a 2-D field; auto picks nvar
    where it applies and persistence elsewhere (an FNO anchor costs a fit budget, so it is
    asked for, never implied)."""
    want = cfg.data.anchor
    fits = (type(tok) is DatasetScaledPatchTokenizer and tok.channels == "joint"
            and tok.n_features <= MAX_DENSE_FEATURES)
    if want == "auto":
        return "nvar" if fits else "persistence"
    if want == "fno":
        if not (isinstance(tok, FieldPatchTokenizer) and len(tok.state_shape) == 3):
            raise ConfigError(f"data.anchor=fno needs field patch tokens of a 2-D field; this "
                              f"run has {tok.name} tokens of state shape "
                              f"{tuple(getattr(tok, 'state_shape', (tok.n_features,)))} "
                              "(use data.anchor=persistence)")
        return want
    if want == "analog":
        if not isinstance(tok, PatchTokenizer) or isinstance(tok, FieldPatchTokenizer):
            raise ConfigError(f"data.anchor=analog needs patch tokens of ODE states or 1-D "
                              f"fields (data.tokenizer=patch); this run has {tok.name} tokens "
                              "(use data.anchor=persistence)")
        check_analog_context(cfg.data.context, "data.anchor=analog")
        return want
    if want == "nvar" and not fits:
        raise ConfigError(f"data.anchor=nvar needs whole-state patch tokens "
                          f"(data.tokenizer=patch, channels=joint, scaling=dataset) of at most "
                          f"{MAX_DENSE_FEATURES} features; this run has {tok.name} tokens, "
                          f"{getattr(tok, 'channels', '?')} channels, {tok.n_features} features "
                          "(use data.anchor=persistence)")
    return want


def check_analog_context(context: int, source: str) -> None:
    """The analogue anchor needs a context holding at least one candidate analogue."""
    need = AnalogAnchor().min_context
    if context < need:
        raise ConfigError(f"{source}: the analogue anchor needs data.context >= {need} steps "
                          f"(a motif and a Theiler window); got {context}")


def resolve_anchor(cfg: RunConfig, tok: PatchTokenizer | BinTokenizer,
                   data: TrajectoryCollection, train: list[int], source: Path,
                   restore_from: Path | None = None, progress: bool = False
                   ) -> tuple[str, NVARAnchor | FNOAnchor | AnalogAnchor | None,
                              dict[str, Any] | None]:
    """The anchor kind this run gets, its fitted anchor (None for persistence) and what the
    fit chose, for the training trajectories `train` of `data`. An NVAR fit that fails is an
    error naming `source` for `data.anchor: nvar` and a warning and persistence for auto."""
    d = cfg.data
    kind = anchor_kind(cfg, tok)
    if kind == "analog":
        anchor = AnalogAnchor()
        return kind, anchor, anchor.describe()
    if kind == "fno" and restore_from is not None:  # resumed: the saved anchor
        return (kind, *restored_fno_anchor(restore_from))
    if kind == "fno":
        return (kind, *fit_fno_anchor(data, train, tok, d, cfg.train.seed, progress))
    if kind == "nvar":
        try:
            return (kind, *fit_anchor(data, train, tok, d))
        except (np.linalg.LinAlgError, InputError) as exc:
            if d.anchor != "auto":
                raise InputError(f"{source}: data.anchor=nvar: the NVAR fit on the "
                                 f"training trajectories failed ({exc})") from None
            warnings.warn(f"data.anchor=auto: the NVAR fit failed ({exc}); this run is "
                          "persistence-anchored", stacklevel=3)
    return "persistence", None, None


def token_unit_trajectories(data: TrajectoryCollection, items: list[int],
                            tok: PatchTokenizer) -> list[np.ndarray]:
    """The trajectories `items` (at most MAX_STAT_TRAJECTORIES, evenly spread), each (T, F)
    in the tokenizer's training-scaled units (its loc and scale repeat over the state)."""
    reps = tok.n_features // len(tok.loc)
    loc, scale = np.tile(np.asarray(tok.loc), reps), np.tile(np.asarray(tok.scale), reps)
    return [(data.window(data.items[i], 0, data.n_time(data.items[i])) - loc) / scale
            for i in spread_subset(items)]


def _offset_scale_summary(rms: Tensor, over: str) -> dict[str, Any]:
    """The anchor's offset unit (patch_len, ...) as its RMS per step, for the provenance."""
    return {"per_step_rms": [round(float(v), 8) for v in rms.pow(2).mean(dim=1).sqrt()],
            "unit": f"token units (training-scaled); mean over {over}"}


def fit_anchor(data: TrajectoryCollection, items: list[int], tok: DatasetScaledPatchTokenizer,
               d: Any) -> tuple[NVARAnchor, dict[str, Any]]:
    """The NVAR anchor fitted on the training trajectories `items` in the tokenizer's
    normalised units (`token_unit_trajectories`), and what it chose (`NVAR.describe`). Only
    delays whose states fit in one patch are tried, since the anchor of a patch reads the
    previous patch alone. Delays and ridge strength are chosen by NVAR's rule (stable closed
    loops, then the mean log error over the leads) over the longest closed-loop validation
    NVAR does (`NVAR_VALIDATION_STEPS`), not over one training horizon: the hybrid rolls the
    anchor out patch after patch over any horizon, and on KS the fit chosen over 32 steps
    (ridge 1e-2) diverged after ~50 steps."""
    train = token_unit_trajectories(data, items, tok)
    probe = NVAR()
    delays = [k for k in probe.delays if probe.span(k) <= d.patch_len]
    nvar = NVAR(delays=delays, horizon=NVAR_VALIDATION_STEPS).fit(train)
    anchor = NVARAnchor.from_nvar(nvar)
    rms = anchor.fit_scale(train, d.patch_len).view(d.patch_len, -1)
    return anchor, {**nvar.describe(), "offset_scale": _offset_scale_summary(rms, "features")}


def fit_fno_anchor(data: TrajectoryCollection, items: list[int], tok: FieldPatchTokenizer,
                   d: Any, seed: int, progress: bool = False
                   ) -> tuple[FNOAnchor, dict[str, Any]]:
    """The FNO anchor fitted on the training trajectories `items` in the tokenizer's units
    (`token_unit_trajectories`): the `fno` baseline's network and next-step recipe
    (`FNOBaseline`), reading the last min(4, patch_len) frames, for `data.anchor_steps`
    optimizer steps or `data.anchor_seconds` CPU seconds, whichever ends first (the defaults
    are the baseline's); then its offset scale on the same trajectories, and what was done."""
    train = token_unit_trajectories(data, items, tok)
    fno = FNOBaseline(tok.state_shape, n_in=min(FNO_ANCHOR_INPUTS, d.patch_len),
                      steps=d.anchor_steps, time_budget=d.anchor_seconds, seed=seed
                      ).fit(train, progress=progress, desc="fno anchor")
    anchor = FNOAnchor.from_baseline(fno, tok.space_patch, d.patch_len)
    rms = anchor.fit_scale(train).view(d.patch_len, -1)
    return anchor, {**anchor.describe(), "fit": fno.describe(),
                    "offset_scale": _offset_scale_summary(rms, "fields")}


def restored_fno_anchor(folder: Path) -> tuple[FNOAnchor, dict[str, Any]]:
    """The FNO anchor of a resumed run, from its checkpoint `folder`
    (RUN/checkpoints/<step>/: the weights, and the provenance RUN/config.json recorded),
    instead of a new fit of the same budget."""
    from sciformer.config import read_run_config
    from sciformer.runs import CONFIG, WEIGHTS, read_tensors

    try:
        anchor = FNOAnchor.from_tensors(read_tensors(folder / WEIGHTS))
    except ValueError as exc:
        raise CheckpointError(f"{folder / WEIGHTS}: {exc}") from None
    if anchor is None:
        raise CheckpointError(f"{folder / WEIGHTS}: holds no FNO anchor, but the run's "
                              "config says data.anchor=fno")
    config = folder.parents[1] / CONFIG
    extra = read_run_config(config)[1] if config.is_file() else {}
    return anchor, extra.get("anchor") or anchor.describe()
