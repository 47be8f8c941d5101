"""Batched inference over residue-id sequences of any length: the engine under `ProteinLM`.

Long sequences are never truncated. For log-probabilities every residue is read from the
window (of the training crop length, overlapping by a quarter) where it sits most centrally
(`window_plan`); for embeddings the windows' vectors are blended with linear ramps over each
overlap (`blend_weights`). Pieces of all sequences are batched together to a token budget
(fair-esm's recipe, closing a batch before its padding exceeds `INFERENCE_PADDING` of its
tokens) and, for log-probabilities, the last layer runs only at the queried positions
(`model.encode(..., select=...)`), as masked training does; embeddings of an earlier layer run
the encoder only that deep. `precision` "bf16" runs the model under bf16 autocast
(`sciformer.precision`); results are float32 either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sciformer.config import RunConfig
from sciformer.errors import ConfigError
from sciformer.model.composition import counts_whole_protein, outside_counts
from sciformer.precision import autocast
from sciformer.tokenizers.protein import TOKENIZER, frame, iter_windows, token_budget_batches


def padding(tokens: torch.Tensor) -> torch.Tensor | None:
    """(B, T) True at padding, or None when the batch has none (all pieces of one length, as
    the masked copies of one window are): attention then runs without a mask, which is the
    same arithmetic with less work."""
    pad = tokens == TOKENIZER.pad_id
    return pad if bool(pad.any()) else None


#: A batch is closed before its padding exceeds this fraction of its tokens: padded positions
#: cost as much as real ones, while on a CPU a batch of one sequence runs as fast per token.
INFERENCE_PADDING = 0.1


def inference_batches(lengths: list[int], tokens_per_batch: int) -> list[list[int]]:
    """Indices of pieces (framed lengths) in length-sorted batches of the token budget that
    pad at most `INFERENCE_PADDING` of their tokens."""
    return token_budget_batches(lengths, tokens_per_batch, shuffle=False,
                                max_padding=INFERENCE_PADDING)


# ---- log-probabilities -----------------------------------------------------------------------
def window_plan(length: int, window: int) -> list[tuple[int, int, np.ndarray]]:
    """[(start, end, owned positions)]: each residue owned by its most central window."""
    spans = iter_windows(length, window, overlap=window // 4) if length else []
    if len(spans) <= 1:
        return [(0, length, np.arange(length))] if length else []
    best = np.full(length, -1, dtype=np.int64)  # centrality of the owner so far
    owner = np.zeros(length, dtype=np.int64)
    for w, (s, e) in enumerate(spans):  # O(L) memory: a (W, L) table is GBs for 100k residues
        centrality = np.minimum(np.arange(e - s), np.arange(e - s)[::-1])
        better = centrality > best[s:e]  # strict: ties stay with the earlier window
        best[s:e][better] = centrality[better]
        owner[s:e][better] = w
    return [(s, e, s + np.flatnonzero(owner[s:e] == w)) for w, (s, e) in enumerate(spans)]



@torch.no_grad()  # not inference_mode: training's validation calls this (FSDP, compile)
def masked_log_probs(model: nn.Module, inputs: list[np.ndarray], queries: list[np.ndarray],
                     window: int, tokens_per_batch: int, device: torch.device,
                     precision: str = "fp32", outside: list[np.ndarray] | None = None
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Log-probabilities (n_queries, V) at the query positions of each residue-id sequence.

    `inputs[i]` are residue ids (already masked where wanted, no <cls>/<eos>); `queries[i]`
    residue positions to read. Yields (i, log_probs) in input order. For a composition prior
    that counts the whole protein (``model.composition_scope: protein``), each window also
    counts the rest of its input, plus `outside[i]` (V,): the counts of the protein beyond
    `inputs[i]` when that is itself a piece of a longer protein.
    """
    whole = counts_whole_protein(model.cfg)
    vocab = TOKENIZER.vocab_size
    pieces = []  # (seq index, window tokens, query positions within the window, order, counts)
    for i, (seq, q) in enumerate(zip(inputs, queries)):
        for s, e, owned in window_plan(len(seq), window):
            keep = np.intersect1d(owned, q)
            if not len(keep):
                continue
            counts = outside_counts(seq, s, e, vocab) if whole else None
            if whole and outside is not None:
                counts += outside[i]
            pieces.append((i, frame(seq[s:e]), keep - s + 1, keep, counts))
    results: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {i: [] for i in range(len(inputs))}
    for members in inference_batches([len(p[1]) for p in pieces], tokens_per_batch):
        tokens = TOKENIZER.pad_batch([pieces[m][1] for m in members]).to(device)
        select = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, m in enumerate(members):
            select[row, pieces[m][2]] = True
        select = select.to(device)
        rest = torch.as_tensor(np.stack([pieces[m][4] for m in members])).to(device) \
            if whole else None
        with autocast(device, precision):
            h = model.encode(tokens, padding(tokens), select=select)  # (N, D)
            logits = model.token_logits(h, tokens, select, rest)  # for a composition prior
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        bounds = np.cumsum([0] + [len(pieces[m][2]) for m in members])  # rows in select order
        for row, m in enumerate(members):
            results[pieces[m][0]].append((pieces[m][3], logp[bounds[row]:bounds[row + 1]]))
    for i, q in enumerate(queries):
        got = results.pop(i)
        pos = np.concatenate([g[0] for g in got]) if got else np.zeros(0, np.int64)
        logp = np.concatenate([g[1] for g in got]) if got else np.zeros((0, TOKENIZER.vocab_size))
        order = np.argsort(pos, kind="stable")
        yield i, logp[order][np.searchsorted(pos[order], q)] if len(q) else logp[:0]


