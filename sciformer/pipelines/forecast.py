"""`Forecaster`: probabilistic forecasts of future states from a forecasting run.

    >>> fc = sciformer.load("runs/lorenz96-forecast/run")
    >>> ds = fc.forecast(context, horizon=200)        # numpy (n_traj, n_time, ...) or xarray
    >>> ds["median"], ds["quantiles"].sel(quantile=0.9), ds["samples"]

**Sample paths.** A forecast is a set of `samples` paths per context, each rolled out by
feeding back its own sampled values, so uncertainty accumulates with lead time (training
feeds the true previous patch; feeding back one's own draws is what makes a multi-step path a
draw from the model's joint forecast). The median and the quantiles are empirical quantiles
of the paths.

- ``field_patch`` tokenizer (2+-D fields): as ``patch``, but one time patch is S spatial
  tokens, predicted together (the decoder is block-causal) and decoded block by block with the
  cache; draws follow `data.draws` as below (with ``patch``, one uniform per path and time
  patch is shared by its S tokens, so a sampled frame has no seams at patch borders).
- ``patch`` tokenizer: the decoder predicts quantiles of the next patch (pinball loss), as
  offsets on an anchor: the last known state (persistence) or, with the NVAR anchor
  (`data.anchor`), a fitted NVAR's closed-loop forecast of the patch. A patch
  is drawn by inverse-CDF sampling of that quantile function, interpolated linearly in normal
  scores z = Phi^-1(level) between the predicted levels and extended linearly beyond the
  extreme ones (so a Gaussian predictive law is reproduced exactly, tails included).
  `data.draws` sets the correlation of the draws: ``element`` (default) draws each value of
  the patch independently; ``patch`` draws one uniform per path and patch (per channel in
  `independent` mode), which keeps a path smooth inside the patch but moves all variables to
  the same quantile together (on held-out Lorenz-96 its 80% band covered 0.53-0.77 of the
  truth over two Lyapunov times against 0.68-0.77 for ``element``; see
  docs/forecast-training.md).
- ``bins`` tokenizer: each path samples its tokens from the predicted categorical law.

Rollouts longer than the trained horizon re-encode each path's own latest context chunk by
chunk, so any horizon works. Sampling is seeded: the same call gives the same paths.

**Recalibration.** When the run directory holds a ``calibration.json`` (written at the end of
pretraining, or by `sciformer calibrate`), `sample` and `forecast` rescale each path's
deviation from the ensemble median by a per-lead factor fitted on the run's validation
trajectories (`sciformer.pipelines.recalibrate`); ``calibrated=False`` gives the paths as drawn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sciformer.config import RunConfig
from sciformer.errors import InputError
from sciformer.model.analog import AnalogAnchor
from sciformer.pipelines.first_patch import FirstPatchCorrection
from sciformer.pipelines.recalibrate import SpreadCalibration
from sciformer.runs import ForecastState
from sciformer.tokenizers.timeseries import (
    BinTokenizer,
    PatchTokenizer,
    ScaleState,
    tokenizer_from_config,
)

SAMPLE_MEMORY_BYTES = 2**31  # refuse forecasts whose sample paths would exceed this in memory


# ---- model I/O shared with training ----------------------------------------------------------
def block_tokens(tok: PatchTokenizer | BinTokenizer) -> int:
    """Tokens per time patch: S spatial patches for field patch tokens, else 1."""
    return int(getattr(tok, "space_tokens", 1))


def window_channels(state: ScaleState) -> int:
    """Token rows per window: its F channels with independent channels (rows b * F + f), else
    1; what a model with channel attention is told (`SciFormer.encode`'s `channels`)."""
    return state.n_features if state.channels == "independent" else 1


def _anchor(model: nn.Module, dec_in: Tensor, tok: PatchTokenizer) -> Tensor:
    """What the patch after each decoder-input patch is predicted as an offset on,
    (B', N, token_dim): the model's NVAR anchor's closed-loop forecast of it (a hybrid run,
    `data.anchor: nvar`), else its last step repeated over the patch (persistence)."""
    anchor = getattr(model, "anchor", None)
    if anchor is not None:
        return anchor(dec_in, tok.patch_len)
    width = dec_in.shape[-1] // tok.patch_len  # features per step inside a token
    return dec_in[..., -width:].repeat(1, 1, tok.patch_len)


def analog_tokens(model: nn.Module, tok: PatchTokenizer, ctx: Tensor, state: ScaleState,
                  n_patches: int, copies: int = 1) -> Tensor | None:
    """The analogue anchor of `n_patches` time patches after contexts `ctx` (R, C, F) as
    tokens (R', n_patches, token_dim) in the context's token units (`state`), for a run with
    `data.anchor: analog` (`sciformer.model.analog`); None for any other anchor. With
    `copies` > 1 the rows are that many identical blocks (as in `_encode`): one is computed."""
    anchor = getattr(model, "anchor", None)
    if not isinstance(anchor, AnalogAnchor):
        return None
    future = anchor.forecast(ctx[:len(ctx) // copies], n_patches * tok.patch_len)
    return tok.encode(future.repeat(copies, 1, 1), state)


def offset_scale(model: nn.Module) -> Tensor | None:
    """The unit of the value head's offsets per token element (token_dim,): the NVAR anchor's
    typical error where the run measured it (`NVARAnchor.fit_scale`), else None (unit)."""
    return getattr(getattr(model, "anchor", None), "scale", None)


def patch_quantiles(model: nn.Module, tok: PatchTokenizer, h: Tensor, dec_in: Tensor,
                    n_q: int, anchor: Tensor | None = None) -> Tensor:
    """Decoder states -> quantiles (B', N, token_dim, n_q) as offsets on the anchor of each
    patch: `anchor` (B', N, token_dim) where given (an analogue run's, `analog_tokens`), else
    `_anchor` (persistence or NVAR), so the network learns the change or the correction; in
    units of `offset_scale` where the run has one."""
    out = model.values(h).unflatten(-1, (tok.token_dim, n_q))  # (B', N, token_dim, n_q)
    scale = offset_scale(model)
    if scale is not None:
        out = out * scale.to(out.dtype)[:, None]
    base = _anchor(model, dec_in, tok) if anchor is None else anchor.to(out.dtype)
    return out + base[..., None]


# ---- sampling --------------------------------------------------------------------------------
def normal_scores(levels: list[float], device: torch.device) -> Tensor:
    """Phi^-1 of the quantile levels, (n_q,) float64."""
    lv = torch.tensor(levels, dtype=torch.float64, device=device)
    return math.sqrt(2.0) * torch.erfinv(2.0 * lv - 1.0)


def sort_levels(q: Tensor) -> Tensor:
    """`q` sorted along its last (quantile-level) dim, as `q.sort(dim=-1).values` but by an
    odd-even transposition network of elementwise min/max: for the few levels of a quantile
    head this is ~2.5x faster on CPU than `torch.sort` over many short rows, which was a
    quarter of the cost of 100 sample paths (docs/performance.md)."""
    cols = list(q.unbind(-1))
    for rnd in range(len(cols)):
        for j in range(rnd % 2, len(cols) - 1, 2):
            cols[j], cols[j + 1] = torch.minimum(cols[j], cols[j + 1]), torch.maximum(
                cols[j], cols[j + 1])
    return torch.stack(cols, dim=-1)


def inverse_cdf(q: Tensor, z_levels: Tensor, z: Tensor) -> Tensor:
    """Values at normal scores `z` (..., 1) of the piecewise-linear-in-z quantile function
    through (z_levels[k], q[..., k]); linear extension beyond the end levels."""
    n_q = z_levels.numel()
    if n_q == 1:
        return q[..., 0]
    k = torch.searchsorted(z_levels, z.contiguous()).clamp(1, n_q - 1)  # (..., 1) segment
    z0, z1 = z_levels[k - 1], z_levels[k]
    q0 = torch.gather(q, -1, (k - 1).expand(*q.shape[:-1], 1))
    q1 = torch.gather(q, -1, k.expand(*q.shape[:-1], 1))
    w = ((z - z0) / (z1 - z0)).to(q.dtype)
    return (q0 + w * (q1 - q0))[..., 0]


def _encode(model: nn.Module, src: Tensor, copies: int, channels: int | Tensor = 1) -> Tensor:
    """Encoder memory of `src` (R', N, D), `channels` rows per window; with `copies` > 1 the
    rows are that many identical sample-major blocks (of whole windows), so one block is
    encoded and tiled (the first chunk of a rollout)."""
    if copies == 1:
        return model.encode(src, channels=channels)
    block = src.shape[0] // copies
    return model.encode(src[:block], channels=channels).repeat(copies, 1, 1)  # (R', N, D)


def sample_patch_tokens(model: nn.Module, tok: PatchTokenizer, src: Tensor, n_patches: int,
                        levels: list[float], gen: torch.Generator | None,
                        draws: str = "element", copies: int = 1,
                        channels: int | Tensor = 1, anchor: Tensor | None = None) -> Tensor:
    """`n_patches` time patches of tokens (R', n_patches * k, token_dim) sampled
    autoregressively after the encoded context `src` (R', N, token_dim), k tokens per time
    patch (`block_tokens`: 1, or the spatial patches of a field): each is the inverse CDF of
    the predicted quantiles at normal draws (`draws`: one per token element, or one per row
    and time patch) and is fed back as the next input. `channels`: rows per window
    (`window_channels`), for models with channel attention. `anchor` (R', >= n_patches * k,
    token_dim): the analogue anchor of each patch (`analog_tokens`), for runs that have one.

    Shared by inference (`_patch_chunk`) and by training on the model's own rollouts
    (`sciformer.tasks.forecast`), so training sees exactly the paths inference draws.
    """
    memory = _encode(model, src, copies, channels)
    k = block_tokens(tok)  # tokens of one time patch, decoded together
    cache, dec_in, outs = model.new_cache(), src[:, -k:], []
    z_levels = normal_scores(levels, src.device)
    for i in range(n_patches):
        base = None if anchor is None else anchor[:, i * k:(i + 1) * k]
        h = model.decode(dec_in, memory, cache=cache, anchor=base)  # (R', k, D): new positions
        q = sort_levels(patch_quantiles(model, tok, h, dec_in, len(levels), base))
        shape = (q.shape[0], q.shape[1], q.shape[2]) if draws == "element" else (q.shape[0], 1, 1)
        u = torch.rand(*shape, generator=gen, device=q.device, dtype=torch.float64)
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(1e-9, 1 - 1e-9) - 1.0)  # (R', 1|k, 1|D)
        dec_in = inverse_cdf(q, z_levels, z[..., None].expand(*q.shape[:-1], 1))  # (R', k, D)
        outs.append(dec_in)
    return torch.cat(outs, dim=1)  # (R', n_patches * k, token_dim)


@torch.no_grad()
def first_patch_median(model: nn.Module, tok: PatchTokenizer, context: Tensor,
                       levels: list[float]) -> Tensor:
    """The model's median (R, patch_len, F) of the patch after contexts (R, C, F): the 0.5
    level of its predicted quantiles, no draw (`sciformer.pipelines.first_patch`)."""
    src, state = tok.encode_context(context)
    memory = model.encode(src, channels=window_channels(state))
    dec_in = src[:, -block_tokens(tok):]
    base = analog_tokens(model, tok, context, state, 1)
    h = model.decode(dec_in, memory, cache=model.new_cache(), anchor=base)
    q = sort_levels(patch_quantiles(model, tok, h, dec_in, len(levels), base))
    return tok.decode(q[..., levels.index(0.5)], state)[:, :tok.patch_len]


def _patch_chunk(model: nn.Module, tok: PatchTokenizer, ctx: Tensor, steps: int,
                 levels: list[float], gen: torch.Generator, draws: str = "element",
                 copies: int = 1) -> Tensor:
    """One chunk of sampled continuations (R, steps, F) of the R contexts `ctx` (R, C, F)."""
    src, state = tok.encode_context(ctx)  # (R', N, token_dim)
    n_patches = -(-steps // tok.patch_len)
    drawn = sample_patch_tokens(model, tok, src, n_patches, levels, gen, draws, copies,
                                window_channels(state),
                                analog_tokens(model, tok, ctx, state, n_patches, copies))
    return tok.decode(drawn, state)[:, :steps]  # (R, steps, F)


def _bins_chunk(model: nn.Module, tok: BinTokenizer, ctx: Tensor, steps: int,
                gen: torch.Generator, copies: int = 1) -> Tensor:
    """One chunk of sampled continuations (R, steps, F): tokens drawn from the model's law."""
    src, state = tok.encode_context(ctx)
    memory = _encode(model, src, copies, window_channels(state))
    cache = model.new_cache()
    token = torch.full((src.shape[0], 1), tok.bos_id, dtype=torch.long, device=src.device)
    per_step = tok.n_features if tok.channels == "joint" else 1
    ids = []
    for _ in range(steps * per_step):
        logits = model.token_logits(model.decode(token, memory, cache=cache))[:, -1].float()
        logits[:, : tok.bos_id + 1] = float("-inf")  # never emit <pad>/<bos>
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids.append(token)
    return tok.decode(torch.cat(ids, dim=1), state)  # (R, steps, F)


@torch.no_grad()
def sample_paths(model: nn.Module, tok: PatchTokenizer | BinTokenizer, context: Tensor,
                 horizon: int, chunk: int, levels: list[float], samples: int,
                 seed: int = 0, draws: str = "element", first_shift: Tensor | None = None
                 ) -> Tensor:
    """`samples` paths (S, B, H, F) of `horizon` steps after each context (B, C, F).

    `first_shift` (B, P, F), where given, is added to the first P steps of every path before
    they are fed back (the run's first-patch correction, `pipelines.first_patch`).

    Decodes `chunk` steps (the trained horizon) at a time with the key/value cache, then
    appends each path's own draws to its context and continues (closed-loop rollout). A path
    that diverges (a non-finite value) is NaN from the next chunk on, and the others go on
    unchanged: its context is swapped for a finite stand-in that is never read back.
    """
    b, c, f = context.shape
    gen = torch.Generator(device=context.device).manual_seed(seed)
    start = context.repeat(samples, 1, 1)  # (S*B, C, F), sample-major
    ctx, dead = start, torch.zeros(len(start), dtype=torch.bool, device=context.device)
    parts, done = [], 0
    while done < horizon:
        steps = min(chunk, horizon - done)
        copies = samples if done == 0 else 1  # the paths share their first context
        if isinstance(tok, PatchTokenizer):
            new = _patch_chunk(model, tok, ctx, steps, levels, gen, draws, copies)
        else:
            new = _bins_chunk(model, tok, ctx, steps, gen, copies)
        if done == 0 and first_shift is not None:
            k = min(first_shift.shape[1], steps)
            new[:, :k] += first_shift[:, :k].repeat(samples, 1, 1)
        new[dead] = float("nan")  # diverged in an earlier chunk
        dead |= ~torch.isfinite(new).flatten(1).all(dim=1)
        parts.append(new)
        ctx = torch.cat([ctx, new], dim=1)[:, -c:]
        ctx[dead] = start[dead, -ctx.shape[1]:]  # finite, so the batch can be encoded
        done += steps
    return torch.cat(parts, dim=1).view(samples, b, horizon, f)  # (S, B, H, F)


def summarise(paths: np.ndarray, levels: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Empirical median (B, H, F) and quantiles (n_q, B, H, F) of sample paths (S, B, H, F)."""
    qs = np.quantile(paths, [0.5, *levels], axis=0)
    return qs[0], qs[1:]


# ---- the pipeline ----------------------------------------------------------------------------
class Forecaster:
    """Probabilistic forecasts with a forecasting run (see the module docstring)."""

    task = "forecast"

    def __init__(self, model: nn.Module, cfg: RunConfig, state: ForecastState,
                 device: torch.device) -> None:
        self.model, self.cfg, self.state, self.device = model, cfg, state, device
        self.tokenizer = tokenizer_from_config(state.tokenizer)
        self.levels = list(cfg.data.quantiles)
        self.context_length = cfg.data.context  # steps the encoder reads
        self.trained_horizon = cfg.data.horizon
        self.state_shape = tuple(state.state_shape)
        self.calibration: SpreadCalibration | None = None  # set by `load` from calibration.json
        self.first_patch: FirstPatchCorrection | None = None  # by `load`, first_patch.safetensors

    def __repr__(self) -> str:
        m = self.cfg.model
        return (f"Forecaster(state {self.state_shape}, context {self.context_length}, "
                f"trained horizon {self.trained_horizon}, {m.n_encoder_layers}+"
                f"{m.n_decoder_layers} layers, d_model {m.d_model})")

    @property
    def min_context(self) -> int:
        """The fewest context steps the tokenizer accepts (one patch)."""
        return getattr(self.tokenizer, "patch_len", 1)

    def check_state_shape(self, shape: tuple[int, ...], source: str) -> None:
        """Data must have the state shape the model was trained on (any shape for a
        channel-agnostic run: each channel is its own series)."""
        if self.state.channel_agnostic:
            return
        if tuple(shape) != self.state_shape:
            raise InputError(f"{source}: state shape {tuple(shape)} does not match the model's "
                             f"{self.state_shape} (channel count differs from the trained "
                             "model)")

    def check_context_length(self, n_time: int, source: str) -> int:
        """Steps of the context that the model reads (the last `context_length`)."""
        if n_time < self.min_context:
            raise InputError(f"{source}: context of {n_time} steps is shorter than the "
                             f"{self.min_context} steps of one patch")
        use = min(self.context_length, n_time)
        return use - use % self.min_context  # whole patches: what the model actually sees

    def check_memory(self, n_contexts: int, horizon: int, samples: int, source: str) -> None:
        """Refuse up front a forecast whose sample paths would not fit in memory."""
        per_value = 12 if self.calibration else 4  # float32 paths (+ float64 recalibrated)
        need = per_value * n_contexts * horizon * samples * math.prod(self.state_shape)
        if need > SAMPLE_MEMORY_BYTES:
            raise InputError(f"{source}: {samples} sample paths x {horizon} steps x "
                             f"{n_contexts} contexts need {need / 2**30:.1f} GiB; ask for "
                             "fewer samples, a shorter horizon, or fewer contexts at a time")

    def sample(self, context: np.ndarray, horizon: int, samples: int | None = None,
               seed: int = 0, batch: int | None = None, calibrated: bool = True) -> np.ndarray:
        """Sample paths (S, B, horizon, F) after contexts (B, C, F) of flattened states,
        recalibrated when the run has a calibration and `calibrated` (see the module doc):
        float32 as drawn, float64 when recalibrated."""
        samples = samples or self.cfg.data.samples
        if horizon < 1 or samples < 1:
            raise InputError(f"horizon={horizon} and samples={samples} must be >= 1")
        use = self.check_context_length(context.shape[1], "context")
        batch = batch or max(1, self.cfg.train.batch_size)
        out = []
        for first in range(0, len(context), batch):
            ctx = np.ascontiguousarray(context[first:first + batch, -use:])
            shift = None
            if self.first_patch is not None:
                shift = torch.from_numpy(self.first_patch.shift(self.model, self.tokenizer, ctx))
                shift = shift.float().to(self.device)
            paths = sample_paths(self.model, self.tokenizer,
                                 torch.from_numpy(ctx).float().to(self.device), horizon,
                                 self.trained_horizon, self.levels, samples, seed + first,
                                 self.cfg.data.draws, first_shift=shift)
            out.append(paths.cpu().numpy())
        paths = np.concatenate(out, axis=1)
        return self.calibration.apply(paths) if calibrated and self.calibration else paths

    def forecast(self, context: Any, horizon: int | None = None, *, samples: int | None = None,
                 seed: int = 0, return_samples: bool = True, calibrated: bool = True) -> Any:
        """Forecast `horizon` steps after each context; returns an `xarray.Dataset`.

        `context` is a numpy array (n_traj, n_time, *state_shape) — or (n_time, *state_shape)
        for one trajectory — or an `xarray.DataArray` with a `time` dimension (first after an
        optional trajectory dimension). `calibrated=False` skips the run's recalibration.
        The Dataset holds `median`, `quantiles` (a `quantile`
        dimension) and, with `return_samples`, `samples` (a `sample` dimension), on a `time`
        coordinate continuing the context's.
        """
        from sciformer.pipelines.xarray_io import as_context_array, forecast_dataset

        shape = self.state_shape
        if self.state.channel_agnostic:  # an ODE state of the context's own channel count
            shape = (int(np.shape(context)[-1]),)
        values, times, dims = as_context_array(context, shape, self.state)
        horizon = horizon or self.trained_horizon
        samples = samples or self.cfg.data.samples
        self.check_memory(len(values), horizon, samples * math.prod(shape)
                          // math.prod(self.state_shape), "forecast")
        flat = values.reshape(len(values), values.shape[1], -1)
        paths = self.sample(flat, horizon, samples, seed, calibrated=calibrated)
        med, qs = summarise(paths, self.levels)
        return forecast_dataset(med, qs, paths if return_samples else None,
                                self.levels, times, dims, shape, self.state)
