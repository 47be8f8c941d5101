"""The shared encoder-decoder Transformer and its parts."""

from sciformer.model.transformer import SciFormer

__all__ = ["SciFormer"]
