"""`sciformer run workflows/NAME.yaml`: run a workflow's stages in order.

A workflow is YAML with a `stages` list; each stage is a one-key mapping naming a verb of the
`sciformer` command, with that verb's arguments and options as keys:

    name: protein-masked
    stages:
      - pretrain: {data: [data/proteins/train.faa], out_dir: runs/protein, config: {...}}
      - evaluate: {run: runs/protein, data: data/proteins/train.faa, out_dir: runs/protein/eval}
      - embed: {run: runs/protein, fasta: data/proteins/other_organisms.faa, out: emb.h5}

Stages go through the same Click commands as the command line (one table of verbs): keys are
the commands' parameter names (`out_dir`, `horizon`, `per_residue`, ...; `run` for the run
directory, `input` for predict's input, `set` for `--set`), and Click checks every value's type
and range, so a stage is refused before anything runs exactly as the command line would be.
A pretrain stage's `config` may be a file path or an inline mapping; a pretrain stage whose run
is already complete is skipped, and an interrupted one is resumed, so re-running a workflow is
cheap and safe. Paths are relative to the current directory. The evaluate stages' tables are
printed again at the end.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import click
import yaml

from sciformer.errors import ConfigError

#: Workflow keys that name a command parameter differently (readability in YAML).
ALIASES = {"run": "run_dir", "input": "input_path", "set": "overrides", "config": "config_file",
           "params": "params"}


def load_workflow(path: str | Path, commands: dict[str, click.Command]) -> dict[str, Any]:
    """Parse a workflow and turn every stage into (verb, argv), refusing bad stages up front."""
    path = Path(path)
    try:
        wf = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(wf, dict) or not isinstance(wf.get("stages"), list) or not wf["stages"]:
        raise ConfigError(f"{path}: a workflow needs a non-empty 'stages' list")
    verbs = {k: v for k, v in commands.items() if k != "run"}
    stages = []
    for i, stage in enumerate(wf["stages"], 1):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"{path}: stage {i} must be a mapping with one verb as key")
        (verb, args), = stage.items()
        source = f"{path}: stage {i} ({verb})"
        if verb not in verbs:
            raise ConfigError(f"{path}: stage {i}: unknown verb '{verb}' "
                              f"(valid: {', '.join(sorted(verbs))})")
        if not isinstance(args, dict):
            raise ConfigError(f"{source}: expected a mapping of the verb's options, got "
                              f"{type(args).__name__}")
        argv = stage_argv(verbs[verb], args, source)
        params = _parse(_dry(verbs[verb]), verb, argv, source).params  # types, ranges: now
        if verb == "pretrain":
            check_pretrain_config(params, source)
        stages.append((verb, args, argv, source))
    wf["parsed"] = stages
    return wf


def stage_argv(cmd: click.Command, args: dict[str, Any], source: str) -> list[str]:
    """The command-line arguments of one stage's mapping, for `cmd`'s parameters."""
    params = {p.name: p for p in cmd.params if p.name}
    names = {ALIASES.get(k, k): k for k in args}
    unknown = sorted(key for name, key in names.items() if name not in params)
    if unknown:
        valid = sorted({_key(n) for n in params if n not in ("help", "version")})
        raise ConfigError(f"{source}: unknown keys {unknown} (valid: {', '.join(valid)})")
    positional, options = [], []
    for name, p in params.items():
        if name not in names:
            continue
        value = args[names[name]]
        if name == "config_file" and isinstance(value, dict):
            options += [a for item in _flatten(value, source) for a in ("--set", item)]
        elif isinstance(p, click.Argument):
            positional += _strings(value, p.nargs != 1, _key(name), source)
        else:
            options += _option(p, value, _key(name), source)
    return options + ["--", *positional]


def _key(name: str) -> str:
    """The workflow key of a command parameter."""
    return next((k for k, v in ALIASES.items() if v == name), name)


def _option(p: click.Parameter, value: Any, key: str, source: str) -> list[str]:
    flag = p.opts[0]
    if getattr(p, "is_flag", False):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return [flag] if value else []
    if key == "set":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: 'set' must be a mapping of key: value")
        items = [f"{k}={_scalar(v)}" for k, v in value.items()]
    elif key == "params":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: 'params' must be a mapping of NAME: VALUE")
        items = [f"{k}={_scalar(v)}" for k, v in value.items()]
    else:
        items = _strings(value, p.multiple, key, source)
    return [a for item in items for a in (flag, item)]


def _strings(value: Any, many: bool, key: str, source: str) -> list[str]:
    values = value if isinstance(value, list) and many else [value]
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{source}: '{key}' must be {'a list of ' if many else ''}"
                              f"plain values, got {v!r}")
    return [_scalar(v) for v in values]


def _scalar(v: Any) -> str:
    """A value as the command line would spell it (lists and numbers in YAML flow style)."""
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()


def _flatten(config: dict[str, Any], source: str) -> list[str]:
    """An inline config mapping {section: {key: value}} as `section.key=value` items."""
    items = []
    for section, values in config.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: config section '{section}' must be a mapping")
        items += [f"{section}.{k}={_scalar(v)}" for k, v in values.items()]
    return items


def _parse(cmd: click.Command, verb: str, argv: list[str], source: str) -> click.Context:
    try:
        return cmd.make_context(verb, list(argv))
    except click.ClickException as exc:
        raise ConfigError(f"{source}: {exc.format_message()}") from None


def _dry(cmd: click.Command) -> click.Command:
    """`cmd` without its callback and without "must exist" on paths: files that earlier
    stages write do not exist yet when the workflow is checked."""
    params = []
    for p in cmd.params:
        if isinstance(p.type, click.Path) and p.type.exists:
            p = copy.copy(p)
            p.type = copy.copy(p.type)
            p.type.exists = False
        params.append(p)
    return click.Command(cmd.name, params=params)


def check_pretrain_config(params: dict[str, Any], source: str) -> None:
    """A pretrain stage's config must load, validate and fit the task of its data."""
    from sciformer.config import load_config
    from sciformer.config_tasks import for_task
    from sciformer.tasks import infer_task

    try:
        cfg = load_config(params.get("config_file"), params.get("overrides") or ())
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    task = infer_task(params["data"]) if cfg.data.task == "auto" else cfg.data.task
    for_task(cfg, task)


