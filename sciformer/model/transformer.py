"""SciFormer: one encoder-decoder Transformer shared by every task.

    inputs ──► adapter (token embedding | linear patch embedding) ──► + positions
           ──► encoder stack ──► memory
    targets ─► adapter ─► decoder stack (causal self-attn, cross-attn to memory) ─► heads

The encoder alone serves masked-residue prediction (``n_decoder_layers = 0``). Decoding
takes a key/value cache (`new_cache`) and then needs only the newest target positions.
With ``model.channel_attention`` each encoder layer is followed by a channel layer that
attends across the channel rows of one window (`sciformer.model.channels`); `encode` is then
told the grouping (`channels`).
The model knows nothing of tasks, tokenizers, devices or data parallelism.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciformer.compiling import eager
from sciformer.config import ModelConfig
from sciformer.model.attention import AttnMask
from sciformer.model.channels import ChannelAttention, Groups, mix_channels
from sciformer.model.composition import CompositionPrior
from sciformer.model.heads import TokenHead, ValueHead
from sciformer.model.layers import DecoderLayer, EncoderLayer
from sciformer.model.positions import Rotary, build_positions


class SciFormer(nn.Module):
    """Encoder-decoder Transformer over discrete tokens and/or continuous vectors."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d) if cfg.vocab_size > 0 else None
        self.value_in = nn.Linear(cfg.input_dim, d) if cfg.input_dim > 0 else None
        # the anchor of each predicted patch, embedded and added to the decoder's input
        self.anchor_in = nn.Linear(cfg.input_dim, d) if cfg.anchor_input else None
        self.positions = build_positions(cfg.positions, d, cfg.max_len)
        # field patch tokens: a learned vector per spatial patch, added to the time position
        self.space_positions = (nn.Embedding(cfg.space_tokens, d) if cfg.space_tokens > 1
                                else None)
        if self.space_positions is not None:
            nn.init.normal_(self.space_positions.weight, std=0.02)
        self.rotary = Rotary(d // cfg.n_heads) if cfg.positions == "rotary" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        # one channel layer after each encoder layer; absent (no weights) when off, so runs
        # saved before the field existed load unchanged
        self.channel_layers = (nn.ModuleList(ChannelAttention(cfg)
                                             for _ in range(cfg.n_encoder_layers))
                               if cfg.channel_attention else None)
        final = cfg.final_norm and cfg.norm == "pre"
        eps, has_dec = cfg.layer_norm_eps, cfg.n_decoder_layers > 0
        self.enc_norm = nn.LayerNorm(d, eps=eps) if final else nn.Identity()
        self.dec_norm = nn.LayerNorm(d, eps=eps) if final and has_dec else nn.Identity()
        self.token_head = TokenHead(cfg) if cfg.vocab_size > 0 else None
        self.value_head = ValueHead(cfg) if cfg.output_dim > 0 else None
        self.composition = CompositionPrior(cfg.vocab_size) if cfg.composition_prior else None
        self.checkpointing = False  # activation checkpointing, switched on by the trainer
        # forecasts: what the value head's quantiles are offsets on; None = persistence, else
        # an `anchor.NVARAnchor` (attached by the forecast task, or from the run's weights)
        self.anchor: nn.Module | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        if self.embed is not None:  # unit-variance inputs after the sqrt(d) scale below
            nn.init.normal_(self.embed.weight, std=self.cfg.d_model ** -0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- inputs -------------------------------------------------------------------------
    def embed_inputs(self, x: Tensor, offset: int = 0, pad: Tensor | None = None) -> Tensor:
        """Token ids (B, T) int or continuous vectors (B, T, input_dim) -> (B, T, D).

        Padded positions (`pad` True) get zero input vectors: they are never attended to, so
        this changes nothing else, and it makes their outputs equal to ESM-2's.
        """
        if x.dtype in (torch.int64, torch.int32):
            if self.embed is None:
                raise ValueError("this model has no token vocabulary (model.vocab_size = 0)")
            h = self.embed(x)  # (B, T, D)
            if self.cfg.embed_scale:
                h = h * math.sqrt(self.cfg.d_model)
            if self.cfg.token_dropout:
                h = self._token_dropout(x, h, pad)
            if pad is not None:
                h = h.masked_fill(pad[..., None], 0.0)
        else:
            if self.value_in is None:
                raise ValueError("this model takes no continuous inputs (model.input_dim = 0)")
            h = self.value_in(x)  # (B, T, D)
        if self.space_positions is not None:
            return self.dropout(h + self._space_time(offset, h.shape[1], h.device).to(h.dtype))
        return self.dropout(self.positions(h, offset))

    def _space_time(self, offset: int, length: int, device: torch.device) -> Tensor:
        """Positions (T, D) of field patch tokens offset..offset+T-1: token n is spatial patch
        n % S of time patch n // S (S = model.space_tokens), and its vector is the time
        patch's (sinusoidal or learned table) plus the spatial patch's (learned), as the
        factorised space and time embeddings of video transformers (Bertasius et al. 2021,
        TimeSformer; Arnab et al. 2021, ViViT)."""
        n = torch.arange(offset, offset + length, device=device)
        s = self.cfg.space_tokens
        return self.positions.at(n // s).to(device) + self.space_positions(n % s)

    def _token_dropout(self, x: Tensor, h: Tensor, pad: Tensor | None) -> Tensor:
        """ESM-2 "token dropout" (Lin et al. 2023; fair-esm `ESM2.forward`): <mask> inputs are
        treated as dropped (zero vector) and the rest rescaled by (1 - 0.15 * 0.8) / (1 - r),
        r = observed fraction of <mask> among the non-padding tokens of each sequence, the
        train-time mask ratio over the observed one (as dropout rescales at evaluation)."""
        is_mask = x == self.cfg.mask_id  # (B, T)
        h = h.masked_fill(is_mask[..., None], 0.0)
        lengths = (~pad).sum(-1) if pad is not None else torch.full_like(x[:, 0], x.shape[1])
        observed = is_mask.sum(-1).to(h.dtype) / lengths.clamp_min(1).to(h.dtype)  # (B,)
        keep = (1 - observed).clamp_min(1e-6)  # an all-<mask> input is all zeros anyway
        return h * ((1 - 0.15 * 0.8) / keep)[:, None, None]

    def _run(self, layer: nn.Module, *args, **kwargs) -> Tensor:
        if self.checkpointing and self.training:
            return checkpoint(layer, *args, use_reentrant=False, **kwargs)
        return layer(*args, **kwargs)

    # ---- stacks -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_pad: Tensor | None = None, return_layers: bool = False,
               select: Tensor | None = None, depth: int | None = None,
               channels: Groups | None = None
               ) -> Tensor | list[Tensor]:
        """Encoder memory (B, S, D); `src_pad` (B, S) is True at padding positions.

        `channels` says which rows are the channels of one window, for a model with channel
        attention (required there, ignored otherwise): an int C (rows ``b * C + c``) or the
        channel count of each window (G,), windows packed row after row.

        With `return_layers`, a list of every layer's output (input embedding first, the
        final normalised output last) is returned, for embeddings and probes. With `select`
        (B, S) bool, only the final outputs at the selected positions are returned, (N, D) in
        the order of ``out[select]``: the last layer then computes queries, feed-forward and
        norm only there ("sparse prediction": the same values, most of one layer's work saved
        when, as in masked-residue training, a few positions are scored). Sliding-window
        attention (`local`) computes the full last layer and then selects.

        With `depth` < n_encoder_layers, only the first `depth` layers run (embeddings of an
        earlier layer need no more): their outputs are returned without the final norm, which
        belongs to the last layer (`select` is then not allowed).
        """
        mixing = self.channel_layers is not None
        if mixing and channels is None:
            raise ValueError("this model attends across channels (model.channel_attention): "
                             "encode() needs the channels of each window")
        h = self.embed_inputs(src, pad=src_pad)
        mask = AttnMask(key_pad=src_pad)
        if depth is not None and depth < len(self.encoder):
            if mixing:
                raise ValueError("encode: `depth` is not supported with channel attention")
            if select is not None:
                raise ValueError("encode: `select` reads the last layer; it needs the full depth")
            layers = [h]
            for layer in self.encoder[:max(depth, 0)]:
                layers.append(self._run(layer, layers[-1], mask, self.rotary))
            return layers if return_layers else layers[-1]
        sparse = (select is not None and not return_layers and self.cfg.attention != "local"
                  and not mixing)
        layers = [h]
        for i, layer in enumerate(self.encoder[:-1] if sparse else self.encoder):
            h = self._run(layer, h, mask, self.rotary)
            if mixing:
                h = self._run(mix_channels, self.channel_layers[i], h, channels)
            layers.append(h)
        if sparse:
            at, valid = _selected_index(select)
            return self.enc_norm(self._run(self.encoder[-1], h, mask, self.rotary, at=at)[valid])
        layers[-1] = self.enc_norm(h)
        if return_layers:
            return layers
        return layers[-1] if select is None else layers[-1][select]

    def decode(self, tgt: Tensor, memory: Tensor, memory_pad: Tensor | None = None,
               tgt_pad: Tensor | None = None, cache: dict | None = None,
               anchor: Tensor | None = None) -> Tensor:
        """Decoder states (B, T, D) for targets `tgt`, attending causally to earlier targets
        (block-causally over time patches of `model.space_tokens` tokens: a token sees every
        token of its own and earlier time patches).

        With a `cache` from `new_cache`, `tgt` holds only the new positions; the cache keeps
        earlier keys/values and the position offset, so results equal uncached decoding;
        `tgt_pad` then covers the new positions only (the cache keeps the earlier padding).

        `anchor` (B, T, input_dim): what each position's prediction is an offset on, for a
        model that reads it (`model.anchor_input`, required there): embedded and added to
        the input.
        """
        if not self.decoder:
            raise ValueError("this model has no decoder (model.n_decoder_layers = 0)")
        if (anchor is None) != (self.anchor_in is None):
            raise ValueError("decode: this model reads the anchor of each predicted patch "
                             "(model.anchor_input); pass `anchor`" if anchor is None else
                             "decode: this model takes no anchor input (model.anchor_input)")
        offset = cache["offset"] if cache is not None else 0
        if cache is not None:
            tgt_pad = _cached_pad(cache, tgt_pad, tgt.shape[0], tgt.shape[1])
        h = self.embed_inputs(tgt, offset)
        if anchor is not None:
            h = h + self.dropout(self.anchor_in(anchor.to(h.dtype)))
        self_mask = AttnMask(key_pad=tgt_pad, causal=True, q_offset=offset,
                             block=self.cfg.space_tokens)
        cross_mask = AttnMask(key_pad=memory_pad)
        for i, layer in enumerate(self.decoder):
            layer_cache = cache["layers"][i] if cache is not None else None
            if layer_cache is None:
                h = self._run(layer, h, memory, self_mask, cross_mask, self.rotary)
            else:
                h = layer(h, memory, self_mask, cross_mask, self.rotary, layer_cache)
        if cache is not None:
            cache["offset"] = offset + tgt.shape[1]
        return self.dec_norm(h)

    def new_cache(self) -> dict:
        """An empty key/value cache for incremental decoding."""
        return {"offset": 0, "layers": [{} for _ in self.decoder]}

    # ---- outputs ------------------------------------------------------------------------
    def token_logits(self, h: Tensor, tokens: Tensor | None = None,
                     select: Tensor | None = None, outside: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) from hidden states, through the (tied) token head.

        With `model.composition_prior`, the input token ids `tokens` (B, S) the states were
        encoded from are needed, and `select` when `h` holds only the selected positions
        (``encode(..., select=...)``): the composition term of each row is added
        (`sciformer.model.composition`); with ``model.composition_scope: protein``, `outside`
        (B, V) are the counts of each row's protein outside its piece (None: nothing outside).
        """
        logits = self.token_head(h, self.embed.weight if self.embed is not None else None)
        if self.composition is None:
            return logits
        if tokens is None:
            raise ValueError("this model adds a composition prior (model.composition_prior): "
                             "token_logits needs the input tokens")
        return logits + self.composition(tokens, select, outside).to(logits.dtype)

    def values(self, h: Tensor) -> Tensor:
        """Continuous outputs (B, T, output_dim) from hidden states."""
        return self.value_head(h)

    def forward(self, src: Tensor, tgt: Tensor, src_pad: Tensor | None = None,
                tgt_pad: Tensor | None = None, channels: Groups | None = None,
                anchor: Tensor | None = None) -> Tensor:
        """Teacher-forced encoder-decoder pass: decoder states (B, T, D); `channels` as in
        `encode`, `anchor` as in `decode`."""
        return self.decode(tgt, self.encode(src, src_pad, channels=channels), src_pad, tgt_pad,
                           anchor=anchor)


@eager  # its output's shape depends on the data: outside the graph in a compiled step
def _selected_index(select: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of the True entries of `select` (B, S), per row in ascending order and padded
    to the longest row: (B, K) indices (padding slots point at position 0) and (B, K) validity,
    so ``rows[valid]`` lists the selected positions in the order of ``x[select]``."""
    counts = select.sum(dim=1)
    k = int(counts.max()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=select.device)[None, :] < counts[:, None]
    return order.masked_fill(~valid, 0), valid


def _cached_pad(cache: dict, tgt_pad: Tensor | None, batch: int, t_new: int) -> Tensor | None:
    """Padding of every cached target key plus the new ones, (B, T_past + T_new).

    With a cache the keys span all earlier positions, so the padding of earlier steps is kept
    in the cache and the new positions' padding (none given = no padding) is appended.
    """
    past = cache.get("pad")
    if past is None and tgt_pad is None:
        return None
    if past is None:
        past = torch.zeros(batch, cache["offset"], dtype=torch.bool, device=tgt_pad.device)
    if tgt_pad is None:
        tgt_pad = torch.zeros(batch, t_new, dtype=torch.bool, device=past.device)
    cache["pad"] = torch.cat([past, tgt_pad], dim=1)  # (B, T_past + T_new)
    return cache["pad"]
