"""The `sciformer` command: a thin Click layer over typed library functions.

Each command parses its options, builds a config and calls one function. Problems with user
input (`SciformerError`) end as a one-line `Error: ...` message and exit code 1, never a
traceback. Progress bars appear on a terminal only.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from sciformer.errors import SciformerError

EXISTING = click.Path(exists=True, dir_okay=False, path_type=Path)
RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


class Group(click.Group):
    """Turns SciformerError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        from sciformer.signals import Terminated, terminate_as_interrupt

        try:
            with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C
                return super().invoke(ctx)
        except SciformerError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Terminated as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


@click.group(cls=Group)
@click.version_option(package_name="sciformer")
def main() -> None:
    """Transformers on scientific sequences: proteins (FASTA) and simulations (HDF5)."""
    warnings.showwarning = _show_warning


def _progress() -> bool:
    return sys.stderr.isatty()


@main.command()
@click.argument("data", nargs=-1, required=True, type=EXISTING)
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to create (or continue with --resume).")
@click.option("--config", "config_file", type=EXISTING, help="YAML run config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set train.lr=3e-4 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint.")
@click.option("--steps", type=click.IntRange(min=1), help="Shortcut for --set train.max_steps=N.")
@click.option("--seed", type=int, help="Shortcut for --set train.seed=N.")
@click.option("--device", type=str, help="auto | cpu | cuda | cuda:N (shortcut for train.device).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (launches torchrun; DDP).")
@click.option("--init-from", "init_from", type=click.Path(exists=True, file_okay=False),
              help="Fine-tune: start from this forecasting run's weights and architecture.")
def pretrain(data, out_dir, config_file, overrides, resume, steps, seed, device, nproc,
             init_from=None) -> Path:
    """Pretrain on FASTA (masked residues) or trajectory HDF5 (forecasting) files."""
    from sciformer.config import load_config
    from sciformer.train.loop import pretrain as run

    sets = list(overrides)
    sets += [f"train.max_steps={steps}"] if steps else []
    sets += [f"train.seed={seed}"] if seed is not None else []
    sets += [f"train.device={device}"] if device else []
    sets += [f"train.init_from={init_from}"] if init_from else []
    if resume and not any(s.startswith("train.max_steps=") for s in sets):
        sets.append(f"train.max_steps={_saved_max_steps(out_dir)}")  # keep the run's length
    cfg = load_config(config_file, sets)  # a bad config fails here, before any launch
    from sciformer.train.distributed import check_launch_env

    check_launch_env()  # a stray WORLD_SIZE / RANK: one line from every process
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from sciformer.train.distributed import launch

        args = ["pretrain", *map(str, data), "--out-dir", str(out_dir)]
        args += ["--config", str(config_file)] if config_file else []
        args += [a for item in sets for a in ("--set", item)] + (["--resume"] if resume else [])
        if launch(nproc, args):
            click.get_current_context().exit(1)
        return
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    try:
        val = run(list(data), cfg, out_dir, resume=resume, progress=_progress())
    except SciformerError:
        if not rank0:
            click.get_current_context().exit(1)  # every rank fails alike; rank 0 says why
        raise
    if rank0:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in val.items())
        click.echo(f"Pretrained into {out_dir}" + (f" ({shown})" if shown else ""))
    return out_dir


def _saved_max_steps(run_dir: Path) -> int:
    """train.max_steps of an existing run (a resume without --steps keeps it)."""
    from sciformer.config import read_run_config

    return read_run_config(run_dir / "config.json")[0].train.max_steps


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.argument("input_path", type=EXISTING)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--score", is_flag=True, help="Proteins: per-sequence pseudo-perplexity instead.")
@click.option("--top-k", type=click.IntRange(1, 25), default=5, show_default=True,
              help="Proteins: residues listed per <mask>.")
@click.option("--horizon", type=click.IntRange(min=1), help="Forecast: steps to predict.")
@click.option("--samples", type=click.IntRange(1, 10_000),
              help="Forecast: sample paths per trajectory (default: the run's data.samples).")
@click.option("--write-samples", is_flag=True,
              help="Forecast: also write the sample paths (a `sample` dimension).")
@click.option("--variants", type=EXISTING,
              help="Proteins: CSV with a 'mutant' column (A42G or A42G:R57K) to score against "
                   "the wild-type FASTA given as INPUT; writes a CSV.")
