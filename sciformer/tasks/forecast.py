"""Forecasting future states of simulations from a context window.

The encoder reads ``data.context`` steps; the decoder produces the next ``data.horizon``.

- ``patch`` tokenizer (default): continuous patches (PatchTST / Panda). The decoder is
  autoregressive over patches: its input at position j is patch j-1 (the last context patch
  first), its output the quantiles of patch j, as an increment on the last known state (a
  persistence anchor, so the network learns the change). Trained with the pinball loss.
  Patches are scaled by the TRAINING data's per-channel mean and std
  (`DatasetScaledPatchTokenizer`), not per window as RevIN does: the dynamics of a simulated
  system depend on where on the attractor the state is, which per-window scaling hides (on
  Lorenz-63 it cut the nRMSE over the first Lyapunov time from 0.52 to 0.17, same budget).
- ``bins`` tokenizer: Chronos-style mean scaling and bins; the decoder emits one token per
  (step, feature) after ``<bos>``, trained with cross-entropy; forecasts are sampled paths,
  whose empirical quantiles are reported.

Rollouts beyond the trained horizon feed the median forecast back as new context and
re-encode it, chunk by chunk, so any horizon works. The quantiles of later chunks are
conditional on the fed-back median, so the band does not widen with the accumulated error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import ModelConfig, RunConfig
from sciformer.errors import ConfigError, InputError
from sciformer.io.trajectories import TrajectoryFile
from sciformer.tasks import micro_seed
from sciformer.splits import split_indices
from sciformer.tokenizers.timeseries import (BinTokenizer, PatchTokenizer, ScaleState,
                                             build_tokenizer, pinball_loss)

MAX_STAT_TRAJECTORIES = 256  # training trajectories read for the normalisation statistics
N_SAMPLES = 20  # sampled paths per forecast with the bins tokenizer
VAL_WINDOWS = 256  # fixed validation windows


class DatasetScaledPatchTokenizer(PatchTokenizer):
    """Patch tokenizer whose scale state is the training data's mean and std, not the window's.

    A simulation archive samples one attractor, and its dynamics depend on where on it a state
    lies: instance normalisation (RevIN) would hide that (and, per grid point, distort the
    spatial structure of a field), so every window is scaled by the same training statistics.
    Encode/decode and `ScaleState` are the `PatchTokenizer` contract unchanged.
    """

    def __init__(self, patch_len: int, n_features: int, channels: str = "joint",
                 eps: float = 1e-5, *, loc: list[float], scale: list[float]) -> None:
        super().__init__(patch_len, n_features, channels, eps)
        if len(loc) != n_features or len(scale) != n_features or min(scale) <= 0:
            raise ConfigError(f"patch tokenizer: loc/scale need {n_features} entries, scale > 0")
        self.loc, self.scale = [float(v) for v in loc], [float(v) for v in scale]

    def to_config(self) -> dict:
        """`PatchTokenizer.to_config` plus the fixed statistics."""
        return {**super().to_config(), "loc": self.loc, "scale": self.scale}

    def fit_state(self, context: Tensor) -> ScaleState:
        """The training statistics broadcast to the B windows of `context`."""
        super().fit_state(context)  # validates the window (shape, dtype, finite values)
        b, kw = context.shape[0], {"dtype": context.dtype, "device": context.device}
        loc = torch.tensor(self.loc, **kw).view(1, 1, -1).expand(b, 1, -1)  # (B, 1, F)
        scale = torch.tensor(self.scale, **kw).view(1, 1, -1).expand(b, 1, -1)  # (B, 1, F)
        return ScaleState(loc, scale, self.n_features, self.channels)


def data_statistics(data: TrajectoryCollection,
                    items: list[int]) -> tuple[list[float], list[float]]:
    """Mean and std of the training states per channel (1-D fields: per field, pooled over x),
    repeated to the flattened state's F features.

    Read from at most MAX_STAT_TRAJECTORIES trajectories evenly spread over `items`; the
    per-trajectory moments are merged with Chan et al.'s (1979) pairwise update, which is
    stable for large offsets. A constant channel gets scale 1.
    """
    shape = data.meta.state_shape
    pick = np.unique(np.linspace(0, len(items) - 1, MAX_STAT_TRAJECTORIES).round().astype(int))
    n, mean, m2 = 0, np.zeros(shape[-1]), np.zeros(shape[-1])
    for i in pick:
        it = data.items[items[i]]
        x = data.window(it, 0, data.n_time(it)).astype(np.float64).reshape(-1, shape[-1])
        k, mu = len(x), x.mean(axis=0)
        delta = mu - mean
        m2 += ((x - mu) ** 2).sum(axis=0) + delta ** 2 * n * k / (n + k)
        n, mean = n + k, mean + delta * k / (n + k)
    std = np.sqrt(m2 / n)
    std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)
    reps = math.prod(shape) // shape[-1]
    return np.tile(mean, reps).tolist(), np.tile(std, reps).tolist()  # (F,) in state order


def make_tokenizer(cfg: RunConfig, n_features: int,
                   stats: tuple[list[float], list[float]] | None = None
                   ) -> PatchTokenizer | BinTokenizer:
    """The tokenizer of `cfg.data`; with `stats` (mean, std per feature), patches are scaled
    by those training statistics (`DatasetScaledPatchTokenizer`) instead of per window."""
    d = cfg.data
    if d.tokenizer == "patch":
        if stats is not None:
            return DatasetScaledPatchTokenizer(d.patch_len, n_features, d.channels,
                                               loc=stats[0], scale=stats[1])
        return build_tokenizer("patch", patch_len=d.patch_len, n_features=n_features,
                               channels=d.channels)
    return build_tokenizer("bins", n_bins=d.n_bins, limit=d.bin_limit, n_features=n_features,
                           channels=d.channels)


def tokenizer_from_state(extra: dict[str, Any]) -> PatchTokenizer | BinTokenizer:
    """Rebuild the tokenizer a run was trained with from its config.json task state."""
    kwargs = {k: v for k, v in extra["tokenizer"].items() if k != "name"}
    if extra["tokenizer"]["name"] == "patch" and "loc" in kwargs:
        return DatasetScaledPatchTokenizer(**kwargs)
    return build_tokenizer(extra["tokenizer"]["name"], **kwargs)


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

    def __init__(self, cfg: RunConfig, paths: list[Path]) -> None:
        self.cfg, self.paths = cfg, paths
        self.data = TrajectoryCollection(paths)
        d = cfg.data
        self.window_len = d.context + d.horizon
        if d.tokenizer == "patch" and (d.context % d.patch_len or d.horizon % d.patch_len):
            raise InputError(f"data.context={d.context} and data.horizon={d.horizon} must be "
                             f"multiples of data.patch_len={d.patch_len}")
        for f in self.data.files:
            f.require_length(self.window_len, f"context {d.context} + horizon {d.horizon}")
        n = len(self.data.items)
        if n < 2 and d.val_fraction > 0:
            raise InputError(f"{paths[0]}: a held-out split by whole trajectory needs at least "
                             "2 trajectories (or set data.val_fraction=0)")
        train, val = split_indices(n, d.val_fraction, d.val_max, cfg.train.seed)
        self.train_idx, self.val_idx = train, val
        self.n_features = self.data.meta.n_features
        stats = data_statistics(self.data, train) if d.tokenizer == "patch" else None
        self.tokenizer = make_tokenizer(cfg, self.n_features, stats)
        self.starts = [np.arange(0, self.data.n_time(self.data.items[i]) - self.window_len + 1,
                                 d.stride) for i in train]
        self.counts = np.array([len(s) for s in self.starts])

    def model_config(self) -> ModelConfig:
        m, tok = self.cfg.model, self.tokenizer
        if isinstance(tok, PatchTokenizer):
            m.vocab_size, m.input_dim = 0, tok.token_dim
            m.output_dim = tok.token_dim * len(self.cfg.data.quantiles)
        else:
            m.vocab_size, m.input_dim, m.output_dim = tok.vocab_size, 0, 0
        m.n_decoder_layers = max(m.n_decoder_layers, 1)
        return m

    def state(self) -> dict[str, Any]:
        meta = self.data.meta
        return {"task": self.name, "train_files": [str(p) for p in self.paths],
                "state_shape": list(meta.state_shape), "n_features": self.n_features,
                "dt": meta.dt, "lyapunov_time": meta.lyapunov_time, "system": meta.system,
                "field_names": meta.field_names, "tokenizer": self.tokenizer.to_config()}

    def split(self) -> dict[str, Any]:
        items = self.data.items
        return {"unit": "trajectory", "files": [str(p) for p in self.paths],
                "train": self.train_idx, "heldout": self.val_idx,
                "train_origin": [list(items[i]) for i in self.train_idx],
                "heldout_origin": [list(items[i]) for i in self.val_idx]}

    def batch(self, index: int, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """`batch_size` windows drawn uniformly over all training windows (seeded by index)."""
        rng = np.random.default_rng(micro_seed(self.cfg.train.seed, index * world + rank, 5))
        flat = rng.integers(0, self.counts.sum(), size=self.cfg.train.batch_size)
        which = np.searchsorted(np.cumsum(self.counts), flat, side="right")
        offset = flat - np.concatenate(([0], np.cumsum(self.counts)))[which]
        wins = [self.data.window(self.data.items[self.train_idx[w]], int(self.starts[w][o]),
                                 self.window_len) for w, o in zip(which, offset)]
        return {"window": torch.from_numpy(np.stack(wins))}  # (B, C+H, F)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x = batch["window"]
        c = self.cfg.data.context
        loss = teacher_forced_loss(model, self.tokenizer, x[:, :c], x[:, c:],
                                   self.cfg.data.quantiles)
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
        if not hasattr(self, "_val"):
            self._val = self.validation_windows()
        device = next(model.parameters()).device
        c, total, n = self.cfg.data.context, 0.0, 0
        for chunk in self._val.split(self.cfg.train.batch_size):
            chunk = chunk.to(device)
            loss = teacher_forced_loss(model, self.tokenizer, chunk[:, :c], chunk[:, c:],
                                       self.cfg.data.quantiles)
            total, n = total + loss.item() * len(chunk), n + len(chunk)
        return {"val_loss": total / n}


# ---- model I/O for both tokenizers ---------------------------------------------------------
def _anchor(dec_in: Tensor, tok: PatchTokenizer) -> Tensor:
    """Last step of each decoder-input patch, repeated over the patch: (B', N, token_dim)."""
    b, n, d = dec_in.shape
    width = d // tok.patch_len  # features per step inside a token
    last = dec_in[..., -width:]  # (B', N, width)
    return last.repeat(1, 1, tok.patch_len)


def patch_quantiles(model: nn.Module, tok: PatchTokenizer, h: Tensor, dec_in: Tensor,
                    n_q: int) -> Tensor:
    """Decoder states -> quantiles (B', N, token_dim, n_q) anchored on the last known state."""
    out = model.values(h).unflatten(-1, (tok.token_dim, n_q))  # (B', N, token_dim, n_q)
    return out + _anchor(dec_in, tok)[..., None]


def teacher_forced_loss(model: nn.Module, tok, ctx: Tensor, fut: Tensor,
                        levels: list[float]) -> Tensor:
    """Training loss for context (B, C, F) and future (B, H, F) windows."""
    state = tok.fit_state(ctx)
    if isinstance(tok, PatchTokenizer):
        src, tgt = tok.encode(ctx, state), tok.encode(fut, state)  # (B', N, token_dim)
        dec_in = torch.cat([src[:, -1:], tgt[:, :-1]], dim=1)
        q = patch_quantiles(model, tok, model(src, dec_in), dec_in, len(levels))
        return pinball_loss(q.float(), tgt.float(), torch.tensor(levels))
    src, tgt = tok.encode(ctx, state), tok.encode(fut, state)  # (B', T*F) ids
    bos = torch.full_like(tgt[:, :1], tok.bos_id)
    logits = model.token_logits(model(src, torch.cat([bos, tgt[:, :-1]], dim=1)))
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())


