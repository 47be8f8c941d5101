"""Channel-agnostic patch tokens: one checkpoint for states with any number of channels.

Each channel of a window is its own univariate series (channel independence, Nie et al. 2023,
PatchTST), normalised by its own context mean and std (reversible instance normalisation,
RevIN, Kim et al. 2022), and cut into patches of `patch_len` steps. A token is then P values
of ONE channel whatever the system, so the model's input and output widths do not depend on
the channel count: a model trained on 3-variable flows reads a 5-variable one, or a 1-D field
(each grid point and field is a channel). This is the tokenisation of the zero-shot chaotic
forecaster Panda (Lai, Bao & Gilpin 2025) without its channel-mixing attention layers.

The contract is `PatchTokenizer`'s (`fit_state`, `encode`, `decode`, `encode_context`) with
``channels="independent"``; only the feature count is taken from the data on each call instead
of being fixed at construction. Saved in a run's task state as ``{"name": "patch_any", ...}``.
"""

from __future__ import annotations

from torch import Tensor

from sciformer.errors import ConfigError
from sciformer.tokenizers.timeseries import PatchTokenizer, ScaleState, TokenizerShapeError

NAME = "patch_any"


class ChannelAgnosticPatchTokenizer(PatchTokenizer):
    """Per-channel RevIN patches for windows (B, T, F) of any F (see the module docstring).

    `n_features` is only the count seen at training time (kept for the record); every call
    uses the F of its own input, rows ``b * F + f`` as in `PatchTokenizer` independent mode.
    """

    name = NAME

    def __init__(self, patch_len: int, n_features: int = 1, channels: str = "independent",
                 eps: float = 1e-5, channel_agnostic: bool = True) -> None:
        if channels != "independent" or not channel_agnostic:
            raise ConfigError(f"{NAME} tokenizer: channels must be 'independent' "
                              f"(got {channels!r})")
        super().__init__(patch_len, n_features, "independent", eps)

    @property
    def token_dim(self) -> int:
        """Width of one token: P values of one channel."""
        return self.patch_len

    def to_config(self) -> dict:
        """Keyword arguments that rebuild this tokenizer (`tokenizer_from_config`)."""
        return {"name": NAME, "patch_len": self.patch_len, "n_features": self.n_features,
                "channels": "independent", "eps": self.eps, "channel_agnostic": True}

    def _at(self, n_features: int) -> PatchTokenizer:
        """The fixed-width independent patch tokenizer for `n_features` channels."""
        if n_features < 1:
            raise TokenizerShapeError(f"{NAME}: a window needs at least one channel")
        return PatchTokenizer(self.patch_len, n_features, "independent", self.eps)

    @staticmethod
    def _width(x: Tensor, what: str) -> int:
        if x.dim() != 3:
            raise TokenizerShapeError(f"{what}: expected (B, T, F), got shape {tuple(x.shape)}")
        return int(x.shape[-1])

    def fit_state(self, context: Tensor) -> ScaleState:
        """RevIN statistics per window and channel of `context` (B, C, F)."""
        return self._at(self._width(context, "context")).fit_state(context)

    def encode(self, x: Tensor, state: ScaleState) -> Tensor:
        """(B, T, F) -> (B*F, T // P, P) tokens, normalised with `state`."""
        return self._at(self._width(x, "x")).encode(x, state)

    def decode(self, tokens: Tensor, state: ScaleState) -> Tensor:
        """(B*F, N, P) tokens -> (B, N*P, F) values in the data's units."""
        return self._at(state.n_features).decode(tokens, state)

    def encode_context(self, context: Tensor) -> tuple[Tensor, ScaleState]:
        """Fit and encode a context, left-trimmed to whole patches (`PatchTokenizer`)."""
        return self._at(self._width(context, "context")).encode_context(context)


def is_channel_agnostic(config: dict) -> bool:
    """Whether a saved tokenizer config (`to_config()`) is channel-agnostic."""
    return config.get("name") == NAME
