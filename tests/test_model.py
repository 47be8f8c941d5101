"""SciFormer layers and whole model: equivalence with torch.nn, causality, cache, padding,
overfitting one batch, gradient flow, activation checkpointing and the tied token head.

Everything runs on CPU at tiny sizes; numerical comparisons are in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from sciformer.config import ModelConfig
from sciformer.model import SciFormer, transformer
from sciformer.model.attention import KERNELS, AttnMask, LinearKernel, MultiHeadAttention
from sciformer.model.layers import DecoderLayer, EncoderLayer

VOCAB = 13
KINDS = sorted(KERNELS)
POSITION_KINDS = ["sinusoidal", "learned", "rotary"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_linear_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk the causal linear kernel every 4 steps so short sequences cross chunk borders."""
    monkeypatch.setattr(LinearKernel, "chunk", 4)


def tiny(**overrides) -> ModelConfig:
    """A 2+2-layer model of width 16; window 3 so sequences > 6 take the blocked local path."""
    base = dict(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=32,
                dropout=0.0, window=3, vocab_size=VOCAB, max_len=64)
    base.update(overrides)
    return ModelConfig(**base)


def model64(**overrides) -> SciFormer:
    """A tiny float64 model in eval mode."""
    return SciFormer(tiny(**overrides)).double().eval()


def right_pad(lengths: list[int], t: int) -> Tensor:
    """Padding mask (B, T), True beyond each row's length."""
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]


def tokens(b: int, t: int) -> Tensor:
    return torch.randint(0, VOCAB, (b, t))


# ---- 2. layers == torch.nn.TransformerEncoderLayer / DecoderLayer ---------------------------
def copy_attention(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    """torch packs q, k, v into in_proj_weight (3D, D); ours keeps three Linear layers."""
    for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj),
                          ref.in_proj_weight.chunk(3), ref.in_proj_bias.chunk(3)):
        proj.weight.copy_(w)
        proj.bias.copy_(b)
    ours.out_proj.load_state_dict(ref.out_proj.state_dict())


