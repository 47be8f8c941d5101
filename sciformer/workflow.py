"""`sciformer run workflows/NAME.yaml`: run a workflow's stages in order.

A workflow is YAML with a `stages` list; each stage is a one-key mapping naming the verb:

    name: protein-masked
    stages:
      - pretrain: {data: [data/proteins/train.faa], out_dir: runs/protein, config: {...}}
      - evaluate: {run: runs/protein, data: data/proteins/train.faa, out_dir: runs/protein/eval}

Paths are relative to the current directory. A pretrain stage whose run is already complete
is skipped, and one that was interrupted is resumed, so re-running a workflow is cheap and
safe. The evaluate stages' tables are printed at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from sciformer.config import RunConfig, apply_overrides, load_config
from sciformer.errors import ConfigError
from sciformer.train import checkpoint as ckpt

STAGE_KEYS = {
    "simulate": {"system", "out", "n_traj", "n_steps", "seed", "params"},
    "pretrain": {"data", "out_dir", "config", "set"},
    "predict": {"run", "input", "out", "horizon", "score"},
    "evaluate": {"run", "data", "out_dir", "context", "horizon"},
}


def load_workflow(path: str | Path) -> dict[str, Any]:
    """Parse and check a workflow file: known verbs, known keys per verb."""
    path = Path(path)
    try:
        wf = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(wf, dict) or not isinstance(wf.get("stages"), list) or not wf["stages"]:
        raise ConfigError(f"{path}: a workflow needs a non-empty 'stages' list")
    for i, stage in enumerate(wf["stages"], 1):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"{path}: stage {i} must be a mapping with one verb as key")
        (verb, args), = stage.items()
        if verb not in STAGE_KEYS:
            raise ConfigError(f"{path}: stage {i}: unknown verb '{verb}' "
                              f"(valid: {', '.join(STAGE_KEYS)})")
        unknown = set(args or {}) - STAGE_KEYS[verb]
        if unknown:
            raise ConfigError(f"{path}: stage {i} ({verb}): unknown keys {sorted(unknown)} "
                              f"(valid: {sorted(STAGE_KEYS[verb])})")
    return wf


def stage_config(args: dict[str, Any], source: str) -> RunConfig:
    """The RunConfig of a pretrain stage: a config file path or an inline mapping, then `set`."""
    conf = args.get("config")
    sets = [f"{k}={v}" for k, v in (args.get("set") or {}).items()]
    if isinstance(conf, dict):
        cfg = RunConfig.from_dict(conf, source=source)
        return apply_overrides(cfg, sets).validate()
    return load_config(conf, sets)


def _pretrain(args: dict[str, Any], source: str, progress: bool) -> None:
    from sciformer.train.loop import pretrain

    cfg = stage_config(args, source)
    out = Path(args["out_dir"])
    data = args["data"] if isinstance(args["data"], list) else [args["data"]]
    latest = ckpt.latest_checkpoint(out) if (out / ckpt.CONFIG).exists() else None
    if latest is not None:
        step = int(ckpt.load_state(latest / ckpt.STATE)["step"])
        if step >= cfg.train.max_steps:
            click.echo(f"[pretrain] {out} is complete ({step} steps); skipping")
            return
        click.echo(f"[pretrain] resuming {out} from step {step}")
    elif (out / ckpt.CONFIG).exists():
        raise ConfigError(f"{out}: holds an unfinished run with no checkpoint; remove it first")
    click.echo(f"[pretrain] {', '.join(map(str, data))} -> {out}")
    pretrain(data, cfg, out, resume=latest is not None, progress=progress)


def run_workflow(path: str | Path, progress: bool = False) -> list[dict[str, Any]]:
    """Run every stage; returns the metrics of the evaluate stages."""
    from sciformer.evaluate.run import evaluate
    from sciformer.evaluate.summary import format_table
    from sciformer.predict import predict
    from sciformer.simulate import simulate_to_file

    wf = load_workflow(path)
    click.echo(f"Workflow {wf.get('name', Path(path).stem)}: {len(wf['stages'])} stages")
    reports = []
    for i, stage in enumerate(wf["stages"], 1):
        (verb, a), = stage.items()
        source = f"{path}: stage {i} ({verb})"
        if verb == "simulate":
            click.echo(f"[simulate] {a['system']} -> {a['out']}")
            simulate_to_file(a["system"], a["out"], a.get("n_traj", 16), a.get("n_steps", 2000),
                             a.get("seed", 0), a.get("params") or {})
        elif verb == "pretrain":
            _pretrain(a, source, progress)
        elif verb == "predict":
            click.echo(f"[predict] {a['input']} -> {a['out']}")
            predict(a["run"], a["input"], a["out"], horizon=a.get("horizon"),
                    score=a.get("score", False), progress=progress)
        else:
            click.echo(f"[evaluate] {a['data']} -> {a['out_dir']}")
            reports.append(evaluate(a["run"], a["data"], a["out_dir"], context=a.get("context"),
                                    horizon=a.get("horizon"), progress=progress))
    for metrics in reports:
        click.echo("\n" + format_table(metrics))
    return reports
