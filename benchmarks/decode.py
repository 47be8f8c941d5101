"""Autoregressive decoding speed: sciformer's key/value-cached decoding vs HF T5 `generate`.

Batch 16, a 256-token source, 64 generated steps, the training benchmark's model size:

- ``sciformer_cache``: greedy token decoding through the public model API (`encode` once,
  then `decode` of only the newest token with `new_cache`, `token_logits`, argmax): the same
  loop the bins forecaster runs, without its sampling.
- ``sciformer_forecast``: the library's `sciformer.pipelines.forecast.sample_paths` (one path) on continuous
  patches (patch length 1, 3 features, 3 quantiles): 64 cached decoder steps per call.
- ``sciformer_nocache``: the same greedy loop re-decoding the whole prefix each step.
- ``hf_t5_cache`` / ``hf_t5_nocache``: `T5ForConditionalGeneration.generate` (greedy,
  exactly 64 new tokens) with and without its cache.
- ``torch_nn_nocache``: `torch.nn.Transformer`, which has no cache, re-decoding each step.

Reported: generated tokens per second (batch x steps / seconds), median of interleaved
repeats, and sciformer_cache's speed-up over each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import CPU, interleaved, median, ratio_range, synced
from benchmarks.train_throughput import Shape, TorchEncDec
from sciformer.config import ModelConfig
from sciformer.model import SciFormer
from sciformer.pipelines.forecast import sample_paths
from sciformer.tokenizers.timeseries import build_tokenizer

STEPS = 64
BOS = 1


def _model_config(s: Shape, **kw: Any) -> ModelConfig:
    return ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_encoder_layers=s.n_layers,
                       n_decoder_layers=s.n_layers, d_ff=s.d_ff, dropout=0.0, activation="relu",
                       **kw)


@torch.no_grad()
def greedy(model: SciFormer, src: Tensor, steps: int, cache: bool) -> Tensor:
    """Greedy decoding of `steps` tokens after <bos>; with or without the key/value cache."""
    memory = model.encode(src)
    out = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    kv = model.new_cache() if cache else None
    for _ in range(steps):
        if kv is not None:
            h = model.decode(out[:, -1:], memory, cache=kv)  # (B, 1, D): only the new position
        else:
            h = model.decode(out, memory)  # (B, T, D): the whole prefix again
        out = torch.cat([out, model.token_logits(h[:, -1]).argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:]


@torch.no_grad()
def greedy_torch(model: TorchEncDec, src: Tensor, steps: int) -> Tensor:
    """Greedy decoding with `torch.nn.Transformer` (no cache: the prefix is re-decoded)."""
    memory = model.core.encoder(model.embed(src))
    out = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    for _ in range(steps):
        t = out.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=src.device)
        h = model.core.decoder(model.embed(out), memory, tgt_mask=mask, tgt_is_causal=True)
        logits = h[:, -1] @ model.embed.weight.T
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:]


def peers(s: Shape, steps: int = STEPS,
          device: torch.device = CPU) -> dict[str, Callable[[], Any]]:
    """Zero-argument decoding callables of every peer on one shared random source batch, on
    `device`; each returns once the device has finished."""
    from transformers import T5Config, T5ForConditionalGeneration

    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, s.vocab, (s.batch, s.src_len), generator=g).to(device)
    torch.manual_seed(0)
    ours = SciFormer(_model_config(s, vocab_size=s.vocab)).eval()
    n_feat, levels = 3, [0.1, 0.5, 0.9]
    tok = build_tokenizer("patch", patch_len=1, n_features=n_feat)
    cont = SciFormer(_model_config(s, vocab_size=0, input_dim=tok.token_dim,
                                   output_dim=tok.token_dim * len(levels))).eval()
    context = torch.randn(s.batch, s.src_len, n_feat, generator=g).cumsum(1).to(device)  # walks
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_model // s.n_heads, d_ff=s.d_ff,
        num_layers=s.n_layers, num_decoder_layers=s.n_layers, num_heads=s.n_heads,
        dropout_rate=0.0, feed_forward_proj="relu", decoder_start_token_id=BOS, pad_token_id=0,
        eos_token_id=2)).eval()
    tnn = TorchEncDec(s, 0.0).eval()
    for model in (ours, cont, t5, tnn):
        model.to(device)

    def t5_generate(cache: bool) -> Callable[[], Tensor]:
        return lambda: t5.generate(input_ids=src, max_new_tokens=steps, min_new_tokens=steps,
                                   do_sample=False, num_beams=1, use_cache=cache)

    fns = {
        "sciformer_cache": lambda: greedy(ours, src, steps, cache=True),
        "sciformer_forecast": lambda: sample_paths(cont, tok, context, steps, steps, levels, 1),
        "hf_t5_cache": t5_generate(True),
        "sciformer_nocache": lambda: greedy(ours, src, steps, cache=False),
        "hf_t5_nocache": t5_generate(False),
        "torch_nn_nocache": lambda: greedy_torch(tnn, src, steps),
    }
    return {name: synced(fn, device) for name, fn in fns.items()}


def run(s: Shape, repeats: int, steps: int = STEPS, skip_slow: bool = False,
        device: torch.device = CPU) -> list[dict[str, Any]]:
    """Rows of (peer, generated tokens/s, sciformer_cache's speed-up over it).

    `skip_slow` leaves out the cache-less peers (for a quick smoke run).
    """
    fns = peers(s, steps, device)
    if skip_slow:
        fns = {k: v for k, v in fns.items() if "nocache" not in k}
    raw = interleaved(fns, repeats)
    times = {k: median(v) for k, v in raw.items()}
    ours = times["sciformer_cache"]
    return [{"peer": name, "batch": s.batch, "steps": steps, "seconds": t,
             "generated_tokens_per_s": s.batch * steps / t, "sciformer_cache_speedup": t / ours,
             "speedup_range": ratio_range(raw, name, "sciformer_cache"), "repeats_s": raw[name]}
            for name, t in times.items()]
