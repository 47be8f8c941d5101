"""Time-series tokenizers: continuous patches (`patch`) and quantised value bins (`bins`).

Both follow the chronos-forecasting contract: the normalisation is computed from the
CONTEXT only and kept as a `ScaleState`, so `decode(encode(x, state), state)` inverts the
scaling exactly (to float rounding) for context and future alike, and the future never leaks
into the statistics the model conditions on.

Input convention: a batch of windows `x` of shape `(B, T, F)`, F = flattened state features
(channels, or n_x * n_fields). Channel handling:

- ``"joint"``: tokens cover all F features of a time step (whole-state tokens; right for
  coupled chaotic systems where each variable's future depends on its neighbours).
- ``"independent"``: channel independence as in PatchTST (Nie et al. 2023): feature f of
  window b becomes the univariate series at row ``b * F + f`` of a ``(B * F, ...)`` batch;
  decode folds it back to ``(B, T, F)``. No token ever mixes two features.

All tensors must be finite floats; stats are computed in float64 and stored in x's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sciformer.compiling import eager
from sciformer.errors import ConfigError

CHANNEL_MODES = ("joint", "independent")


class TokenizerShapeError(ConfigError, ValueError):
    """A window's length or width does not fit the tokenizer (e.g. T not a multiple of P).

    It is a `ConfigError` (context/horizon/patch_len come from the config) and a
    `ValueError` (a bad argument) so either kind of handler catches it.
    """


@dataclass
class ScaleState:
    """Per-window, per-feature normalisation computed from the context only.

    `scale` is always > 0: the patch tokenizer floors it at ``eps * (1 + |loc|)`` (a std
    below the float resolution of the level is rounding noise), the bins tokenizer replaces
    a zero mean-|x| by 1 (as Chronos does), so constant series never give NaN/Inf.
    """

    loc: Tensor  # (B, 1, F) subtracted before scaling (0 for bins)
    scale: Tensor  # (B, 1, F) divisor, > 0
    n_features: int  # F, to fold independent series back into windows
    channels: str  # "joint" | "independent"

    @property
    def batch_size(self) -> int:
        """Number of windows B the state was fitted on."""
        return int(self.loc.shape[0])


def _check_channels(channels: str) -> None:
    """Reject unknown channel modes with a message listing the valid ones."""
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels: unknown mode {channels!r}; valid: {', '.join(CHANNEL_MODES)}")


@eager  # a data check (host sync): outside the graph in a compiled step
def _check_window(x: Tensor, n_features: int, what: str) -> None:
    """Check that `x` is a finite float (B, T, F) batch with F == n_features."""
    if x.dim() != 3 or not torch.is_floating_point(x):
        raise TokenizerShapeError(
            f"{what}: expected a float tensor (B, T, F), got {x.dtype} of shape {tuple(x.shape)}"
        )
    if x.shape[-1] != n_features:
        raise TokenizerShapeError(
            f"{what}: has {x.shape[-1]} features, tokenizer expects {n_features}"
        )
    if x.shape[1] == 0:
        raise TokenizerShapeError(f"{what}: has no time steps")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: contains NaN or Inf values")


def _check_state(state: ScaleState, n_features: int, channels: str, batch: int | None) -> None:
    """Check that `state` was fitted by a tokenizer with the same features and channel mode."""
    if state.n_features != n_features or state.channels != channels:
        raise TokenizerShapeError(
            f"state is for {state.n_features} features/{state.channels!r} channels, "
            f"tokenizer has {n_features}/{channels!r}"
        )
    if batch is not None and state.batch_size != batch:
        raise TokenizerShapeError(f"state holds {state.batch_size} windows, input has {batch}")


def _series_batch(n_rows: int, state: ScaleState, channels: str) -> int:
    """Windows B behind `n_rows` token rows (rows = B joint, B * F independent)."""
    f = state.n_features if channels == "independent" else 1
    if n_rows != state.batch_size * f:
        raise TokenizerShapeError(
            f"tokens have {n_rows} rows, state expects {state.batch_size * f} "
            f"({state.batch_size} windows, {channels} channels)"
        )
    return state.batch_size


class PatchTokenizer:
    """Instance-normalised continuous patches (Nie et al. 2023 PatchTST; RevIN, Kim et al. 2022).

    Each window is normalised per feature by the context mean and std (reversible instance
    normalisation), then cut into non-overlapping patches of `patch_len` steps. A joint token
    flattens a (patch_len, F) block time-major: element (p, f) sits at index ``p * F + f``.
    """

    name = "patch"

    def __init__(self, patch_len: int, n_features: int, channels: str = "joint", eps: float = 1e-5):
        if patch_len < 1 or n_features < 1:
            raise ConfigError(
                f"patch tokenizer: patch_len={patch_len} and n_features={n_features} must be >= 1"
            )
        if not eps > 0:
            raise ConfigError(f"patch tokenizer: eps={eps} must be positive")
        _check_channels(channels)
        self.patch_len, self.n_features = patch_len, n_features
        self.channels, self.eps = channels, eps

    @property
    def token_dim(self) -> int:
        """Width of one token vector: P * F (joint) or P (independent)."""
        return self.patch_len * (self.n_features if self.channels == "joint" else 1)

    def to_config(self) -> dict:
        """Keyword arguments that rebuild this tokenizer through `build_tokenizer(**cfg)`."""
        return {"name": self.name, "patch_len": self.patch_len, "n_features": self.n_features,
                "channels": self.channels, "eps": self.eps}

    def fit_state(self, context: Tensor) -> ScaleState:
        """RevIN statistics of the context: loc = mean, scale = population std over time.

        Computed in float64 (stable for large offsets); scale floored at eps * (1 + |loc|).
        """
        _check_window(context, self.n_features, "context")
        c64 = context.double()
        loc = c64.mean(dim=1, keepdim=True)  # (B, 1, F)
        std = (c64 - loc).pow(2).mean(dim=1, keepdim=True).sqrt()  # (B, 1, F)
        scale = torch.maximum(std, self.eps * (1.0 + loc.abs()))
        dtype = context.dtype
        return ScaleState(loc.to(dtype), scale.to(dtype), self.n_features, self.channels)

    def encode(self, x: Tensor, state: ScaleState) -> Tensor:
        """Normalise `x` (B, T, F) with `state`, cut into patch tokens (B', T // P, token_dim)."""
        _check_window(x, self.n_features, "x")
        _check_state(state, self.n_features, self.channels, x.shape[0])
        b, t, f = x.shape
        p = self.patch_len
        if t % p:
            raise TokenizerShapeError(f"window length {t} is not a multiple of patch_len {p}")
        z = (x - state.loc) / state.scale  # (B, T, F)
        if self.channels == "joint":
            return z.reshape(b, t // p, p * f)  # (B, N, P*F), time-major inside a patch
        return z.transpose(1, 2).reshape(b * f, t // p, p)  # (B*F, N, P)

    def decode(self, tokens: Tensor, state: ScaleState) -> Tensor:
        """Fold tokens (B', N, token_dim) back to values (B, N * P, F) and undo the scaling."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise TokenizerShapeError(
                f"tokens: expected (rows, N, {self.token_dim}), got shape {tuple(tokens.shape)}"
            )
        _check_state(state, self.n_features, self.channels, None)
        b = _series_batch(tokens.shape[0], state, self.channels)
        n, p, f = tokens.shape[1], self.patch_len, self.n_features
        if self.channels == "joint":
            z = tokens.reshape(b, n * p, f)  # (B, T, F)
        else:
            z = tokens.reshape(b, f, n * p).transpose(1, 2)  # (B, T, F)
        return z * state.scale + state.loc

    def encode_context(self, context: Tensor) -> tuple[Tensor, ScaleState]:
        """Fit the state on `context` (B, C, F) and encode it.

        If C is not a multiple of P the OLDEST ``C % P`` steps are dropped (left-trim) so the
        most recent steps, which matter most for the forecast, are kept; the state is fitted on
        the trimmed context so that it describes exactly what the model sees. A context shorter
        than one patch is an error.
        """
        _check_window(context, self.n_features, "context")
        c = context.shape[1]
        if c < self.patch_len:
            raise TokenizerShapeError(
                f"context length {c} is shorter than patch_len {self.patch_len}"
            )
        trimmed = context[:, c % self.patch_len :]
        state = self.fit_state(trimmed)
        return self.encode(trimmed, state), state


class BinTokenizer:
    """Mean-scaling and uniform quantisation into bins (Ansari et al. 2024, Chronos).

    Values are divided by the mean |context| of their feature (loc = 0), clipped to
    [-limit, limit] and assigned to one of `n_bins` equal-width bins; decoding returns the bin
    centre times the scale, so the error is at most half a bin width times the scale for
    values within +-limit * scale. Ids: 0 = <pad>, 1 = <bos>, bins are 2 .. n_bins + 1.

    Layout: with "joint" channels each (step, feature) value is its own token, time-major, so
    a window becomes a (B, T * F) sequence with feature f of step t at position ``t * F + f``;
    with "independent" channels each feature is its own (T,) sequence, rows ``b * F + f``.
    """

    name = "bins"
    pad_id = 0
    bos_id = 1
    n_special = 2

    def __init__(self, n_bins: int, limit: float, n_features: int, channels: str = "joint"):
        if n_bins < 1 or n_features < 1:
            raise ConfigError(
                f"bins tokenizer: n_bins={n_bins} and n_features={n_features} must be >= 1"
            )
        if not limit > 0:
            raise ConfigError(f"bins tokenizer: limit={limit} must be positive")
        _check_channels(channels)
        self.n_bins, self.limit = n_bins, float(limit)
        self.n_features, self.channels = n_features, channels
        edges = torch.linspace(-self.limit, self.limit, n_bins + 1, dtype=torch.float64)
        self.edges = edges  # (n_bins + 1,) uniform on [-limit, limit]
        self.centres = (edges[:-1] + edges[1:]) / 2  # (n_bins,)

    @property
    def vocab_size(self) -> int:
        """Number of ids: the bins plus <pad> and <bos>."""
        return self.n_bins + self.n_special

    @property
    def bin_width(self) -> float:
        """Width of one bin in scaled units, 2 * limit / n_bins."""
        return 2.0 * self.limit / self.n_bins

    def to_config(self) -> dict:
        """Keyword arguments that rebuild this tokenizer through `build_tokenizer(**cfg)`."""
        return {"name": self.name, "n_bins": self.n_bins, "limit": self.limit,
                "n_features": self.n_features, "channels": self.channels}

    def fit_state(self, context: Tensor) -> ScaleState:
        """Chronos mean scaling: loc = 0, scale = mean |context| over time per feature.

        A mean-|x| that is zero (or below the smallest normal float) becomes 1, so an all-zero
        series encodes to the centre bins instead of NaN.
        """
        _check_window(context, self.n_features, "context")
        mean_abs = context.double().abs().mean(dim=1, keepdim=True)  # (B, 1, F)
        tiny = torch.finfo(context.dtype).tiny
        scale = torch.where(mean_abs > tiny, mean_abs, torch.ones_like(mean_abs))
        loc = torch.zeros_like(scale)
        dtype = context.dtype
        return ScaleState(loc.to(dtype), scale.to(dtype), self.n_features, self.channels)

    def encode(self, x: Tensor, state: ScaleState) -> Tensor:
        """Scale and quantise `x` (B, T, F) to int64 ids: (B, T*F) joint, (B*F, T) independent."""
        _check_window(x, self.n_features, "x")
        _check_state(state, self.n_features, self.channels, x.shape[0])
        b, t, f = x.shape
        z = (x.double() - state.loc.double()) / state.scale.double()  # (B, T, F)
        inner = self.edges[1:-1].to(z.device)
        # bin k holds edges[k] <= z < edges[k+1]; values beyond +-limit land in the end bins
        ids = torch.bucketize(z, inner, right=True) + self.n_special  # (B, T, F)
        if self.channels == "joint":
            return ids.reshape(b, t * f)  # (B, T*F), position t*F + f
        return ids.transpose(1, 2).reshape(b * f, t)  # (B*F, T)

    def decode(self, ids: Tensor, state: ScaleState) -> Tensor:
        """Map ids back to bin centres times the scale: (B, T, F) in the state's dtype.

        <pad>/<bos> or out-of-range ids carry no value and raise ValueError (a generation head
        must exclude them) rather than being silently mapped to a bin.
        """
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise TokenizerShapeError(
                f"ids: expected an integer tensor (rows, L), got {ids.dtype} {tuple(ids.shape)}"
            )
        _check_state(state, self.n_features, self.channels, None)
        b = _series_batch(ids.shape[0], state, self.channels)
        bad = (ids < self.n_special) | (ids >= self.vocab_size)
        if bool(bad.any()):
            n_bad = int(bad.sum())
            raise ValueError(f"ids: {n_bad} ids are special or outside [2, {self.vocab_size})")
        f = self.n_features
        if self.channels == "joint":
            if ids.shape[1] % f:
                raise TokenizerShapeError(
                    f"ids: length {ids.shape[1]} is not a multiple of {f} features"
                )
            idx = ids.reshape(b, ids.shape[1] // f, f)  # (B, T, F)
        else:
            idx = ids.reshape(b, f, ids.shape[1]).transpose(1, 2)  # (B, T, F)
        z = self.centres.to(ids.device)[idx - self.n_special]  # (B, T, F) float64
        return (z * state.scale.double() + state.loc.double()).to(state.scale.dtype)

    def encode_context(self, context: Tensor) -> tuple[Tensor, ScaleState]:
        """Fit the mean-scaling state on `context` (B, C, F) and encode all of it (no trimming)."""
        state = self.fit_state(context)
        return self.encode(context, state), state


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


TOKENIZERS: dict[str, type] = {"patch": PatchTokenizer, "bins": BinTokenizer}
#: Every `data.tokenizer` name (field_patch lives in `sciformer.tokenizers.fields`).
TOKENIZER_NAMES = (*TOKENIZERS, "field_patch")


def build_tokenizer(name: str, **kwargs) -> PatchTokenizer | BinTokenizer:
    """Build the tokenizer registered under `name` with its constructor keywords."""
    if name not in TOKENIZERS:
        valid = ", ".join(sorted(TOKENIZERS))
        raise ConfigError(f"tokenizer: unknown name {name!r}; valid: {valid}")
    try:
        return TOKENIZERS[name](**kwargs)
    except TypeError as err:  # a misspelt or missing keyword
        raise ConfigError(f"tokenizer {name!r}: {err}") from None


def tokenizer_from_config(config: dict[str, Any]) -> PatchTokenizer | BinTokenizer:
    """Rebuild a tokenizer from its `to_config()` (a run's saved task state): a patch
    tokenizer with fixed training statistics (`loc`, `scale`) is dataset-scaled."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if config.get("name") == "field_patch":  # space-time patches of a 2+-D field
        from sciformer.tokenizers.fields import FieldPatchTokenizer

        return FieldPatchTokenizer.from_config(config)
    if config.get("name") == "patch_any":  # channel-agnostic (sciformer.tokenizers.agnostic)
        from sciformer.tokenizers.agnostic import ChannelAgnosticPatchTokenizer

        return ChannelAgnosticPatchTokenizer(**kwargs)
    if config.get("name") == "patch" and "loc" in kwargs:
        try:
            return DatasetScaledPatchTokenizer(**kwargs)
        except TypeError as err:
            raise ConfigError(f"tokenizer 'patch': {err}") from None
    return build_tokenizer(config.get("name", ""), **kwargs)


def pinball_loss(pred: Tensor, target: Tensor, levels: Tensor) -> Tensor:
    """Mean quantile (pinball) loss (Koenker & Bassett 1978) over all elements and levels.

    pred (..., n_q) holds one prediction per level in `levels` (n_q,); target (...) is the
    truth. Per element: max(q * (y - p), (q - 1) * (y - p)), which is |y - p| / 2 at q = 0.5.
    """
    if pred.shape[:-1] != target.shape or pred.shape[-1] != levels.numel():
        raise TokenizerShapeError(
            f"pinball_loss: pred {tuple(pred.shape)} must be target {tuple(target.shape)} "
            f"+ ({levels.numel()},) levels"
        )
    q = levels.to(pred.dtype).to(pred.device)  # (n_q,) broadcasts over the last axis
    diff = target.unsqueeze(-1) - pred  # (..., n_q)
    return torch.maximum(q * diff, (q - 1.0) * diff).mean()