def randomise(module: nn.Module) -> None:
    """Non-trivial values everywhere, including biases and LayerNorm affine parameters."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


def torch_layer_pair(kind: str, norm: str, activation: str) -> tuple[nn.Module, nn.Module]:
    """(ours, torch's) encoder or decoder layer with the same float64 weights."""
    cfg = tiny(norm=norm, activation=activation)
    args = dict(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, activation=activation,
                batch_first=True, norm_first=norm == "pre", dtype=torch.float64)
    if kind == "encoder":
        ref, ours = nn.TransformerEncoderLayer(**args), EncoderLayer(cfg).double()
    else:
        ref, ours = nn.TransformerDecoderLayer(**args), DecoderLayer(cfg).double()
    randomise(ref)
    with torch.no_grad():
        copy_attention(ours.self_attn.block, ref.self_attn)
        ours.self_attn.norm.load_state_dict(ref.norm1.state_dict())
        ours.ff.block.up.load_state_dict(ref.linear1.state_dict())
        ours.ff.block.down.load_state_dict(ref.linear2.state_dict())
        if kind == "encoder":
            ours.ff.norm.load_state_dict(ref.norm2.state_dict())
        else:
            copy_attention(ours.cross_attn.block, ref.multihead_attn)
            ours.cross_attn.norm.load_state_dict(ref.norm2.state_dict())
            ours.ff.norm.load_state_dict(ref.norm3.state_dict())
    return ours, ref


LAYER_CASES = list(itertools.product(["post", "pre"], ["relu", "gelu"]))


@pytest.mark.parametrize(("norm", "activation"), LAYER_CASES)
def test_encoder_layer_matches_torch(norm: str, activation: str) -> None:
    ours, ref = torch_layer_pair("encoder", norm, activation)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    pad = right_pad([7, 4, 1], 7)
    # grad enabled and train mode (dropout 0): torch takes its plain path, not the fast path
    got = ours(x, AttnMask(key_pad=pad))
    want = ref(x, src_key_padding_mask=pad)
    assert (got - want).abs().max().item() < 1e-10


@pytest.mark.parametrize(("norm", "activation"), LAYER_CASES)
def test_decoder_layer_matches_torch(norm: str, activation: str) -> None:
    ours, ref = torch_layer_pair("decoder", norm, activation)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    memory = torch.randn(2, 9, 16, dtype=torch.float64)
    mem_pad = right_pad([9, 5], 9)
    got = ours(x, memory, AttnMask(causal=True), AttnMask(key_pad=mem_pad))
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    want = ref(x, memory, tgt_mask=causal, memory_key_padding_mask=mem_pad)
    assert (got - want).abs().max().item() < 1e-10


# ---- 4. causality -----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "positions"), list(itertools.product(KINDS, POSITION_KINDS)))
def test_decoder_is_causal(kind: str, positions: str, small_linear_chunk: None) -> None:
    model = model64(attention=kind, positions=positions)
    src, tgt = tokens(2, 9), tokens(2, 11)  # 11 > 2 * window: local takes the blocked path
    src_pad = right_pad([9, 6], 9)
    with torch.no_grad():
        base = model(src, tgt, src_pad)
        for t in (0, 4, 10):
            changed = tgt.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            out = model(src, changed, src_pad)
            leak = (out[:, :t] - base[:, :t]).abs().max().item() if t else 0.0
            assert leak < 1e-13, f"positions < {t} saw token {t}"
            assert not torch.allclose(out[:, t], base[:, t]), "the changed token had no effect"


# ---- 5. key/value cache -----------------------------------------------------------------------
CACHE_CASES = list(itertools.product(KINDS, POSITION_KINDS))


def full_and_memory(model: SciFormer, t: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    src, tgt = tokens(2, 8), tokens(2, t)
    src_pad = right_pad([8, 5], 8)
    memory = model.encode(src, src_pad)
    return model.decode(tgt, memory, src_pad), memory, src_pad, tgt


@pytest.mark.parametrize(("kind", "positions"), CACHE_CASES)
def test_cached_decoding_token_by_token(kind: str, positions: str,
                                        small_linear_chunk: None) -> None:
    model = model64(attention=kind, positions=positions)
    with torch.no_grad():
        full, memory, src_pad, tgt = full_and_memory(model, 12)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, i:i + 1], memory, src_pad, cache=cache) for i in range(12)]
    assert cache["offset"] == 12
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-12


@pytest.mark.parametrize(("kind", "positions"), CACHE_CASES)
def test_cached_decoding_in_chunks(kind: str, positions: str, small_linear_chunk: None) -> None:
    """A prefix long enough for the blocked/chunked paths, then chunks of several tokens."""
    model = model64(attention=kind, positions=positions)
    with torch.no_grad():
        full, memory, src_pad, tgt = full_and_memory(model, 15)
        cache = model.new_cache()
        parts = [model.decode(tgt[:, a:b], memory, src_pad, cache=cache)
                 for a, b in ((0, 8), (8, 11), (11, 12), (12, 15))]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_with_target_padding(kind: str, small_linear_chunk: None) -> None:
    """Left-padded targets (batched prompts): the cache remembers the padding of past steps."""
    model = model64(attention=kind)
    src, tgt = tokens(2, 8), tokens(2, 10)
    tgt_pad = torch.zeros(2, 10, dtype=torch.bool)
    tgt_pad[1, :3] = True
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory, tgt_pad=tgt_pad)
        cache = model.new_cache()
        parts = [model.decode(tgt[:, a:b], memory, tgt_pad=tgt_pad[:, a:b], cache=cache)
                 for a, b in ((0, 7), (7, 8), (8, 10))]
    assert torch.isfinite(full).all()
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-12


# ---- 6. padding does not leak into real positions --------------------------------------------
@pytest.mark.parametrize(("kind", "positions"),
                         list(itertools.product(KINDS, ["sinusoidal", "rotary"])))
