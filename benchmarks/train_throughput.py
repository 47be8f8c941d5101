"""Training throughput: sciformer vs Hugging Face T5 / ESM, torch.nn.Transformer and a plain
SDPA reference, at the same size, side by side in one process.

Two model families, each timed as whole optimizer steps (forward, loss, backward, AdamW):

- encoder-decoder (forecasting / seq2seq shape): source 256 + target 64 tokens per example,
  vocabulary 1024 (the bins tokenizer's), cross-entropy on every target token. Peers:
  `T5ForConditionalGeneration`, `torch.nn.Transformer` with embedding + tied head, and
  `SdpaEncDec`, a minimal pre-LN encoder-decoder written here with fused QKV projections
  and `F.scaled_dot_product_attention` (a speed-of-light reference with nothing extra).
- masked-residue encoder (protein shape): 256 tokens per example, ESM alphabet, BERT
  masking (`sciformer.tasks.masked.mask_tokens`), loss on the masked positions. Peers:
  `EsmForMaskedLM` (rotary, token dropout, RoBERTa head: the same architecture as sciformer's
  ESM-2 configuration) and `torch.nn.TransformerEncoder`.

Every model is built from a config of the same size (no downloads). All feed-forward blocks
use ReLU in the encoder-decoder family (T5's and nn.Transformer's default) and GELU in the
masked family (ESM's). Model FLOPs utilisation (MFU) counts matmul FLOPs analytically
(`encdec_flops`, `encoder_flops`; training = 3 x forward) against `matmul_peak` measured in the
same run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks import CPU, interleaved, median, ratio_range, synchronize
from sciformer.config import ModelConfig
from sciformer.model import SciFormer
from sciformer.tasks.masked import mask_tokens
from sciformer.tokenizers.protein import ProteinTokenizer
from sciformer.train.loop import autocast

# sciformer with model.attention_dropout = model.dropout, as the peers drop attention weights
# (sciformer's default keeps attention dropout off, so the fused attention kernel is used)
ATTN_DROPOUT = "sciformer_attn_dropout"


@dataclass
class Shape:
    """Model and batch size of one comparison (the issue's reference size by default)."""

    d_model: int = 256
    n_heads: int = 8
    n_layers: int = 4  # encoder layers, and decoder layers in the encoder-decoder family
    d_ff: int = 1024
    batch: int = 16
    src_len: int = 256  # encoder tokens per example (masked family: whole sequence)
    tgt_len: int = 64  # decoder tokens per example
    vocab: int = 1024  # encoder-decoder vocabulary


# ---- FLOPs ------------------------------------------------------------------------------------
def encdec_flops(s: Shape) -> float:
    """Matmul FLOPs of one training step of the encoder-decoder (3 x forward)."""
    n, m, d = s.batch * s.src_len, s.batch * s.tgt_len, s.d_model
    enc = 8 * n * d * d + 4 * n * d * s.d_ff + 4 * s.batch * s.src_len**2 * d
    dec = (8 * m * d * d + 4 * s.batch * s.tgt_len**2 * d  # self-attention (full square)
           + 4 * m * d * d + 4 * n * d * d + 4 * s.batch * s.tgt_len * s.src_len * d  # cross
           + 4 * m * d * s.d_ff)
    head = 2 * m * d * s.vocab
    return 3.0 * (s.n_layers * (enc + dec) + head)


def encoder_flops(s: Shape, n_masked: int, vocab: int = 33) -> float:
    """Matmul FLOPs of one masked-LM training step (head on the masked positions only)."""
    n, d = s.batch * s.src_len, s.d_model
    layer = 8 * n * d * d + 4 * n * d * s.d_ff + 4 * s.batch * s.src_len**2 * d
    head = n_masked * (2 * d * d + 2 * d * vocab)  # RoBERTa dense + tied projection
    return 3.0 * (s.n_layers * layer + head)


# ---- the SDPA reference -------------------------------------------------------------------------
class _RefAttention(nn.Module):
    """Multi-head attention with a fused QKV (or Q + fused KV) projection and SDPA."""

    def __init__(self, d: int, heads: int, cross: bool, dropout: float) -> None:
        super().__init__()
        self.heads, self.cross, self.dropout = heads, cross, dropout
        self.q = nn.Linear(d, d) if cross else None
        self.qkv = nn.Linear(d, 2 * d if cross else 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor, memory: Tensor | None = None, causal: bool = False) -> Tensor:
        b, t, d = x.shape
        if self.cross:
            q, (k, v) = self.q(x), self.qkv(memory).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _RefBlock(nn.Module):
    """Pre-LN layer: self-attention, optional cross-attention, ReLU feed-forward."""

    def __init__(self, s: Shape, dropout: float, decoder: bool) -> None:
        super().__init__()
        d = s.d_model
        self.decoder = decoder
        self.attn = _RefAttention(d, s.n_heads, False, dropout)
        self.cross = _RefAttention(d, s.n_heads, True, dropout) if decoder else None
        self.ff = nn.Sequential(nn.Linear(d, s.d_ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(s.d_ff, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 if decoder else 2))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norms[0](x), causal=self.decoder))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norms[1](x), memory))
        return x + self.drop(self.ff(self.norms[-1](x)))