def _pretrain_argv(args: dict[str, Any], argv: list[str]) -> list[str] | None:
    """`argv` (plus --resume for an interrupted run), or None when the run is complete."""
    from sciformer.config import read_run_config
    from sciformer.train import checkpoint as ckpt

    out = Path(args["out_dir"])
    latest = ckpt.latest_checkpoint(out) if (out / ckpt.CONFIG).exists() else None
    if latest is None:
        if (out / ckpt.CONFIG).exists():
            raise ConfigError(f"{out}: holds an unfinished run with no checkpoint; remove it "
                              "first")
        return argv
    step = int(ckpt.load_train_state(latest / ckpt.STATE)["step"])
    saved = read_run_config(out / ckpt.CONFIG)[0].train.max_steps
    if step >= saved:
        click.echo(f"[pretrain] {out} is complete ({step} steps); skipping")
        return None
    click.echo(f"[pretrain] resuming {out} from step {step}")
    return ["--resume", *argv]


def run_workflow(path: str | Path, group: click.Group) -> list[dict[str, Any]]:
    """Run every stage through `group`'s commands; returns the metrics of evaluate stages."""
    from sciformer.evaluation.summary import format_table

    wf = load_workflow(path, group.commands)
    click.echo(f"Workflow {wf.get('name', Path(path).stem)}: {len(wf['parsed'])} stages")
    reports = []
    for verb, args, argv, source in wf["parsed"]:
        if verb == "pretrain":
            argv = _pretrain_argv(args, argv)
            if argv is None:
                continue
        inputs = argv[argv.index("--") + 1:]
        target = args.get("out", args.get("out_dir"))
        click.echo(f"[{verb}] {' '.join(inputs)}" + (f" -> {target}" if target else ""))
        cmd = group.commands[verb]
        began = time.perf_counter()
        with _parse(cmd, verb, argv, source) as ctx:
            result = cmd.invoke(ctx)
        click.echo(f"[{verb}] done in {time.perf_counter() - began:.0f} s")
        if verb == "evaluate":
            reports.append(result)
    for metrics in reports:
        click.echo("\n" + format_table(metrics))
    return reports