def test_encoder_ignores_appended_padding(kind: str, positions: str) -> None:
    model = model64(attention=kind, positions=positions, window=4)
    src = tokens(2, 7)  # 7 <= 2 * window (dense local path); padded to 15 (blocked path)
    lengths = [7, 4]
    pad = right_pad(lengths, 7)
    longer = torch.cat([src, tokens(2, 8)], dim=1)  # random ids: only the mask hides them
    with torch.no_grad():
        short = model.encode(src, pad)
        long = model.encode(longer, right_pad(lengths, 15))
    assert torch.isfinite(long).all()
    for row, n in enumerate(lengths):
        assert (long[row, :n] - short[row, :n]).abs().max().item() < 1e-12


# ---- 7. overfit one batch ------------------------------------------------------------------
def fit(model: nn.Module, loss_fn, steps: int, lr: float = 3e-3) -> float:
    """Run AdamW on one fixed batch; return the final loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss_fn().item()


def test_overfit_encoder_decoder_tokens() -> None:
    model = SciFormer(tiny(d_model=32, n_heads=4, d_ff=64, n_encoder_layers=1,
                           n_decoder_layers=1))
    src, tgt = tokens(4, 8), tokens(4, 9)

    def loss_fn() -> Tensor:
        logits = model.token_logits(model(src, tgt[:, :-1]))
        return F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1))

    start = loss_fn().item()
    assert fit(model, loss_fn, 150) < 0.05 < start


def test_overfit_encoder_only_masked() -> None:
    model = SciFormer(tiny(d_model=32, n_heads=4, d_ff=64, n_decoder_layers=0))
    assert len(model.decoder) == 0
    seqs = tokens(4, 12)
    masked = seqs.clone()
    chosen = torch.rand(4, 12) < 0.3
    masked[chosen] = VOCAB - 1  # a <mask>-like id

    def loss_fn() -> Tensor:
        logits = model.token_logits(model.encode(masked))
        return F.cross_entropy(logits[chosen], seqs[chosen])

    start = loss_fn().item()
    assert fit(model, loss_fn, 100) < 0.05 < start


def test_overfit_continuous_inputs_and_outputs() -> None:
    model = SciFormer(tiny(d_model=32, n_heads=4, d_ff=64, n_encoder_layers=1,
                           n_decoder_layers=1, vocab_size=0, input_dim=3, output_dim=3))
    assert model.embed is None and model.token_head is None
    context, future = torch.randn(4, 10, 3), torch.randn(4, 6, 3)
    dec_in = torch.cat([context[:, -1:], future[:, :-1]], dim=1)  # teacher forcing

    def loss_fn() -> Tensor:
        return F.mse_loss(model.values(model(context, dec_in)), future)

    start = loss_fn().item()
    assert fit(model, loss_fn, 100) < 0.01 < start


# ---- 8. gradient flow ----------------------------------------------------------------------
def full_pass_loss(model: SciFormer, src_values: Tensor, tgt: Tensor, src_pad: Tensor) -> Tensor:
    """A pass through every part: continuous encoder input, token decoder, both heads."""
    h = model.decode(tgt[:, :-1], model.encode(src_values, src_pad), src_pad)
    ce = F.cross_entropy(model.token_logits(h).reshape(-1, VOCAB), tgt[:, 1:].reshape(-1))
    return ce + model.values(h).pow(2).mean()


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind: str) -> None:
    model = SciFormer(tiny(attention=kind, positions="learned", input_dim=3, output_dim=2,
                           lm_head="roberta", window=2))
    src_values = torch.randn(2, 9, 3)
    src_pad = right_pad([9, 4], 9)  # 5 padded keys > window: queries that see no key
    full_pass_loss(model, src_values, tokens(2, 10), src_pad).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


# ---- 10. activation checkpointing ------------------------------------------------------------
def test_checkpointing_gives_same_loss_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = transformer.checkpoint
    monkeypatch.setattr(transformer, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = SciFormer(tiny(input_dim=3, output_dim=2)).double().train()
    src_values = torch.randn(2, 9, 3, dtype=torch.float64)
    tgt, src_pad = tokens(2, 10), right_pad([9, 6], 9)
    results = []
    for flag in (False, True):
        model.checkpointing = flag
        model.zero_grad()
        loss = full_pass_loss(model, src_values, tgt, src_pad)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == 4, "every encoder and decoder layer should be checkpointed once"
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert (loss_a - loss_b).abs().item() < 1e-12
    for name, g in grads_a.items():
        assert (g - grads_b[name]).abs().max().item() < 1e-12, name


# ---- 11. tied token head ---------------------------------------------------------------------
def test_token_head_is_tied_to_embedding(tmp_path) -> None:
    model = SciFormer(tiny())
    state = model.state_dict()
    assert "embed.weight" in state
    assert not any(k.startswith("token_head") and k.endswith("weight") for k in state)
    h = torch.randn(2, 3, 16)
    want = h @ model.embed.weight.T + model.token_head.bias
    assert torch.allclose(model.token_logits(h), want)
    with torch.no_grad():  # the head follows the embedding: one matrix, not a copy
        model.embed.weight[5].add_(1.0)
    assert torch.allclose(model.token_logits(h), h @ model.embed.weight.T + model.token_head.bias)

    save_file(model.state_dict(), tmp_path / "a.safetensors")
    save_model(model, str(tmp_path / "b.safetensors"))
    assert set(load_file(tmp_path / "b.safetensors")) == set(state)
    fresh = SciFormer(tiny())
    fresh.load_state_dict(load_file(tmp_path / "a.safetensors"))
    assert torch.equal(fresh.token_logits(h), model.token_logits(h))


def test_untied_head_has_its_own_matrix() -> None:
    model = SciFormer(tiny(tie_embeddings=False))
    assert "token_head.proj.weight" in model.state_dict()


@pytest.mark.parametrize("kind", ["scaled_dot", "dot", "local"])
def test_attention_dropout_is_its_own_knob(kind: str) -> None:
    """model.dropout leaves attention probabilities alone (the fused kernel stays usable);
    model.attention_dropout alone makes two training passes differ, and not in eval mode."""
    x = torch.randint(0, VOCAB, (2, 9))

    def two_passes(model: SciFormer) -> tuple[Tensor, Tensor]:
        return model.encode(x), model.encode(x)

    only_attn = SciFormer(tiny(attention=kind, dropout=0.0, attention_dropout=0.5)).train()
    a, b = two_passes(only_attn)
    assert not torch.allclose(a, b)
    a, b = two_passes(only_attn.eval())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    residual_only = SciFormer(tiny(attention=kind, dropout=0.5, attention_dropout=0.0))
    kernels = [m for m in residual_only.modules() if isinstance(m, tuple(KERNELS.values()))]
    assert kernels and all(getattr(k, "dropout", 0.0) == 0.0 for k in kernels)


@pytest.mark.parametrize("kind, positions, norm", [
    ("scaled_dot", "rotary", "pre"), ("scaled_dot", "sinusoidal", "post"),
    ("dot", "learned", "pre"), ("additive", "rotary", "post"), ("linear", "rotary", "pre"),
    ("local", "rotary", "pre")])
def test_encode_select_equals_full_encode_at_the_selected_positions(kind, positions, norm):
    """Sparse prediction (the last layer computed only at the selected positions) gives the
    full encoder's outputs there, with padding, uneven selections and a row with none;
    gradients agree too."""
    torch.set_default_dtype(torch.float64)
    try:
        model = SciFormer(tiny(attention=kind, positions=positions, norm=norm, dropout=0.0,
                               n_decoder_layers=0))
        x = torch.randint(0, VOCAB, (3, 11))
        pad = torch.zeros(3, 11, dtype=torch.bool)
        pad[1, 8:] = True
        select = torch.zeros(3, 11, dtype=torch.bool)
        select[0, [0, 4, 5, 10]] = True
        select[1, [2, 7]] = True  # row 2 selects nothing
        full = model.encode(x, pad)[select]
        sparse = model.encode(x, pad, select=select)
        torch.testing.assert_close(sparse, full, rtol=1e-12, atol=1e-12)
        g_full = torch.autograd.grad(full.square().sum(), list(model.parameters()),
                                     allow_unused=True)
        g_sparse = torch.autograd.grad(model.encode(x, pad, select=select).square().sum(),
                                       list(model.parameters()), allow_unused=True)
        for a, b in zip(g_full, g_sparse):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)