class SdpaEncDec(nn.Module):
    """Minimal pre-LN encoder-decoder on SDPA with a tied head: the reference to beat."""

    def __init__(self, s: Shape, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.d_model)
        self.enc = nn.ModuleList(_RefBlock(s, dropout, False) for _ in range(s.n_layers))
        self.dec = nn.ModuleList(_RefBlock(s, dropout, True) for _ in range(s.n_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(s.d_model), nn.LayerNorm(s.d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        h = self.drop(self.embed(src))
        for layer in self.enc:
            h = layer(h)
        memory, h = self.enc_norm(h), self.drop(self.embed(tgt))
        for layer in self.dec:
            h = layer(h, memory)
        return F.linear(self.dec_norm(h), self.embed.weight)  # (B, T, V)


class TorchEncDec(nn.Module):
    """`torch.nn.Transformer` (pre-LN, batch first) with a token embedding and tied head."""

    def __init__(self, s: Shape, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.d_model)
        self.core = nn.Transformer(s.d_model, s.n_heads, s.n_layers, s.n_layers, s.d_ff, dropout,
                                   batch_first=True, norm_first=True)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(s.tgt_len))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        h = self.core(self.embed(src), self.embed(tgt), tgt_mask=self.causal, tgt_is_causal=True)
        return F.linear(h, self.embed.weight)


class TorchMaskedLM(nn.Module):
    """`torch.nn.TransformerEncoder` (pre-LN, GELU) with an embedding and a head at the targets."""

    def __init__(self, s: Shape, dropout: float, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, s.d_model)
        layer = nn.TransformerEncoderLayer(s.d_model, s.n_heads, s.d_ff, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.core = nn.TransformerEncoder(layer, s.n_layers, norm=nn.LayerNorm(s.d_model),
                                          enable_nested_tensor=False)

    def forward(self, inputs: Tensor, chosen: Tensor) -> Tensor:
        return F.linear(self.core(self.embed(inputs))[chosen], self.embed.weight)


# ---- peers --------------------------------------------------------------------------------
def train_step(model: nn.Module, loss_fn: Callable[[], Tensor], precision: str,
                device: torch.device = CPU) -> Callable[[], None]:
    """One optimizer step (AdamW, the same for every peer) on `device` as a zero-argument
    callable; it returns once the device has finished the step."""
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        with autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
    return step


def encdec_batch(s: Shape, device: torch.device = CPU) -> dict[str, Tensor]:
    """A random source/target batch; `tgt_in` is the target shifted right after <bos> = 1."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, s.vocab, (s.batch, s.src_len), generator=g)
    tgt = torch.randint(2, s.vocab, (s.batch, s.tgt_len), generator=g)
    tgt_in = torch.cat([torch.ones_like(tgt[:, :1]), tgt[:, :-1]], dim=1)
    return {"src": src.to(device), "tgt": tgt.to(device), "tgt_in": tgt_in.to(device)}


def encdec_model(s: Shape, dropout: float, attention_dropout: float = 0.0) -> SciFormer:
    """sciformer's encoder-decoder at the comparison size (ReLU, as T5 and nn.Transformer)."""
    torch.manual_seed(0)
    return SciFormer(ModelConfig(
        vocab_size=s.vocab, d_model=s.d_model, n_heads=s.n_heads, n_encoder_layers=s.n_layers,
        n_decoder_layers=s.n_layers, d_ff=s.d_ff, dropout=dropout,
        attention_dropout=attention_dropout, activation="relu"))


def encdec_loss(model: SciFormer, batch: dict[str, Tensor]) -> Tensor:
    """Teacher-forced token cross-entropy on every target position."""
    logits = model.token_logits(model(batch["src"], batch["tgt_in"]))
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["tgt"].flatten())


def encdec_peers(s: Shape, dropout: float, precision: str,
                 device: torch.device = CPU) -> dict[str, Callable[[], None]]:
    """Training-step callables of every encoder-decoder peer on one shared random batch."""
    from transformers import T5Config, T5ForConditionalGeneration

    batch = encdec_batch(s, device)
    src, tgt, tgt_in = batch["src"], batch["tgt"], batch["tgt_in"]
    ce = lambda logits: F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())  # noqa: E731
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_model // s.n_heads, d_ff=s.d_ff,
        num_layers=s.n_layers, num_decoder_layers=s.n_layers, num_heads=s.n_heads,
        dropout_rate=dropout, feed_forward_proj="relu", decoder_start_token_id=1, pad_token_id=0))
    ref, tnn = SdpaEncDec(s, dropout), TorchEncDec(s, dropout)
    variants = {"sciformer": encdec_model(s, dropout)}
    if dropout > 0:  # the peers also drop attention probabilities: show that setting too
        variants[ATTN_DROPOUT] = encdec_model(s, dropout, dropout)
    steps = {name: train_step(m, lambda m=m: encdec_loss(m, batch), precision, device)
             for name, m in variants.items()}
    return {
        **steps,
        "hf_t5": train_step(t5, lambda: t5(input_ids=src, labels=tgt).loss, precision, device),
        "torch_nn": train_step(tnn, lambda: ce(tnn(src, tgt_in)), precision, device),
        "sdpa_ref": train_step(ref, lambda: ce(ref(src, tgt_in)), precision, device),
    }


