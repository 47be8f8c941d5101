"""`sciformer predict`: fill masked residues / score sequences, or forecast trajectories.

The task comes from the run's config.json. Output is written atomically and streamed: rows
are produced group by group, so memory stays bounded on large inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sciformer.errors import InputError
from sciformer.io.atomic import atomic_path
from sciformer.io.fasta import FastaRecord, count_records, grouped, read_fasta
from sciformer.progress import progress_bar
from sciformer.tasks.masked import TOKENIZER, masked_log_probs
from sciformer.train.checkpoint import load_run
from sciformer.train.loop import pick_device

TOP_K = 5
GROUP = 256  # records scored together; bounds memory on large inputs


def predict(run_dir: str | Path, input_path: str | Path, out: str | Path, *,
            score: bool = False, horizon: int | None = None, device: str = "auto",
            progress: bool = False, variants: str | Path | None = None) -> Path:
    """Run the model of `run_dir` on `input_path` and write predictions to `out`.

    With `variants` (a CSV of mutations), `input_path` is the wild-type FASTA and `out` a CSV
    of variant-effect scores (`sciformer.variants`).
    """
    if variants is not None:
        from sciformer.variants import score_variants

        return score_variants(run_dir, input_path, variants, out, device=device)
    dev = pick_device(device)
    model, cfg, extra = load_run(run_dir, dev)
    if extra.get("task") == "forecast":
        from sciformer.tasks.forecast import predict_forecast

        return predict_forecast(model, cfg, extra, Path(input_path), Path(out), horizon, dev,
                                progress)
    writer = _score_rows if score else _mask_rows
    total = count_records(input_path) if progress else None
    with atomic_path(out) as tmp, open(tmp, "w") as fh, \
            progress_bar(total, "predict", "seq", progress) as bar:
        for line in writer(model, cfg, Path(input_path), dev, bar):
            fh.write(line + "\n")
    return Path(out)


def _groups(path: Path) -> Iterator[list[FastaRecord]]:
    return grouped(read_fasta(path), GROUP)


def _mask_rows(model, cfg, path: Path, device: torch.device, bar: tqdm) -> Iterator[str]:
    """One TSV row per <mask>: record, 1-based position, top-5 residues with probabilities."""
    header = ["record", "position"] + [f"{k}{i}" for i in range(1, TOP_K + 1) for k in ("aa", "p")]
    yield "\t".join(header)
    n_masks = 0
    residue_ids = np.arange(4, 4 + 25)  # predictions are restricted to residue letters L..O
    for group in _groups(path):
        tokens = TOKENIZER.encode_many([r.sequence for r in group], add_special=False)
        queries = [np.flatnonzero(t == TOKENIZER.mask_id) for t in tokens]
        for i, logp in masked_log_probs(model, tokens, queries, cfg.data.crop_length,
                                        cfg.data.tokens_per_batch, device):
            probs = np.exp(logp[:, residue_ids])
            probs /= probs.sum(axis=1, keepdims=True)
            for pos, p in zip(queries[i], probs):
                best = np.argsort(-p)[:TOP_K]
                cells = [f"{TOKENIZER.alphabet[residue_ids[b]]}\t{p[b]:.4f}" for b in best]
                yield "\t".join([group[i].id, str(pos + 1), *cells])
            n_masks += len(queries[i])
        bar.update(len(group))
    if n_masks == 0:
        raise InputError(f"{path}: no <mask> tokens found; write <mask> where residues should be "
                         "predicted, or pass --score for pseudo-perplexity")


def _score_rows(model, cfg, path: Path, device: torch.device, bar: tqdm) -> Iterator[str]:
    """Pseudo-perplexity per record: mask each residue in turn (Salazar et al. 2020)."""
    yield "record\tlength\tpseudo_perplexity\tmean_log_prob"
    for group in _groups(path):
        for rec in group:
            seq = TOKENIZER.encode(rec.sequence, add_special=False)
            logp = _one_at_a_time(model, cfg, seq, device)
            mean = float(logp.mean())
            yield f"{rec.id}\t{len(seq)}\t{np.exp(-mean):.4f}\t{mean:.4f}"
            bar.update(1)


def _one_at_a_time(model, cfg, seq: np.ndarray, device: torch.device) -> np.ndarray:
    """log p(true residue) at every position, each masked alone (L masked copies, batched)."""
    copies, queries = [], []
    for pos in range(len(seq)):
        c = seq.copy()
        c[pos] = TOKENIZER.mask_id
        copies.append(c)
        queries.append(np.array([pos]))
    out = np.empty(len(seq))
    for i, logp in masked_log_probs(model, copies, queries, cfg.data.crop_length,
                                    cfg.data.tokens_per_batch, device):
        out[i] = logp[0, seq[i]]
    return out