@click.option("--raw", is_flag=True,
              help="Forecast: sample paths as drawn, without the run's calibration.json.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32",
              show_default=True, help="Proteins: bf16 autocast, or auto = bf16 only where the "
                                      "device has native bf16 (AVX-512-BF16/AMX, CUDA).")
@click.option("--device", default="auto", show_default=True)
def predict(run_dir, input_path, out, score, top_k, horizon, samples, write_samples, variants,
            raw, device, precision) -> Path:
    """Fill <mask> residues (TSV, top-k), score variants (CSV) or forecast (HDF5)."""
    from sciformer.predict import predict as run

    run(run_dir, input_path, out, score=score, top_k=top_k, horizon=horizon, samples=samples,
        write_samples=write_samples, device=device, progress=_progress(), variants=variants,
        raw=raw, precision=precision)
    click.echo(f"Wrote {out}")
    return out


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.argument("data", type=EXISTING)
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--context", type=click.IntRange(min=1), help="Forecast: context steps.")
@click.option("--horizon", type=click.IntRange(min=1), help="Forecast: steps to score.")
@click.option("--samples", type=click.IntRange(1, 10_000),
              help="Forecast: sample paths per window (default: the run's data.samples).")
@click.option("--probe", type=click.Choice(["sequence", "residue"]),
              help="Proteins: fit a linear probe on frozen embeddings to the labels of DATA "
                   "(CSV id,sequence,label or FASTA with label=... in the headers).")
@click.option("--label", default="label", show_default=True,
              help="Probe: the label column (CSV) or header key (FASTA).")
@click.option("--raw", is_flag=True,
              help="Forecast: score the sample paths as drawn, without the run's "
                   "calibration.json.")
@click.option("--device", default="auto", show_default=True)
def evaluate(run_dir, data, out_dir, context, horizon, samples, probe, label, raw,
             device) -> dict:
    """Score the model on held-out data against baselines; write metrics.json and plots."""
    from sciformer.evaluation.run import evaluate as run
    from sciformer.evaluation.summary import format_table

    metrics = run(run_dir, data, out_dir, context=context, horizon=horizon, samples=samples,
                  device=device, probe=probe, label=label, progress=_progress(), raw=raw)
    click.echo(format_table(metrics))
    click.echo(f"Report in {out_dir}")
    return metrics


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--method", type=click.Choice(["crps", "coverage", "crps-free"]), default="crps",
              show_default=True, help="Each lead's factor: the fair-CRPS best one among those "
              "giving the central 80% interval 78-82% coverage (crps), the one giving it exactly "
              "80% (coverage), or the fair-CRPS best one (crps-free).")
@click.option("--horizon", type=click.IntRange(min=1),
              help="Leads to fit (default: the horizon `evaluate` scores).")
@click.option("--samples", type=click.IntRange(2, 10_000),
              help="Sample paths per window (default: the run's data.samples).")
@click.option("--device", default="auto", show_default=True)
def calibrate(run_dir, method, horizon, samples, device) -> Path:
    """Fit a forecasting run's post-training corrections: a hybrid run's first-patch
    correction (RUN_DIR/first_patch.safetensors), then the spread recalibration of its sample
    paths on its validation trajectories (RUN_DIR/calibration.json; --raw in predict and
    evaluate skips the latter)."""
    from sciformer.calibrate import calibrate as run

    cal = run(run_dir, method=method, horizon=horizon, samples=samples, device=device)
    first = cal.fitted["first_patch"]
    if first["fitted"]:
        click.echo(f"Wrote {Path(run_dir) / 'first_patch.safetensors'}: validation RMS of the "
                   f"first patch's median {first['choice_rmse_before'][0]:.3g} -> "
                   f"{first['choice_rmse_after'][0]:.3g} at step 1, "
                   f"{first['choice_rmse_before'][-1]:.3g} -> "
                   f"{first['choice_rmse_after'][-1]:.3g} at step "
                   f"{len(first['choice_rmse_after'])} (token units)")
    before, after = cal.fitted["validation_before"], cal.fitted["validation_after"]
    click.echo(f"Wrote {Path(run_dir) / 'calibration.json'}: factors "
               f"{min(cal.factors):.3g}-{max(cal.factors):.3g} over {len(cal.factors)} leads "
               f"({cal.fitted['n_windows']} validation windows); 80% coverage on validation "
               f"{before['coverage_80'][0]:.2f}-{before['coverage_80'][1]:.2f} -> "
               f"{after['coverage_80'][0]:.2f}-{after['coverage_80'][1]:.2f}")
    return Path(run_dir) / "calibration.json"