def masked_batch(s: Shape, device: torch.device = CPU) -> dict[str, Tensor]:
    """A (B, L) batch of random residues framed by <cls>/<eos>, BERT-masked (15%)."""
    tok = ProteinTokenizer()
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(20, (s.batch, s.src_len - 2), generator=g)
    body = torch.as_tensor(tok.standard_ids)[pick]
    tokens = torch.cat([torch.full((s.batch, 1), tok.cls_id), body,
                        torch.full((s.batch, 1), tok.eos_id)], dim=1)  # (B, L)
    inputs, targets = mask_tokens(tokens, 0.15, 0.8, 0.1, g)
    return {"inputs": inputs.to(device), "targets": targets.to(device),
            "chosen": (targets != -100).to(device)}


def masked_model(s: Shape, dropout: float, attention_dropout: float = 0.0) -> SciFormer:
    """sciformer configured as ESM-2 (as `sciformer.esm2` does) at the comparison size."""
    tok = ProteinTokenizer()
    torch.manual_seed(0)
    return SciFormer(ModelConfig(
        vocab_size=tok.vocab_size, d_model=s.d_model, n_heads=s.n_heads,
        n_encoder_layers=s.n_layers, n_decoder_layers=0, d_ff=s.d_ff, dropout=dropout,
        attention_dropout=attention_dropout, positions="rotary", lm_head="roberta",
        embed_scale=False, token_dropout=True, mask_id=tok.mask_id, activation="gelu"))


def masked_loss(model: SciFormer, batch: dict[str, Tensor]) -> Tensor:
    """Exactly `MaskedTask.loss`: the last layer and the logits at the chosen positions only
    ("sparse prediction")."""
    h = model.encode(batch["inputs"], select=batch["chosen"])
    return F.cross_entropy(model.token_logits(h).float(), batch["targets"][batch["chosen"]])


