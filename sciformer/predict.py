"""`sciformer predict`: file adapters over the pipelines.

- FASTA with `<mask>` -> TSV of the top-k residues per mask (`ProteinLM.fill_masks`);
- FASTA with `--score` -> TSV of pseudo-perplexities (`ProteinLM.pseudo_perplexity`);
- wild-type FASTA + `--variants` CSV -> CSV of variant scores (`sciformer.variants`);
- trajectory HDF5 -> forecast HDF5 with median, quantiles and optionally the sample paths
  (`Forecaster`).

Output is written atomically and streamed group by group, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sciformer.errors import InputError
from sciformer.io.atomic import atomic_path
from sciformer.io.fasta import count_records, grouped, read_fasta
from sciformer.io.outputs import check_output, run_files
from sciformer.pipelines import Forecaster, ProteinLM, load
from sciformer.progress import progress_bar

GROUP = 256  # records scored together; bounds memory on large inputs


def predict(run_dir: str | Path, input_path: str | Path, out: str | Path, *,
            score: bool = False, horizon: int | None = None, samples: int | None = None,
            write_samples: bool = False, top_k: int = 5, device: str = "auto",
            progress: bool = False, variants: str | Path | None = None,
            raw: bool = False, precision: str = "fp32") -> Path:
    """Run the model of `run_dir` on `input_path` and write predictions to `out`; forecasts
    with `raw` use the sample paths as drawn, without the run's recalibration (`precision`
    of protein runs: fp32, bf16 or auto, see `sciformer.precision`)."""
    input_path, out = Path(input_path), Path(out)
    extra = [variants] if variants is not None else []
    check_output(out, inputs=[input_path, *extra], protected=run_files(run_dir))
    pipe = load(run_dir, device, precision)
    if isinstance(pipe, Forecaster):
        _refuse(run_dir, "forecasting", score=score, variants=variants)
        if raw:
            pipe.calibration = None
        return predict_forecast(pipe, input_path, out, horizon, samples, write_samples,
                                progress)
    _refuse(run_dir, "masked-residue", horizon=horizon, samples=samples,
            write_samples=write_samples, raw=raw)
    if variants is not None:
        from sciformer.variants import score_variants_file

        return score_variants_file(pipe, input_path, Path(variants), out)
    rows = _score_rows(pipe, input_path) if score else _mask_rows(pipe, input_path, top_k)
    total = count_records(input_path) if progress else None
    with atomic_path(out) as tmp, open(tmp, "w") as fh, \
            progress_bar(total, "predict", "seq", progress) as bar:
        for line in rows(bar):
            fh.write(line + "\n")
    return out


def _refuse(run_dir: str | Path, kind: str, **options: object) -> None:
    """An option that does not apply to this run's task is an error, not silently ignored."""
    for name, value in options.items():
        if value not in (None, False):
            raise InputError(f"{run_dir}: --{name.replace('_', '-')} does not apply to a "
                             f"{kind} run")


def _mask_rows(lm: ProteinLM, path: Path, top_k: int):
    def rows(bar: tqdm) -> Iterator[str]:
        """One TSV row per <mask>: record, 1-based position, top-k residues with probabilities."""
        yield "\t".join(["record", "position"] + [f"{k}{i}" for i in range(1, top_k + 1)
                                                  for k in ("aa", "p")])
        n_masks = 0
        for group in grouped(read_fasta(path), GROUP):
            ids = [r.id for r in group]
            tokens = lm.tokens([r.sequence for r in group])
            for fills in lm.iter_fills(ids, tokens, top_k):
                for m in fills:
                    cells = [f"{a}\t{p:.4f}" for a, p in zip(m["residues"], m["probs"])]
                    yield "\t".join([m["record"], str(m["position"]), *cells])
                n_masks += len(fills)
            bar.update(len(group))
        if n_masks == 0:
            raise InputError(f"{path}: no <mask> tokens found; write <mask> where residues "
                             "should be predicted, or pass --score for pseudo-perplexity")
    return rows


def _score_rows(lm: ProteinLM, path: Path):
    def rows(bar: tqdm) -> Iterator[str]:
        """Pseudo-perplexity per record: each residue masked alone (Salazar et al. 2020)."""
        yield "record\tlength\tpseudo_perplexity\tmean_log_prob"
        for rec in read_fasta(path):
            (tokens,) = lm.tokens(rec.sequence)
            if (tokens == lm.mask_id).any():
                raise InputError(f"{path}: record '{rec.id}' holds <mask>; --score needs "
                                 "complete sequences")
            mean = float(lm.pseudo_log_likelihoods(tokens).mean())
            yield f"{rec.id}\t{len(tokens)}\t{np.exp(-mean):.4f}\t{mean:.4f}"
            bar.update(1)
    return rows


def predict_forecast(fc: Forecaster, input_path: Path, out: Path, horizon: int | None,
                     samples: int | None, write_samples: bool, progress: bool) -> Path:
    """Forecast `horizon` steps after each trajectory of `input_path`; write trajectory HDF5.

    Streams: reads the last `data.context` steps of `train.batch_size` trajectories at a time,
    samples their paths and appends median, quantiles (and, with `write_samples`, the paths)
    to the output, so memory does not grow with the number of trajectories. The output
    appears only when complete.
    """
    from sciformer.io.trajectories import TrajectoryFile
    from sciformer.io.trajectory_writer import TrajectoryWriter
    from sciformer.pipelines.forecast import summarise

    f = TrajectoryFile(input_path)
    m = f.meta
    fc.check_state_shape(m.state_shape, str(input_path))
    use = fc.check_context_length(m.n_time, str(input_path))
    horizon, samples = horizon or fc.trained_horizon, samples or fc.cfg.data.samples
    batch = max(1, fc.cfg.train.batch_size)
    fc.check_memory(min(batch, m.n_traj), horizon, samples, str(input_path))
    shape = (m.n_traj, horizon, *m.state_shape)
    with f, TrajectoryWriter(out, shape, dt=m.dt, system=m.system,
                             lyapunov_time=m.lyapunov_time, field_names=m.field_names,
                             quantile_levels=fc.levels,
                             n_samples=samples if write_samples else None,
                             attrs={"source": str(input_path), "context_steps": use,
                                    "samples": samples, "forecast_of": "steps after "
                                    "the last step of each input trajectory",
                                    "recalibrated": int(fc.calibration is not None),
                                    "first_patch_corrected": int(fc.first_patch is not None)}
                             ) as w, \
            progress_bar(m.n_traj, "predict", "traj", progress) as bar:
        for first in range(0, m.n_traj, batch):
            stop = min(first + batch, m.n_traj)
            ctx = f.windows(first, stop, m.n_time - use, use).reshape(stop - first, use, -1)
            paths = fc.sample(ctx, horizon, samples, seed=first, batch=batch)
            med, qs = summarise(paths, fc.levels)
            block = (stop - first, horizon, *m.state_shape)
            w.write(med.reshape(block), qs.reshape((len(fc.levels), *block)),
                    samples=paths.reshape((samples, *block)) if write_samples else None)
            bar.update(stop - first)
    return out
