"""Forecasting task (training only): windows of trajectories, the loss, validation.

The encoder reads ``data.context`` steps; the decoder produces the next ``data.horizon``.

- ``patch`` tokenizer (default): continuous patches (PatchTST / Panda). The decoder is
  autoregressive over patches: its input at position j is patch j-1 (the last context patch
  first), its output the quantiles of patch j, as offsets on an anchor (`data.anchor`): the
  last known state repeated (persistence, so the network learns the change) or, for a hybrid
  model, the forecast of patch j by an NVAR (or, for 2-D fields, an FNO) fitted on the
  training split before training (`sciformer.tasks.anchors`; the network learns the
  correction). Trained with the pinball loss. Patches are scaled by the TRAINING data's
  per-channel mean and std (`DatasetScaledPatchTokenizer`), not per window as RevIN does: the
  dynamics of a simulated
  system depend on where on the attractor the state is, which per-window scaling hides (on
  Lorenz-63 it cut the nRMSE over the first Lyapunov time from 0.52 to 0.17, same budget).
- ``bins`` tokenizer: Chronos-style mean scaling and bins; the decoder emits one token per
  (step, feature) after ``<bos>``, trained with cross-entropy.

Inference (sample paths, rollouts) lives in `sciformer.pipelines.forecast`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import RunConfig, explicit_keys
from sciformer.config_tasks import for_task
from sciformer.errors import ConfigError, InputError
from sciformer.fingerprints import RecordedPrints, duplicates, trajectory_fingerprints
from sciformer.io.trajectories import TrajectoryFile
from sciformer.pipelines.forecast import (
    analog_tokens,
    block_tokens,
    offset_scale,
    patch_quantiles,
    sample_patch_tokens,
    window_channels,
)
from sciformer.runs import ForecastState
from sciformer.splits import split_indices
from sciformer.tasks import micro_seed, spread_subset
from sciformer.tasks.anchors import resolve_anchor
from sciformer.tokenizers.fields import FieldPatchTokenizer
from sciformer.tokenizers.timeseries import (
    BinTokenizer,
    DatasetScaledPatchTokenizer,
    PatchTokenizer,
    build_tokenizer,
    pinball_loss,
)

VAL_WINDOWS = 256  # fixed validation windows
#: Validation trajectories a forecasting run holds out at least (at most a quarter of its
#: trajectories), whatever `data.val_fraction` gives: they choose the first-patch correction
#: and fit the spread recalibration, and one trajectory of a chaotic system is not a sample of
#: its attractor (defaults on 12 Lorenz-63 trajectories held out 1: validation coverage
#: 0.82-0.85, held-out 0.90-0.94 at 129 of 220 leads).
VALIDATION_TRAJECTORIES = 3
#: Tokenizers of continuous patches: they can train on the model's own rollouts (pushforward,
#: sampled decoder inputs); a field's time patch is S tokens, rolled out block by block.
PATCH_KINDS = ("patch", "field_patch")


def data_statistics(data: TrajectoryCollection,
                    items: list[int]) -> tuple[list[float], list[float]]:
    """Mean and std of the training states per channel (1-D fields: per field, pooled over x),
    repeated to the flattened state's F features.

    Read from at most `MAX_STAT_TRAJECTORIES` trajectories evenly spread over `items`; the
    per-trajectory moments are merged with Chan et al.'s (1979) pairwise update, which is
    stable for large offsets. A constant channel gets scale 1.
    """
    shape = data.meta.state_shape
    n, mean, m2 = 0, np.zeros(shape[-1]), np.zeros(shape[-1])
    for i in spread_subset(items):
        it = data.items[i]
        x = data.window(it, 0, data.n_time(it)).astype(np.float64).reshape(-1, shape[-1])
        k, mu = len(x), x.mean(axis=0)
        delta = mu - mean
        m2 += ((x - mu) ** 2).sum(axis=0) + delta ** 2 * n * k / (n + k)
        n, mean = n + k, mean + delta * k / (n + k)
    std = np.sqrt(m2 / n)
    std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)
    reps = math.prod(shape) // shape[-1]
    return np.tile(mean, reps).tolist(), np.tile(std, reps).tolist()  # (F,) in state order


def tokenizer_kind(cfg: RunConfig, state_shape: tuple[int, ...]) -> str:
    """`data.tokenizer`, except that a state with 2+ spatial dims gets space-time patches
    (`field_patch`) unless the user set `data.tokenizer`: a whole-state token of a 64 x 64
    field would be patch_len * 4096 values wide."""
    d = cfg.data
    if (d.tokenizer == "patch" and len(state_shape) >= 3
            and "data.tokenizer" not in explicit_keys(cfg)):
        return "field_patch"
    return d.tokenizer


def make_tokenizer(cfg: RunConfig, n_features: int,
                   stats: tuple[list[float], list[float]] | None = None,
                   state_shape: tuple[int, ...] | None = None
                   ) -> PatchTokenizer | BinTokenizer:
    """The tokenizer of `cfg.data`; with `stats` (mean, std per feature), patches are scaled
    by those training statistics (`DatasetScaledPatchTokenizer`) instead of per window.
    `field_patch` needs `state_shape` and `stats` (it keeps one mean and std per field)."""
    d = cfg.data
    if d.tokenizer == "field_patch":
        if stats is None or state_shape is None or len(state_shape) < 3:
            raise InputError(f"data.tokenizer=field_patch needs a field state with 2+ spatial "
                             f"dims, got state shape {state_shape}")
        n_fields = state_shape[-1]
        return FieldPatchTokenizer(d.patch_len, state_shape, d.space_patch,
                                   loc=stats[0][:n_fields], scale=stats[1][:n_fields])
    if d.tokenizer == "patch" and d.scaling == "instance" and d.channels == "independent":
        from sciformer.tokenizers.agnostic import ChannelAgnosticPatchTokenizer

        return ChannelAgnosticPatchTokenizer(d.patch_len, n_features)
    if d.tokenizer == "patch":
        if stats is not None:
            return DatasetScaledPatchTokenizer(d.patch_len, n_features, d.channels,
                                               loc=stats[0], scale=stats[1])
        return build_tokenizer("patch", patch_len=d.patch_len, n_features=n_features,
                               channels=d.channels)
    return build_tokenizer("bins", n_bins=d.n_bins, limit=d.bin_limit, n_features=n_features,
                           channels=d.channels)


class TrajectoryCollection:
    """Several trajectory files with the same state shape, addressed as (file, trajectory)."""

    def __init__(self, paths: list[Path]) -> None:
        self.files = [TrajectoryFile(p) for p in paths]
        shapes = {f.meta.state_shape for f in self.files}
        if len(shapes) > 1:
            raise InputError(f"{paths[1]}: state shape differs from {paths[0]} ({sorted(shapes)})")
        self.meta = self.files[0].meta
        self.items = [(i, t) for i, f in enumerate(self.files) for t in range(f.meta.n_traj)]

    def window(self, item: tuple[int, int], start: int, length: int) -> np.ndarray:
        f, t = item
        return self.files[f].window(t, start, length).reshape(length, -1)  # (L, F)

    def n_time(self, item: tuple[int, int]) -> int:
        return self.files[item[0]].meta.n_time


class ForecastTask:
    """Pretraining task for trajectory HDF5 files; see the module docstring."""

    name = "forecast"

    def __init__(self, cfg: RunConfig, paths: list[Path],
                 restore_from: Path | None = None, progress: bool = False) -> None:
        self.cfg, self.paths = cfg, paths
        self.data = TrajectoryCollection(paths)
        d = cfg.data
        kind = tokenizer_kind(cfg, self.data.meta.state_shape)
        self.pushforward = d.pushforward if kind in PATCH_KINDS else 0
        self.window_len = d.context + (1 + self.pushforward) * d.horizon
        if kind != "bins" and (d.context % d.patch_len or d.horizon % d.patch_len):
            raise InputError(f"data.context={d.context} and data.horizon={d.horizon} must be "
                             f"multiples of data.patch_len={d.patch_len}")
        need = (f"context {d.context} + horizon {d.horizon}" if not self.pushforward else
                f"context {d.context} + {1 + self.pushforward} x horizon {d.horizon} "
                "(data.pushforward)")
        for f in self.data.files:
            f.require_length(self.window_len, need)
        n = len(self.data.items)
        self.prints = [fp for p in paths for fp in trajectory_fingerprints(p)]  # item order
        for first, repeat in duplicates(self.prints)[:1]:
            raise InputError(f"trajectory {self.prints[repeat].label} repeats "
                             f"{self.prints[first].label}: a copy could land on both sides of "
                             "the held-out split; give each trajectory once")
        if n < 2 and d.val_fraction > 0:
            raise InputError(f"{paths[0]}: a held-out split by whole trajectory needs at least "
                             "2 trajectories (or set data.val_fraction=0)")
        train, val = split_indices(n, d.val_fraction, d.val_max, cfg.train.seed,
                                   at_least=min(VALIDATION_TRAJECTORIES, n // 4))
        self.train_idx, self.val_idx = train, val
        self.n_features = self.data.meta.n_features
        agnostic = kind == "patch" and d.scaling == "instance"
        stats = data_statistics(self.data, train) if kind != "bins" and not agnostic else None
        if kind != d.tokenizer:  # chosen for a 2+-D field; recorded in the run's config
            cfg = copy.deepcopy(cfg)
            cfg.data.tokenizer = kind
        self.tokenizer = tok = make_tokenizer(cfg, self.n_features, stats,
                                              self.data.meta.state_shape)
        anchor, self.anchor, self.anchor_info = resolve_anchor(
            cfg, tok, self.data, train, paths[0], restore_from, progress)
        if anchor != d.anchor:  # auto resolved; recorded in the run's config
            cfg = copy.deepcopy(cfg)
            cfg.data.anchor = anchor
        if isinstance(tok, PatchTokenizer):
            widths = dict(vocab_size=0, input_dim=tok.token_dim,
                          output_dim=tok.token_dim * len(d.quantiles),
                          space_tokens=block_tokens(tok), anchor_input=anchor == "analog")
        else:
            widths = dict(vocab_size=tok.vocab_size, input_dim=0, output_dim=0)
        self.cfg = for_task(cfg, self.name, **widths)
        self.starts = [np.arange(0, self.data.n_time(self.data.items[i]) - self.window_len + 1,
                                 d.stride) for i in train]
        self.counts = np.array([len(s) for s in self.starts])

    def state(self) -> ForecastState:
        meta = self.data.meta
        return ForecastState(train_files=[str(p) for p in self.paths],
                             state_shape=list(meta.state_shape), n_features=self.n_features,
                             dt=meta.dt, lyapunov_time=meta.lyapunov_time, system=meta.system,
                             field_names=meta.field_names, tokenizer=self.tokenizer.to_config(),
                             channel_agnostic=self.tokenizer.to_config().get(
                                 "channel_agnostic", False),
                             anchor=self.anchor_info if self.anchor is not None else None)

    def init_model(self, model: nn.Module) -> None:
        """Give the freshly built model the NVAR anchor fitted on the training split (saved
        with its weights), if this run has one."""
        if self.anchor is not None:
            model.anchor = self.anchor

    def split(self) -> dict[str, Any]:
        items = self.data.items
        return {"unit": "trajectory", "files": [str(p) for p in self.paths],
                "train": self.train_idx, "heldout": self.val_idx,
                "fingerprints": RecordedPrints.from_units(self.prints, self.train_idx,
                                                          self.val_idx).to_split(),
                "train_origin": [list(items[i]) for i in self.train_idx],
                "heldout_origin": [list(items[i]) for i in self.val_idx]}

    def batch(self, index: int, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """`batch_size` windows drawn uniformly over all training windows (seeded by index),
        the number of chunks to push forward and the seed of the loss's own draws."""
        rng = np.random.default_rng(micro_seed(self.cfg.train.seed, index * world + rank, 5))
        flat = rng.integers(0, self.counts.sum(), size=self.cfg.train.batch_size)
        which = np.searchsorted(np.cumsum(self.counts), flat, side="right")
        offset = flat - np.concatenate(([0], np.cumsum(self.counts)))[which]
        wins = [self.data.window(self.data.items[self.train_idx[w]], int(self.starts[w][o]),
                                 self.window_len) for w, o in zip(which, offset)]
        plan = rollout_plan(self.cfg, index, rng)
        return {"window": torch.from_numpy(np.stack(wins)),  # (B, C + (1 + K) H, F)
                "plan": torch.tensor(plan, dtype=torch.int64)}  # (pushed, sampled, seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, plan = batch["window"], batch.get("plan")
        pushed, sampled, seed = (int(v) for v in plan) if plan is not None else (0, 0, 0)
        loss = rollout_loss(model, self.tokenizer, self.cfg.data, x, pushed, bool(sampled),
                            seed)
        return loss, {"loss": loss.detach()}

    def validation_windows(self) -> Tensor:
        """Fixed windows spread evenly over the held-out trajectories."""
        items = [self.data.items[i] for i in self.val_idx]
        per = max(1, VAL_WINDOWS // max(1, len(items)))
        wins = []
        for it in items:
            last = self.data.n_time(it) - self.window_len
            for s in np.unique(np.linspace(0, last, per).astype(int)):
                wins.append(self.data.window(it, int(s), self.window_len))
        return torch.from_numpy(np.stack(wins))

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss on the fixed held-out windows: `val_loss` teacher-forced on the first
        chunk; with pushforward or sampled inputs also `val_rollout_loss`, the training
        objective at its hardest (all K chunks pushed forward, sampled inputs, fixed seeds)."""
        if not hasattr(self, "_val"):
            self._val = self.validation_windows()
        device = next(model.parameters()).device
        d = self.cfg.data
        kinds = {"val_loss": (0, False)}
        if self.pushforward or d.sampled_inputs > 0:
            kinds["val_rollout_loss"] = (self.pushforward, d.sampled_inputs > 0)
        out = {}
        for name, (pushed, sampled) in kinds.items():
            total, n = 0.0, 0
            for i, chunk in enumerate(self._val.split(self.cfg.train.batch_size)):
                loss = rollout_loss(model, self.tokenizer, d, chunk.to(device), pushed,
                                    sampled, seed=i, noise=False)
                total, n = total + loss.item() * len(chunk), n + len(chunk)
            out[name] = total / n
        return out


# ---- the training loss ------------------------------------------------------------------------
def rollout_plan(cfg: RunConfig, index: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(chunks pushed forward, sampled decoder inputs 0/1, seed of the draws) of batch `index`.

    Pushforward (Brandstetter et al. 2022): k chunks, uniform in 0..K_now, where K_now grows
    from 0 to `data.pushforward` over the first `data.pushforward_warmup` fraction of the
    steps (a curriculum: early on the model's own rollouts are noise). Sampled inputs are used
    with probability `data.sampled_inputs` (scheduled sampling, Bengio et al. 2015), from
    step `data.sampled_inputs_from * max_steps` on (accurate dynamics first, then spread).
    """
    d = cfg.data
    ramp = d.pushforward_warmup * cfg.train.max_steps
    top = d.pushforward if ramp <= 0 else min(d.pushforward, int(d.pushforward * index / ramp))
    pushed = int(rng.integers(0, top + 1)) if d.tokenizer in PATCH_KINDS else 0
    late = index >= d.sampled_inputs_from * cfg.train.max_steps
    sampled = int(rng.random() < d.sampled_inputs and late and d.tokenizer in PATCH_KINDS)
    return pushed, sampled, int(rng.integers(0, 2**62))


def rollout_loss(model: nn.Module, tok, d: Any, x: Tensor, pushed: int, sampled: bool,
                 seed: int, noise: bool = True) -> Tensor:
    """Loss on windows x (B, C + (1 + K) H, F) after pushing `pushed` chunks forward.

    The context is rolled out `pushed` chunks with the model's own sampled paths, without
    gradient (the pushforward trick: the model learns to forecast from the states its own
    rollouts reach, and only the last chunk is differentiated); the target is the true chunk
    that follows. With `sampled`, the decoder's inputs are the model's own draws too, so the
    predicted quantiles are trained to cover the error its feedback accumulates. With `noise`,
    Gaussian noise of `data.input_noise` training stds is added to the inputs (context and
    decoder inputs, never the targets; Sanchez-Gonzalez et al. 2020).
    """
    c, h = d.context, d.horizon
    if not isinstance(tok, PatchTokenizer):
        return teacher_forced_loss(model, tok, x[:, :c], x[:, c:c + h], d.quantiles)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    ctx = x[:, :c]
    with torch.no_grad():
        for k in range(pushed):  # the model's own closed-loop chunks, sampled
            src, state = tok.encode_context(ctx)
            n = h // tok.patch_len
            drawn = sample_patch_tokens(model, tok, src, n, d.quantiles, gen, d.draws,
                                        channels=window_channels(state),
                                        anchor=analog_tokens(model, tok, ctx, state, n))
            ctx = torch.cat([ctx, tok.decode(drawn, state)], dim=1)[:, -c:]  # (B, C, F)
    fut = x[:, c + pushed * h: c + (pushed + 1) * h]  # (B, H, F) the truth after the rollout
    sigma = d.input_noise if noise else 0.0
    return teacher_forced_loss(model, tok, ctx, fut, d.quantiles, sampled=sampled,
                               noise=sigma, gen=gen, draws=d.draws)


def teacher_forced_loss(model: nn.Module, tok, ctx: Tensor, fut: Tensor, levels: list[float],
                        sampled: bool = False, noise: float = 0.0,
                        gen: torch.Generator | None = None, draws: str = "element",
                        channels: Tensor | None = None,
                        anchor_future: Tensor | None = None) -> Tensor:
    """Training loss for context (B, C, F) and future (B, H, F) windows.

    `channels` (G,) groups the B windows into G windows of that many channels each, for a
    model with channel attention fed one-channel rows (zoo batches of systems of different
    dimensions); by default each window's F channels are one group (`window_channels`).
    `anchor_future` (B, H, F): for a run with the analogue anchor, that anchor's forecast
    when `ctx` holds only some of each window's channels (zoo batches compute it on whole
    states); by default it is computed from `ctx`.

    Patch tokenizer: pinball loss of the quantiles of each future patch given the context and
    the previous patches, fed as the truth (teacher forcing) or, with `sampled`, as the
    model's own autoregressive draws (no gradient through them); `noise` (in training stds)
    perturbs the inputs only.
    """
    state = tok.fit_state(ctx)
    groups = window_channels(state) if channels is None else channels
    if isinstance(tok, PatchTokenizer):
        src, tgt = tok.encode(ctx, state), tok.encode(fut, state)  # (B', N, token_dim)
        k = block_tokens(tok)  # decoder input = the targets shifted by one time patch
        anchor = (analog_tokens(model, tok, ctx, state, tgt.shape[1]) if anchor_future is None
                  else tok.encode(anchor_future, state))
        prev = tgt[:, :-k]
        if sampled:
            with torch.no_grad():
                prev = sample_patch_tokens(model, tok, src, tgt.shape[1] // k - 1, levels, gen,
                                           draws, channels=groups, anchor=anchor)
        dec_in = torch.cat([src[:, -k:], prev], dim=1)  # (B', N, token_dim)
        if noise > 0:
            src = src + noise * _normal(src, gen)
            dec_in = dec_in + noise * _normal(dec_in, gen)
        q = patch_quantiles(model, tok, model(src, dec_in, channels=groups, anchor=anchor),
                            dec_in, len(levels), anchor).float()
        scale = offset_scale(model)  # the pinball loss is homogeneous: loss in offset units
        if scale is not None:
            return pinball_loss(q / scale[:, None], tgt.float() / scale, torch.tensor(levels))
        return pinball_loss(q, tgt.float(), torch.tensor(levels))
    src, tgt = tok.encode(ctx, state), tok.encode(fut, state)  # (B', T*F) ids
    bos = torch.full_like(tgt[:, :1], tok.bos_id)
    logits = model.token_logits(model(src, torch.cat([bos, tgt[:, :-1]], dim=1),
                                      channels=groups))
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())


def _normal(like: Tensor, gen: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like `like`, from `gen`."""
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