def masked_peers(s: Shape, dropout: float, precision: str,
                 device: torch.device = CPU) -> dict[str, Callable[[], None]]:
    """Training-step callables of every masked-LM peer on one shared masked batch."""
    from transformers import EsmConfig, EsmForMaskedLM

    tok, batch = ProteinTokenizer(), masked_batch(s, device)
    x, y, chosen = batch["inputs"], batch["targets"], batch["chosen"]
    esm = EsmForMaskedLM(EsmConfig(
        vocab_size=tok.vocab_size, hidden_size=s.d_model, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, intermediate_size=s.d_ff, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, position_embedding_type="rotary", token_dropout=True,
        mask_token_id=tok.mask_id, pad_token_id=tok.pad_id, max_position_embeddings=s.src_len + 2,
        emb_layer_norm_before=False, layer_norm_eps=1e-5))
    tnn = TorchMaskedLM(s, dropout, tok.vocab_size)
    variants = {"sciformer": masked_model(s, dropout)}
    if dropout > 0:
        variants[ATTN_DROPOUT] = masked_model(s, dropout, dropout)
    return {
        **{name: train_step(m, lambda m=m: masked_loss(m, batch), precision, device)
           for name, m in variants.items()},
        "hf_esm": train_step(esm, lambda: esm(input_ids=x, labels=y).loss, precision, device),
        "torch_nn": train_step(tnn, lambda: F.cross_entropy(tnn(x, chosen).float(), y[chosen]),
                                precision, device),
    }


# ---- the benchmark ------------------------------------------------------------------------
def run(shape: Shape, settings: list[tuple[str, float]], repeats: int, peaks: dict[str, float],
        families: tuple[str, ...] = ("encdec", "masked"),
        device: torch.device = CPU) -> list[dict[str, Any]]:
    """Rows of (family, precision, dropout, peer, tokens/s, MFU, sciformer's speed-up over it)
    for every (precision, dropout) pair in `settings`, every model on `device`."""
    rows = []
    for family in families:
        for precision, dropout in settings:
            rows += _one_setting(family, shape, precision, dropout, repeats, peaks[precision],
                                 device)
    return rows


def _one_setting(family: str, s: Shape, precision: str, dropout: float, repeats: int,
                 peak: float, device: torch.device) -> list[dict[str, Any]]:
    if family == "encdec":
        peers = encdec_peers(s, dropout, precision, device)
        tokens, flops = s.batch * (s.src_len + s.tgt_len), encdec_flops(s)
    else:
        peers, tokens = masked_peers(s, dropout, precision, device), s.batch * s.src_len
        flops = encoder_flops(s, int(masked_batch(s)["chosen"].sum()))
    raw = interleaved(peers, repeats)
    times = {k: median(v) for k, v in raw.items()}
    ours = times["sciformer"]
    return [{"family": family, "precision": precision, "dropout": dropout, "peer": name,
             "batch": s.batch, "tokens": tokens, "step_s": t, "tokens_per_s": tokens / t,
             "flops_per_s": flops / t, "mfu": flops / t / peak, "sciformer_speedup": t / ours,
             "speedup_range": ratio_range(raw, name, "sciformer"), "repeats_s": raw[name],
             "shape": asdict(s)} for name, t in times.items()]


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (family, precision, dropout): sciformer's speed-up over each peer, and,
    with dropout, that of the variant that also drops attention weights (`ATTN_DROPOUT`)."""
    out: dict[tuple, dict[str, Any]] = {}
    times: dict[tuple, dict[str, float]] = {}
    for r in rows:
        key = (r["family"], r["precision"], r["dropout"])
        row = out.setdefault(key, {"family": r["family"], "precision": r["precision"],
                                   "dropout": r["dropout"], "batch": r["batch"]})
        times.setdefault(key, {})[r["peer"]] = r["step_s"]
        if r["peer"] == "sciformer":
            row["sciformer_tok_s"], row["sciformer_mfu"] = r["tokens_per_s"], r["mfu"]
        elif r["peer"] != ATTN_DROPOUT:
            row[f"x_{r['peer']}"] = r["sciformer_speedup"]
            row[f"x_{r['peer']}_range"] = r["speedup_range"]
    for key, t in times.items():
        if ATTN_DROPOUT in t:
            for peer in ("hf_t5", "hf_esm"):
                if peer in t:
                    out[key][f"attn_dropout_x_{peer}"] = t[peer] / t[ATTN_DROPOUT]
    return list(out.values())
