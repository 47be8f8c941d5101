"""Space-time patch tokens for fields of 2+ spatial dims (`field_patch`).

A whole-state token of a 64 x 64 field is 4096 values per time step: too wide to embed and
to predict. As Vision Transformers cut an image into p x p patches (Dosovitskiy et al. 2021,
ICLR) and video transformers cut a clip into tubelets over a few frames (Arnab et al. 2021,
ViViT), each window of states is cut into blocks of ``patch_len`` time steps x ``space_patch``
grid points per spatial axis x all fields; one block is one token.

Layout. A window (B, T, F), F = prod(state_shape) flattened from (*space, n_fields) as the
task's windows are, becomes tokens (B, N_t * S, token_dim): N_t = T // patch_len time patches,
S = prod(space // space_patch) spatial patches (`space_tokens`), **time-patch-major**: token
``n = i * S + s`` is spatial patch s (row-major over the patch grid) of time patch i. Inside a
token the values are ordered (time, *patch axes, field), time outermost, so its last
``token_dim // patch_len`` values are the patch at the token's last time step (what the
forecast's persistence anchor reads, as for whole-state patches).

Scaling. Values are scaled per FIELD by the training data's mean and std (as
`DatasetScaledPatchTokenizer`, whose reasons hold here too; a per-window or per-point scale
would distort the field), and `decode(encode(x))` returns x to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sciformer.errors import ConfigError
from sciformer.tokenizers.timeseries import (
    PatchTokenizer,
    ScaleState,
    TokenizerShapeError,
    _check_state,
    _check_window,
)


class FieldPatchTokenizer(PatchTokenizer):
    """Dataset-scaled space-time patches of a field; see the module docstring.

    A `PatchTokenizer` with joint channels for everything downstream (`encode_context`,
    quantile heads, sampling); `space_tokens` tells the model and the decoding loop how many
    tokens make one time patch.
    """

    name = "field_patch"

    def __init__(self, patch_len: int, state_shape: list[int] | tuple[int, ...],
                 space_patch: int, *, loc: list[float], scale: list[float],
                 eps: float = 1e-5) -> None:
        shape = tuple(int(s) for s in state_shape)
        if len(shape) < 2:
            raise ConfigError(f"field_patch tokenizer: state shape {shape} has no spatial dims")
        super().__init__(patch_len, math.prod(shape), "joint", eps)
        space, n_fields = shape[:-1], shape[-1]
        if space_patch < 1 or any(s % space_patch for s in space):
            raise TokenizerShapeError(
                f"data.space_patch={space_patch} does not divide the spatial shape {space}; "
                f"pick a divisor of every axis")
        if len(loc) != n_fields or len(scale) != n_fields or min(scale) <= 0:
            raise ConfigError(f"field_patch tokenizer: loc/scale need {n_fields} entries "
                              "(one per field), scale > 0")
        self.state_shape, self.space_patch = shape, int(space_patch)
        self.grid = tuple(s // space_patch for s in space)  # patches per spatial axis
        self.loc, self.scale = [float(v) for v in loc], [float(v) for v in scale]

    @property
    def space_tokens(self) -> int:
        """Spatial patches S per time patch (tokens of one time patch)."""
        return math.prod(self.grid)

    @property
    def token_dim(self) -> int:
        """patch_len * space_patch^d * n_fields values per token."""
        d = len(self.grid)
        return self.patch_len * self.space_patch ** d * self.state_shape[-1]

    def to_config(self) -> dict[str, Any]:
        """Keyword arguments (plus `name`) that rebuild this tokenizer (`from_config`)."""
        return {"name": self.name, "patch_len": self.patch_len,
                "state_shape": list(self.state_shape), "space_patch": self.space_patch,
                "loc": self.loc, "scale": self.scale, "eps": self.eps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FieldPatchTokenizer:
        """Rebuild from `to_config()`; a missing or unknown key is a ConfigError."""
        kwargs = {k: v for k, v in config.items() if k != "name"}
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ConfigError(f"tokenizer 'field_patch': {err}") from None

    def fit_state(self, context: Tensor) -> ScaleState:
        """The training statistics per field, repeated over space: (B, 1, F) loc and scale."""
        _check_window(context, self.n_features, "context")
        b, kw = context.shape[0], {"dtype": context.dtype, "device": context.device}
        reps = self.n_features // self.state_shape[-1]
        loc = torch.tensor(self.loc, **kw).repeat(reps).view(1, 1, -1).expand(b, 1, -1)
        scale = torch.tensor(self.scale, **kw).repeat(reps).view(1, 1, -1).expand(b, 1, -1)
        return ScaleState(loc, scale, self.n_features, self.channels)

    def _split_shape(self, b: int, n_t: int) -> list[int]:
        """(B, N_t, P_t, g_1, p, g_2, p, ..., C): a window with every axis cut into patches."""
        axes = [n for g in self.grid for n in (g, self.space_patch)]
        return [b, n_t, self.patch_len, *axes, self.state_shape[-1]]

    def _order(self) -> list[int]:
        """Permutation from `_split_shape` to (B, N_t, g_1.., P_t, p.., C) (tokens major)."""
        d = len(self.grid)
        return [0, 1, *(3 + 2 * i for i in range(d)), 2, *(4 + 2 * i for i in range(d)),
                3 + 2 * d]

    def encode(self, x: Tensor, state: ScaleState) -> Tensor:
        """Scale `x` (B, T, F) per field, cut into tokens (B, T // P * S, token_dim)."""
        _check_window(x, self.n_features, "x")
        _check_state(state, self.n_features, self.channels, x.shape[0])
        b, t, _ = x.shape
        if t % self.patch_len:
            raise TokenizerShapeError(
                f"window length {t} is not a multiple of patch_len {self.patch_len}")
        z = (x - state.loc) / state.scale  # (B, T, F)
        n_t = t // self.patch_len
        z = z.reshape(self._split_shape(b, n_t)).permute(self._order())  # tokens major
        return z.reshape(b, n_t * self.space_tokens, self.token_dim)  # (B, N_t * S, D_tok)

    def decode(self, tokens: Tensor, state: ScaleState) -> Tensor:
        """Fold tokens (B, N_t * S, token_dim) back to values (B, N_t * P, F), unscaled."""
        s = self.space_tokens
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim or tokens.shape[1] % s:
            raise TokenizerShapeError(
                f"tokens: expected (B, N_t * {s}, {self.token_dim}), got {tuple(tokens.shape)}")
        _check_state(state, self.n_features, self.channels, tokens.shape[0])
        b, n_t = tokens.shape[0], tokens.shape[1] // s
        split = self._split_shape(b, n_t)
        order = self._order()
        z = tokens.reshape([split[i] for i in order])  # (B, N_t, g.., P_t, p.., C)
        inverse = sorted(range(len(order)), key=order.__getitem__)
        z = z.permute(inverse).reshape(b, n_t * self.patch_len, self.n_features)  # (B, T, F)
        return z * state.scale + state.loc
