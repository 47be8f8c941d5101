"""Evaluate a masked-residue model on held-out proteins against context-free and cheap baselines.

A fixed-seed 15% of the residues of every held-out sequence are replaced by ``<mask>`` (all of
them: at evaluation nothing is left visible or swapped) and predicted from the rest, the whole
length of every sequence covered by windows. When the file given is one the model was
trained on, only its held-out records (split.json) are scored, and the report says so.

Records are streamed in groups of `GROUP` (one random stream for the masked positions runs
through all groups, so the result does not depend on the grouping); only the compact
per-position results (8 + 2 bytes per masked residue) are kept for the metrics.

Baselines, on the same masked positions: `unigram` (training residue frequencies, from
config.json's residue counts), and `composition` and `neighbours`
(`sciformer.evaluation.masked_baselines`), fitted on the training split's proteins, which are
read again from the run's training files minus its held-out records (split.json). When those
files are gone or changed, the two fitted baselines are reported unavailable with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from sciformer.config import RunConfig
from sciformer.errors import InputError, SciformerError
from sciformer.evaluation.baselines import unigram_baseline
from sciformer.evaluation.heldout import select_unseen
from sciformer.evaluation.masked_baselines import (
    FITTED,
    MaskedScorer,
    fit_baselines,
    plot_baselines,
    unavailable,
)
from sciformer.evaluation.metrics import masked_metrics
from sciformer.evaluation.report import plot_masked_report, write_summary
from sciformer.io.fasta import count_records, grouped, read_fasta
from sciformer.io.proteins import load_proteins
from sciformer.pipelines.protein import ProteinLM
from sciformer.pipelines.residues import choose_eval_positions, evaluate_masked
from sciformer.progress import progress_bar
from sciformer.runs import MaskedState, read_split
from sciformer.tokenizers.protein import STANDARD_AMINO_ACIDS, TOKENIZER

EVAL_SEED = 20240601  # fixed: every evaluation of every model masks the same positions
GROUP = 256  # records scored together: memory stays bounded on large files


def confusion_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """20 x 20 counts over the standard amino acids (rows true, columns predicted)."""
    ids = [TOKENIZER.alphabet.index(a) for a in STANDARD_AMINO_ACIDS]
    index = np.full(TOKENIZER.vocab_size, -1)
    index[ids] = np.arange(len(ids))
    t, p = index[true.astype(int)], index[pred.astype(int)]
    ok = (t >= 0) & (p >= 0)
    conf = np.zeros((len(ids), len(ids)), dtype=np.int64)
    np.add.at(conf, (t[ok], p[ok]), 1)
    return conf, list(STANDARD_AMINO_ACIDS)


def _record_groups(data: Path, keep: list[int] | None) -> Iterator[list[np.ndarray]]:
    """Residue ids of the records to score (all, or the indices in `keep`), GROUP at a time."""
    return grouped(_records_to_score(data, keep), GROUP)


def _records_to_score(data: Path, keep: list[int] | None) -> Iterator[np.ndarray]:
    """Residue ids (uint8) of each record to score, in file order."""
    wanted = None if keep is None else set(keep)
    for r, rec in enumerate(read_fasta(data)):
        if wanted is not None and r not in wanted:
            continue
        ids = TOKENIZER.encode(rec.sequence, add_special=False)
        if (ids == TOKENIZER.mask_id).any():
            raise InputError(f"{data} line {rec.line}: record '{rec.id}' contains <mask>; "
                             "evaluate scores complete sequences (use predict to fill masks)")
        yield ids.astype(np.uint8)


def score_records(model: torch.nn.Module, cfg: RunConfig, data: Path, keep: list[int] | None,
                  device: torch.device, progress: bool = False,
                  baselines: Sequence[MaskedScorer] = ()) -> tuple[dict[str, np.ndarray], int]:
    """Masked-position results over the whole file, streamed: (log_prob, pred, true), count.

    Each of `baselines` is fed every group with the positions the model was scored on.
    """
    rng = np.random.default_rng(EVAL_SEED)  # one stream through every group
    parts: dict[str, list[np.ndarray]] = {"log_prob": [], "pred": [], "true": []}
    n_records = 0
    total = len(keep) if keep is not None else (count_records(data) if progress else None)
    bar = progress_bar(total, "evaluate", "seq", progress)
    for group in _record_groups(data, keep):
        positions = choose_eval_positions(group, cfg.data.scored_mask_rate, copy.deepcopy(rng))
        res = evaluate_masked(model, group, cfg, device, seed=rng)
        _feed_baselines(baselines, group, positions, res["true"])
        parts["log_prob"].append(res["log_prob"].astype(np.float64))
        parts["pred"].append(res["pred"].astype(np.uint8))
        parts["true"].append(res["true"].astype(np.uint8))
        n_records += len(group)
        bar.update(len(group))
    bar.close()
    dtypes = {"log_prob": np.float64, "pred": np.uint8, "true": np.uint8}
    res = {k: np.concatenate(v) if v else np.zeros(0, dtypes[k]) for k, v in parts.items()}
    return res, n_records


def _feed_baselines(baselines: Sequence[MaskedScorer], group: list[np.ndarray],
                    positions: list[np.ndarray], model_true: np.ndarray) -> None:
    """Score the baselines on the group's masked positions, checked to be the model's."""
    if not baselines:
        return
    true = np.concatenate([t[p] for t, p in zip(group, positions)]) if group else []
    if not np.array_equal(np.asarray(true, dtype=np.int64), model_true.astype(np.int64)):
        raise RuntimeError("baseline positions differ from the positions the model was scored on")
    for b in baselines:
        b.add(group, positions)


def training_tokens(run_dir: Path, state: MaskedState) -> list[np.ndarray]:
    """Residue ids of the run's training proteins: its training files minus its held-out
    records. InputError (with the reason) when they cannot be read back as they were."""
    files = [Path(p) for p in state.train_files]
    if not files:
        raise InputError(f"{run_dir}: the run records no training files (imported weights?)")
    for f in files:
        if not f.is_file():
            raise InputError(f"training file {f} not found (needed to fit the baselines)")
    split = read_split(run_dir)
    data = load_proteins(files)
    if len(data) != split.get("n_records"):
        raise InputError(f"training files {', '.join(map(str, files))} hold {len(data)} "
                         f"records, split.json says {split.get('n_records')}: changed since "
                         "pretraining")
    held = set(split.get("heldout", []))
    train = split.get("train") or [i for i in range(len(data)) if i not in held]
    return [data.tokens[i] for i in train]


def _fitted_baselines(run_dir: Path, state: MaskedState, mask_rate: float
                      ) -> tuple[list[MaskedScorer], str | None]:
    """(composition and neighbours fitted on the training split, None) or ([], reason)."""
    try:
        tokens = training_tokens(run_dir, state)
    except SciformerError as exc:
        return [], str(exc)
    counts = np.asarray(state.residue_counts, dtype=np.float64)
    positions = choose_eval_positions(tokens, mask_rate, EVAL_SEED)
    return fit_baselines(counts, tokens, positions), None


def evaluate_masked_run(lm: ProteinLM, run_dir: Path, data: Path, out_dir: Path,
                        progress: bool = False) -> dict:
    """Score `data`, write metrics.json inputs, the PNG and the summary; return metrics."""
    cfg, state = lm.cfg, lm.state
    keep, scope = select_unseen(run_dir, data, state.train_files, "record")
    fitted, reason = _fitted_baselines(run_dir, state, cfg.data.scored_mask_rate)
    res, n_records = score_records(lm.model, cfg, data, keep, lm.device, progress, fitted)
    counts = np.asarray(state.residue_counts, dtype=np.float64)
    conf, letters = confusion_matrix(res["true"], res["pred"])
    per_res = {a: float(conf[i, i] / conf[i].sum()) if conf[i].sum() else float("nan")
               for i, a in enumerate(letters)}
    plot = plot_masked_report(out_dir / "masked_report.png", per_res, conf, letters,
                              conf.sum(axis=1))
    baselines = {"unigram": unigram_baseline(counts, res["true"].astype(int))}
    if reason:
        baselines |= {name: unavailable(reason, len(res["true"])) for name in FITTED}
    baselines |= {b.name: b.metrics() for b in fitted}
    model_scores = masked_metrics(res["log_prob"], res["pred"], res["true"])
    bars = plot_baselines(out_dir / "masked_baselines.png", {"model": model_scores, **baselines})
    metrics = {
        "task": "masked",
        "n_examples": n_records,
        "n_masked": int(len(res["true"])),
        "data": str(data),
        "scope": scope,
        "model": model_scores,
        "baselines": baselines,
        "per_residue_accuracy": per_res,
        "mask_rate": cfg.data.scored_mask_rate,
        "eval_seed": EVAL_SEED,
    }
    if reason:
        metrics["baselines_unavailable"] = f"composition and neighbours not fitted: {reason}"
    write_summary(out_dir / "summary.md", metrics, title=f"Masked residues: {data.name}",
                  plots=[bars.name, plot.name])
    return metrics
