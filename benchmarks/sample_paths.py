"""Cost of probabilistic forecasts: N sample paths vs one path, same contexts and model.

`Forecaster` rolls out `samples` paths per context in one batch (the contexts repeated S
times), so the cost of S paths is one batched rollout, not S rollouts. This section times
`sample_paths` for S = 1, 10 and 100 on the Lorenz-96 workflow's model shape (d_model 128,
2 + 2 layers, patch 4, context 32, trained horizon 12, 40 channels) for 8 contexts and a
120-step horizon (10 re-encoded chunks), interleaved repeats, and prints each time and its
ratio to one path. Target: 100 paths cost at most ~5x one path.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import CPU, interleaved, median, ratio_range, synced
from sciformer.config import ModelConfig
from sciformer.model import SciFormer
from sciformer.pipelines.forecast import sample_paths
from sciformer.tokenizers.timeseries import build_tokenizer

LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
COUNTS = (1, 10, 100)


def run(repeats: int = 3, contexts: int = 8, horizon: int = 120,
        device: torch.device = CPU) -> list[dict[str, Any]]:
    """Rows of (samples, seconds, paths per second, ratio to one path)."""
    n_feat, patch = 40, 4
    tok = build_tokenizer("patch", patch_len=patch, n_features=n_feat)
    torch.manual_seed(0)
    model = SciFormer(ModelConfig(d_model=128, n_heads=4, n_encoder_layers=2,
                                  n_decoder_layers=2, d_ff=512, dropout=0.0, vocab_size=0,
                                  input_dim=tok.token_dim,
                                  output_dim=tok.token_dim * len(LEVELS))).eval().to(device)
    ctx = torch.randn(contexts, 32, n_feat, generator=torch.Generator().manual_seed(0))
    ctx = ctx.to(device)
    fns = {f"S={s}": synced(lambda s=s: sample_paths(model, tok, ctx, horizon, 12, LEVELS, s),
                            device) for s in COUNTS}
    raw = interleaved(fns, repeats)
    one = median(raw["S=1"])
    return [{"samples": s, "contexts": contexts, "horizon": horizon,
             "seconds": median(raw[f"S={s}"]), "cost_vs_one_path": median(raw[f"S={s}"]) / one,
             "range": ratio_range(raw, "S=1", f"S={s}") if s > 1 else "",
             "repeats_s": raw[f"S={s}"]} for s in COUNTS]