MASKED_COPIES_PER_CALL = 512  # masked copies built at a time: memory stays bounded on long inputs


@torch.inference_mode()
def each_masked_alone(model: nn.Module, seq: np.ndarray, positions: np.ndarray, window: int,
                      tokens_per_batch: int, device: torch.device, precision: str = "fp32"
                      ) -> np.ndarray:
    """Log-probabilities (len(positions), V) at each position of `seq` with that position
    alone masked: pseudo-log-likelihood (Salazar et al. 2020) and masked-marginal variant
    scores (Meier et al. 2021) both read these.

    Each masked copy is only the window that owns the position (`window_plan`), built
    `MASKED_COPIES_PER_CALL` at a time, so memory is linear in the sequence length.
    """
    positions = np.asarray(positions, dtype=np.int64)
    owner = np.empty(len(seq), dtype=np.int64)
    plan = window_plan(len(seq), window)
    for w, (_, _, owned) in enumerate(plan):
        owner[owned] = w
    out = np.empty((len(positions), TOKENIZER.vocab_size))
    rest = [outside_counts(seq, s, e, TOKENIZER.vocab_size) for s, e, _ in plan] \
        if counts_whole_protein(model.cfg) else None  # the protein beyond each window: all visible
    for first in range(0, len(positions), MASKED_COPIES_PER_CALL):
        chunk = positions[first:first + MASKED_COPIES_PER_CALL]
        copies, queries = [], []
        for pos in chunk:
            s, e, _ = plan[owner[pos]]
            c = seq[s:e].astype(np.int64)  # a copy
            c[pos - s] = TOKENIZER.mask_id
            copies.append(c)
            queries.append(np.array([pos - s]))
        for i, logp in masked_log_probs(model, copies, queries, window, tokens_per_batch,
                                        device, precision,
                                        None if rest is None else [rest[owner[p]] for p in chunk]):
            out[first + i] = logp[0]
    return out