@torch.no_grad()
def forecast(model: nn.Module, tok, context: Tensor, horizon: int, chunk: int,
             levels: list[float], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Median (B, H, F) and quantiles (n_q, B, H, F) for `horizon` steps after `context`.

    Decodes `chunk` steps (the trained horizon) at a time with the key/value cache, then
    appends the median to the context and continues (closed-loop rollout).
    """
    c = context.shape[1]
    ctx, medians, quants = context, [], []
    gen = torch.Generator(device=context.device).manual_seed(seed)
    done = 0
    while done < horizon:
        steps = min(chunk, horizon - done)
        if isinstance(tok, PatchTokenizer):
            q = _decode_patches(model, tok, ctx, steps, levels)
        else:
            q = _sample_bins(model, tok, ctx, steps, levels, gen)
        med = q[levels.index(0.5)]
        medians.append(med)
        quants.append(q)
        ctx = torch.cat([ctx, med], dim=1)[:, -c:]
        done += steps
    return torch.cat(medians, dim=1), torch.cat(quants, dim=2)


def _decode_patches(model, tok: PatchTokenizer, ctx: Tensor, steps: int,
                    levels: list[float]) -> Tensor:
    src, state = tok.encode_context(ctx)
    memory = model.encode(src)
    cache, dec_in, outs = model.new_cache(), src[:, -1:], []
    mid = levels.index(0.5)
    for _ in range(-(-steps // tok.patch_len)):
        h = model.decode(dec_in, memory, cache=cache)  # (B', 1, D): only the new position
        q = patch_quantiles(model, tok, h, dec_in, len(levels))  # (B', 1, token_dim, n_q)
        q = q.sort(dim=-1).values  # quantiles must not cross
        outs.append(q)
        dec_in = q[..., mid]
    q = torch.cat(outs, dim=1)  # (B', N, token_dim, n_q)
    paths = [tok.decode(q[..., i], state) for i in range(len(levels))]  # each (B, N*P, F)
    return torch.stack(paths)[:, :, :steps]  # (n_q, B, steps, F)


def _sample_bins(model, tok: BinTokenizer, ctx: Tensor, steps: int, levels: list[float],
                 gen: torch.Generator) -> Tensor:
    src, state = tok.encode_context(ctx)
    b = src.shape[0]
    src = src.repeat_interleave(N_SAMPLES, dim=0)  # (B' * S, T*F)
    memory = model.encode(src)
    cache = model.new_cache()
    token = torch.full((src.shape[0], 1), tok.bos_id, dtype=torch.long, device=src.device)
    per_step = tok.n_features if tok.channels == "joint" else 1
    ids = []
    for _ in range(steps * per_step):
        logits = model.token_logits(model.decode(token, memory, cache=cache))[:, -1].float()
        logits[:, : tok.bos_id + 1] = float("-inf")  # never emit <pad>/<bos>
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids.append(token)
    ids = torch.cat(ids, dim=1).view(b, N_SAMPLES, -1)  # (B', S, steps*F)
    samples = torch.stack([tok.decode(ids[:, s], state)
                           for s in range(N_SAMPLES)])  # (S, B, steps, F)
    lv = torch.tensor(levels, dtype=samples.dtype, device=samples.device)
    return torch.quantile(samples, lv, dim=0)  # (n_q, B, steps, F)


# ---- predict: context file -> forecast file --------------------------------------------------
def open_contexts(path: Path, state_shape: list[int], min_len: int) -> TrajectoryFile:
    """The input of `predict`, checked against the model's state shape and minimum context."""
    f = TrajectoryFile(path)
    if list(f.meta.state_shape) != list(state_shape):
        raise InputError(f"{path}: state shape {tuple(f.meta.state_shape)} does not match the "
                         f"model's {tuple(state_shape)} (channel count differs from the "
                         "checkpoint)")
    f.require_length(min_len, f"the minimum context of {min_len} steps")
    return f


def predict_forecast(model: nn.Module, cfg: RunConfig, extra: dict[str, Any], input_path: Path,
                     out: Path, horizon: int | None, device: torch.device,
                     progress: bool = False) -> Path:
    """Forecast `horizon` steps after each trajectory of `input_path`; write trajectory HDF5.

    Streams: reads the last `data.context` steps of `train.batch_size` trajectories at a time,
    forecasts them and appends them to the output file, so memory does not grow with the number
    of trajectories. The output appears only when complete.
    """
    from sciformer.io.trajectory_writer import TrajectoryWriter
    from sciformer.progress import progress_bar

    d, n_features = cfg.data, extra["n_features"]
    tok = tokenizer_from_state(extra)
    f = open_contexts(input_path, extra["state_shape"], tok.patch_len
                      if isinstance(tok, PatchTokenizer) else 1)
    m, horizon = f.meta, horizon or d.horizon
    use = min(d.context, m.n_time)
    with f, TrajectoryWriter(out, (m.n_traj, horizon, *m.state_shape), dt=m.dt,
                             system=m.system, lyapunov_time=m.lyapunov_time,
                             field_names=m.field_names, quantile_levels=d.quantiles,
                             attrs={"source": str(input_path), "forecast_of": "steps after "
                                    "the last step of each input trajectory"}) as w, \
            progress_bar(m.n_traj, "predict", "traj", progress) as bar:
        for first in range(0, m.n_traj, cfg.train.batch_size):
            stop = min(first + cfg.train.batch_size, m.n_traj)
            ctx = f.windows(first, stop, m.n_time - use, use).reshape(stop - first, use,
                                                                      n_features)
            med, q = forecast(model, tok, torch.from_numpy(ctx).to(device), horizon,
                              d.horizon, d.quantiles)
            shape = (stop - first, horizon, *m.state_shape)
            w.write(med.cpu().numpy().reshape(shape),
                    q.cpu().numpy().reshape((len(d.quantiles), *shape)))
            bar.update(stop - first)
    return out