@main.command()
@click.argument("run_dir", type=RUN_DIR)
@click.argument("fasta", type=EXISTING)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HDF5 file to write (re-running resumes / skips what is done).")
@click.option("--layers", default="-1", show_default=True,
              help="Comma-separated layers; 0 = input embedding, -1 = last.")
@click.option("--per-residue", is_flag=True, help="Also store every residue's vectors.")
@click.option("--pooled", type=click.Choice(["mean", "cls"]), default="mean", show_default=True)
@click.option("--tokens-per-batch", type=click.IntRange(min=1), help="Token budget per batch.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32",
              show_default=True, help="Proteins: bf16 autocast, or auto = bf16 only where the "
                                      "device has native bf16 (AVX-512-BF16/AMX, CUDA).")
@click.option("--device", default="auto", show_default=True)
def embed(run_dir, fasta, out, layers, per_residue, pooled, tokens_per_batch, device,
          precision) -> Path:
    """Embed proteins: pooled (and per-residue) vectors of chosen layers, as HDF5."""
    from sciformer.embed import embed as run

    res = run(run_dir, fasta, out, layers=layers, per_residue=per_residue, pooled=pooled,
              device=device, tokens_per_batch=tokens_per_batch, progress=_progress(),
              precision=precision)
    click.echo(f"Wrote {out}: {res.n_written} records embedded, {res.n_skipped} already done")
    return out


@main.command("import-esm2")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to create.")
@click.option("--heads", type=click.IntRange(min=1),
              help="fair-esm state dicts without rotary buffers: attention heads.")
def import_esm2(source, out, heads) -> Path:
    """Convert an ESM-2 checkpoint (HF EsmForMaskedLM folder or fair-esm .pt) into a run."""
    from sciformer.esm2 import import_esm2 as run

    run(source, out, heads=heads)  # refuses an existing --out
    click.echo(f"Imported {source} into {out}")
    return out


@main.command()
@click.argument("system", type=str)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n-traj", type=click.IntRange(min=1),
              help="Trajectories [16; zoo: per system, 4].")
@click.option("--n-steps", type=click.IntRange(min=2), help="Time steps [2000; zoo: 1024].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="System parameter, e.g. --param F=8 (repeatable).")
@click.option("--n-systems", type=click.IntRange(min=1),
              help="zoo: chaotic systems in the corpus (default 100).")
def simulate(system, out, n_traj, n_steps, seed, params, n_systems) -> Path:
    """Write reference simulations as trajectory HDF5: lorenz63, lorenz96, ks, burgers, ns2d,
    any flow of the zoo's library (docs/zoo.md), or `zoo` (a corpus of many systems)."""
    from sciformer.io.outputs import check_output
    from sciformer.simulate import SYSTEMS, simulate_to_file
    from sciformer.simulate.systems import LIBRARY

    check_output(out)
    if n_systems is not None and system != "zoo":
        raise click.BadParameter("only applies to `simulate zoo`", param_hint="--n-systems")
    if system == "zoo":
        from sciformer.simulate.zoo_io import ZooSettings, simulate_zoo

        settings = ZooSettings(n_traj=n_traj or 4, n_time=n_steps or 1024)
        s = simulate_zoo(n_systems or 100, out, seed, settings)
        click.echo(f"Wrote {s.n_systems} chaotic systems ({s.attempts} drawn) to {s.path}")
        return out
    n_traj, n_steps = n_traj or 16, n_steps or 2000
    if system in LIBRARY and system not in SYSTEMS:
        from sciformer.simulate.zoo_io import write_system_trajectories

        write_system_trajectories(system, out, n_traj, n_steps, seed, _parse_params(params))
    else:
        simulate_to_file(system, out, n_traj, n_steps, seed, _parse_params(params))
    click.echo(f"Wrote {n_traj} trajectories x {n_steps} steps of {system} to {out}")
    return out


def _parse_params(items: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"'{item}' is not NAME=NUMBER", param_hint="--param")
    return out


@main.command("run")
@click.argument("workflow", type=EXISTING)
def run_workflow(workflow) -> None:
    """Run a workflow YAML's stages in order; a stage is any verb of this command."""
    from sciformer.workflow import run_workflow as run

    run(workflow, main)


if __name__ == "__main__":  # pragma: no cover
    main()