def choose_eval_positions(tokens: list[np.ndarray], rate: float, seed: int) -> list[np.ndarray]:
    """Fixed-seed choice of `rate` of the residues of each sequence (at least one)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in tokens:
        chosen = np.flatnonzero(rng.random(len(t)) < rate)
        if len(chosen) == 0 and len(t):
            chosen = np.array([rng.integers(len(t))])
        out.append(chosen)
    return out


def evaluate_masked(model: nn.Module, tokens: list[np.ndarray], cfg: RunConfig,
                    device: torch.device, seed: int) -> dict[str, np.ndarray]:
    """Mask a fixed-seed `data.scored_mask_rate` of residues with <mask> and score them all.

    Returns per masked position: log p(true residue), argmax prediction, true id, record index.
    """
    positions = choose_eval_positions(tokens, cfg.data.scored_mask_rate, seed)
    masked = []
    for t, pos in zip(tokens, positions):
        m = t.astype(np.int64).copy()
        m[pos] = TOKENIZER.mask_id
        masked.append(m)
    was_training = model.training
    model.eval()
    logp_true, pred, true, record = [], [], [], []
    for i, logp in masked_log_probs(model, masked, positions, cfg.data.crop_length,
                                    cfg.data.tokens_per_batch, device):
        truth = tokens[i][positions[i]].astype(np.int64)
        logp_true.append(logp[np.arange(len(truth)), truth])
        pred.append(logp.argmax(axis=1))
        true.append(truth)
        record.append(np.full(len(truth), i))
    model.train(was_training)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)
    return {"log_prob": cat(logp_true), "pred": cat(pred), "true": cat(true), "record": cat(record)}


# ---- embeddings ------------------------------------------------------------------------------
def resolve_layers(layers: list[int], n_layers: int) -> list[int]:
    """Absolute layer numbers 0..n_layers (negative counts from the end), order kept, unique."""
    out: list[int] = []
    for layer in layers:
        absolute = layer + n_layers + 1 if layer < 0 else layer
        if not 0 <= absolute <= n_layers:
            raise ConfigError(f"--layers: layer {layer} does not exist; this model has layers "
                              f"0..{n_layers} (0 = input embedding, -1 = last)")
        if absolute not in out:
            out.append(absolute)
    return out



def blend_weights(length: int, window: int, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    """[(start, end, weights)] of the windows covering 0..length.

    Inside a window the weight is 1, and over each overlap with a neighbour it ramps linearly,
    (k + 1) / (overlap + 1) from the window's inner edge, so that two neighbours' weights sum to
    one there. Every weight is > 0, so every residue is covered.
    """
    spans = iter_windows(length, window, overlap) if length else []
    out = []
    for w, (s, e) in enumerate(spans):
        weight = np.ones(e - s)
        if w > 0:
            left = spans[w - 1][1] - s  # overlap with the previous window
            weight[:left] = np.minimum(weight[:left], np.arange(1, left + 1) / (left + 1))
        if w + 1 < len(spans):
            right = e - spans[w + 1][0]
            ramp = np.arange(right, 0, -1) / (right + 1)
            weight[e - s - right:] = np.minimum(weight[e - s - right:], ramp)
        out.append((s, e, weight))
    return out



@dataclass
class _Pending:
    """Running weighted sums of one record's windows."""

    acc: np.ndarray  # (n_layers, L, D) sum of weight * vector
    weight: np.ndarray  # (L,) sum of weights
    cls: np.ndarray  # (n_layers, D) sum of the windows' <cls> vectors
    n_windows: int = 0


@torch.inference_mode()
def embed_sequences(model: nn.Module, seqs: list[np.ndarray], layers: list[int], window: int,
                    tokens_per_batch: int, device: torch.device, overlap: int | None = None,
                    precision: str = "fp32") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(i, per-residue (n_layers, L, D), <cls> (n_layers, D)) for each residue-id sequence.

    Windows of every sequence are batched together to the token budget; results come in
    input order once all of a sequence's windows are done (at the end of the call).
    """
    overlap = window // 4 if overlap is None else overlap
    pieces = [(i, s, e, wt) for i, seq in enumerate(seqs)
              for s, e, wt in blend_weights(len(seq), window, overlap)]
    d = model.cfg.d_model
    pending = [_Pending(np.zeros((len(layers), len(q), d), np.float32), np.zeros(len(q)),
                        np.zeros((len(layers), d), np.float32)) for q in seqs]
    lengths = [p[2] - p[1] + 2 for p in pieces]
    for members in inference_batches(lengths, tokens_per_batch):
        tokens = TOKENIZER.pad_batch([frame(seqs[pieces[m][0]][pieces[m][1]:pieces[m][2]])
                                      for m in members]).to(device)
        with autocast(device, precision):  # only as deep as the deepest layer asked for
            outs = model.encode(tokens, padding(tokens), return_layers=True, depth=max(layers))
        chosen = torch.stack([outs[k].float() for k in layers]).cpu().numpy()  # (n, B, T, D)
        for row, m in enumerate(members):
            i, s, e, wt = pieces[m]
            rec = pending[i]
            rec.acc[:, s:e] += chosen[:, row, 1:1 + e - s] * wt[None, :, None].astype(np.float32)
            rec.weight[s:e] += wt
            rec.cls += chosen[:, row, 0]
            rec.n_windows += 1
    for i, rec in enumerate(pending):
        per_residue = rec.acc / rec.weight[None, :, None].astype(np.float32)
        yield i, per_residue, rec.cls / max(rec.n_windows, 1)
        pending[i] = None  # type: ignore[call-overload]  # free as we go


def pool(per_residue: np.ndarray, cls: np.ndarray, how: str) -> np.ndarray:
    """(n_layers, D) vector per record: mean over residues, or the <cls> token's vector
    (averaged over windows when a long sequence needed several)."""
    return per_residue.mean(axis=1) if how == "mean" else cls
