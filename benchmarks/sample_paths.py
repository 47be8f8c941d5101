"""Cost of probabilistic forecasts: N sample paths vs one path, same contexts and model.

`Forecaster` rolls out `samples` paths per context in one batch (the contexts repeated S
times), so the cost of S paths is one batched rollout, not S rollouts. This section times
`sample_paths` for S = 1, 10 and 100 on the shipped workflows' model shapes (`SHAPES`:
Lorenz-96, d_model 128, patch 4, context 32, trained horizon 12, 40 channels, a 36-step =
3-Lyapunov-time horizon; Kuramoto-Sivashinsky, d_model 64, patch 8, context 64, trained horizon
32, 64 grid points, 280 steps), for one context (the issue's case) and for 8, interleaved
repeats, and prints each time and its ratio to one path. Target: 100 paths cost at most ~5x
one path.
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


#: (features, patch, context, trained horizon, scored horizon, d_model) of the workflows.
SHAPES = {"lorenz96": (40, 4, 32, 12, 36, 128), "ks": (64, 8, 64, 32, 280, 64)}
#: (shape, contexts) rows measured.
CASES = (("lorenz96", 1), ("lorenz96", 8), ("ks", 1))


def run(repeats: int = 3, horizon: int | None = None,
        device: torch.device = CPU) -> list[dict[str, Any]]:
    """Rows of (shape, contexts, samples, seconds, ratio to one path) for every case of
    `CASES`; `horizon` overrides the scored horizons (a quick run)."""
    return [row for name, contexts in CASES
            for row in run_case(name, contexts, repeats, horizon, device)]


def run_case(name: str, contexts: int, repeats: int, horizon: int | None,
             device: torch.device) -> list[dict[str, Any]]:
    """The rows of one shape and number of contexts."""
    n_feat, patch, c, chunk, h, d = SHAPES[name]
    h = horizon or h
    tok = build_tokenizer("patch", patch_len=patch, n_features=n_feat)
    torch.manual_seed(0)
    model = SciFormer(ModelConfig(d_model=d, n_heads=4, n_encoder_layers=2,
                                  n_decoder_layers=2, d_ff=4 * d, dropout=0.0, vocab_size=0,
                                  input_dim=tok.token_dim,
                                  output_dim=tok.token_dim * len(LEVELS))).eval().to(device)
    ctx = torch.randn(contexts, c, n_feat, generator=torch.Generator().manual_seed(0))
    ctx = ctx.to(device)
    fns = {f"S={s}": synced(lambda s=s: sample_paths(model, tok, ctx, h, chunk, LEVELS, s),
                            device) for s in COUNTS}
    raw = interleaved(fns, repeats)
    one = median(raw["S=1"])
    return [{"shape": name, "samples": s, "contexts": contexts, "horizon": h,
             "seconds": median(raw[f"S={s}"]), "cost_vs_one_path": median(raw[f"S={s}"]) / one,
             "range": ratio_range(raw, "S=1", f"S={s}") if s > 1 else "",
             "repeats_s": raw[f"S={s}"]} for s in COUNTS]
