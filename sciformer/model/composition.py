"""Composition prior: the protein's own residue composition added to the masked-residue logits.

With ``model.composition_prior`` the token logits at a position are

    logits(h) + gate * log p(a),   p(a) = (c_a + alpha pi_a) / (n + alpha)

over the residue ids (pi_a > 0; the other ids, never a residue, get p = `OTHER_P`), where c
are the counts of the residues *visible in the input* the model reads (a ``<mask>``, special
or padding token is not a residue, so masked positions are left out, as the `composition`
baseline of `sciformer.evaluation.masked_baselines` leaves them out), n their sum, and pi
the training residue frequencies (add-one, as that baseline's prior). ``gate`` and
``alpha`` are learned (alpha as its log); pi is a buffer set from the training counts before
the first step and stored with the weights. ``model.composition_scope`` says which input:
``window``, the piece the transformer reads (at most ``data.crop_length`` residues);
``protein``, the whole protein's visible residues: the piece's plus the counts of the rest
of the protein, which the caller passes as `outside` (`outside_counts`). With ``gate = 1``
and logits equal for every residue, the model's prediction is exactly that baseline's on
the same visible residues; the transformer only has to learn what goes beyond the protein's
composition.

The term is a function of the input tokens alone, so it is the same in training, `evaluate`,
pseudo-perplexity, fill-masks and variant scoring (all call `SciFormer.token_logits` with the
input tokens). Embeddings are the transformer's states and do not include it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from sciformer.compiling import eager

if TYPE_CHECKING:
    from sciformer.config import ModelConfig

ALPHA_INIT = 100.0  # a protein's counts weigh as much as 100 residues of the prior at the start
OTHER_P = 1e-8  # p of the ids that are no residue (<cls>, <pad>, <eos>, <mask>, ...): finite
SCOPES = ("window", "protein")  # model.composition_scope: what the counts cover


class CompositionPrior(nn.Module):
    """(tokens, select) -> gate * log p(composition of the visible residues), per position."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.register_buffer("prior", torch.zeros(vocab_size))  # pi; set by `set_prior`
        self.log_alpha = nn.Parameter(torch.tensor(math.log(ALPHA_INIT)))
        self.gate = nn.Parameter(torch.tensor(1.0))

    def set_prior(self, frequencies: Tensor) -> None:
        """pi: (V,) non-negative, > 0 exactly at the residue ids; normalised here."""
        frequencies = torch.as_tensor(frequencies, dtype=torch.float32).flatten()
        if frequencies.shape != self.prior.shape or bool((frequencies < 0).any()) \
                or float(frequencies.sum()) <= 0:
            raise ValueError(f"composition prior: {tuple(self.prior.shape)} non-negative "
                             f"frequencies with a positive sum expected")
        with torch.no_grad():
            self.prior.copy_(frequencies / frequencies.sum())

    def probabilities(self, tokens: Tensor, outside: Tensor | None = None) -> Tensor:
        """(B, V) p(a) of each input row from its visible residues (ids where pi > 0), plus
        `outside` (B, V): counts of residues the row's protein has outside its piece."""
        pi = self.prior.float()
        if not bool((pi > 0).any()):
            raise ValueError("composition prior: no residue frequencies set (set_prior)")
        counts = torch.zeros(tokens.shape[0], pi.shape[0], device=tokens.device)
        counts.scatter_add_(1, tokens.long(), torch.ones(tokens.shape, device=tokens.device))
        if outside is not None:
            counts = counts + outside.to(counts)
        counts = counts * (pi > 0)
        alpha = self.log_alpha.float().exp()
        return (counts + alpha * pi) / (counts.sum(dim=1, keepdim=True) + alpha)

    def forward(self, tokens: Tensor, select: Tensor | None = None,
                outside: Tensor | None = None) -> Tensor:
        """The term to add to the logits: (N, V) at the `select`ed positions (in the order of
        ``x[select]``), else (B, 1, V) for every position of each row."""
        residue = self.prior > 0
        p = self.probabilities(tokens, outside)
        logp = torch.where(residue, p.clamp_min(1e-30).log(), math.log(OTHER_P))
        term = self.gate.float() * logp  # (B, V)
        return term[:, None, :] if select is None else term[_rows(select)]


def counts_whole_protein(cfg: ModelConfig) -> bool:
    """Whether a model of this config also counts the rest of the protein (`outside`)."""
    return bool(cfg.composition_prior) and cfg.composition_scope == "protein"


def outside_counts(seq: np.ndarray, start: int, end: int, vocab_size: int) -> np.ndarray:
    """(V,) counts of the token ids of `seq` outside ``[start, end)``: what a piece of a
    protein adds to its composition under ``composition_scope: protein`` (ids that are no
    residue, as <mask>, are dropped by the prior itself)."""
    counts = np.bincount(seq[:start], minlength=vocab_size)[:vocab_size]
    return (counts + np.bincount(seq[end:], minlength=vocab_size)[:vocab_size]).astype(np.float32)


@eager  # its output's shape depends on the data: outside the graph in a compiled step
def _rows(select: Tensor) -> Tensor:
    """The row of each True entry of `select` (B, S), in the order of ``x[select]``."""
    return torch.nonzero(select, as_tuple=True)[0]
