"""Property tests: random workflow YAML and config values through the command line.

Whatever a user writes in a workflow (`sciformer run WF.yaml`) or a run config
(`sciformer pretrain --config C.yaml`), the command either succeeds or fails with exactly one
`Error:` line (exit code 1, or 2 for Click's own usage errors), never a traceback, and leaves
no output behind. Values are drawn to be adversarial: random mappings, wrong types, strings
for numbers, negative, huge and non-finite numbers, unknown keys, lists for scalars.

To stay fast every run fails before any training: the data file is an empty FASTA, which is
refused right after the config (and the stage arguments) checked out; the random strings never
name an existing file or a real simulated system. The conftest loads a derandomized profile,
so the examples are the same on every run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciformer.cli import main
from sciformer.config import RunConfig

SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.default_factory())]
            for f in dataclasses.fields(RunConfig)}
EMPTY_FASTA = "empty.fa"  # created in each example's folder: refused after the config checks

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
WORDS = st.sampled_from(["1e-3", "nan", ".inf", "-1", "0", "true", "no", "[1, 2]", "auto",
                         "learned", "cpu", "cuda:9", "masked", "forecast", "patch", "bins",
                         "lorenz6", EMPTY_FASTA, "missing.h5", "out", "run"])
NUMBERS = st.one_of(st.integers(-3, 300), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-2.0, 2.0), st.sampled_from([0, 1, 2**63, 1e308, -0.0]))
SCALARS = st.one_of(NUMBERS, WORDS, TEXT, st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
PLAUSIBLE = st.one_of(NUMBERS, WORDS, st.booleans(), st.lists(NUMBERS, max_size=3), VALUES)


def section_values(section: str) -> st.SearchStrategy:
    """{key: value} for one config section: mostly its real keys, sometimes unknown ones."""
    keys = st.one_of(*[st.sampled_from(SECTIONS.get(section, ["x"]))] * 4, TEXT)
    return st.dictionaries(keys, PLAUSIBLE, max_size=4)


SECTION_ITEMS = st.sampled_from([*SECTIONS, "optimizer"]).flatmap(
    lambda s: st.tuples(st.just(s), section_values(s) | VALUES))
CONFIGS = st.one_of(st.lists(SECTION_ITEMS, min_size=1, max_size=3).map(dict),
                    st.lists(SECTION_ITEMS, min_size=1, max_size=3).map(dict), VALUES)


def stage_args(verb: str) -> st.SearchStrategy:
    """A stage's mapping: mostly the verb's real parameter names (workflow spelling)."""
    cmd = main.commands.get(verb)
    real = sorted({ALIASES_BACK.get(p.name, p.name) for p in cmd.params}) if cmd else ["x"]
    keys = st.one_of(*[st.sampled_from(real)] * 6, TEXT)  # an unknown key now and then
    return st.dictionaries(keys, PLAUSIBLE | CONFIGS, min_size=1, max_size=6)


ALIASES_BACK = {"run_dir": "run", "input_path": "input", "overrides": "set",
                "config_file": "config"}
VERBS = ["pretrain", "predict", "evaluate", "embed", "simulate", "import-esm2", "run", "train"]
STAGE = st.sampled_from(VERBS).flatmap(lambda v: stage_args(v).map(lambda a: {v: a}))
STAGES = st.lists(st.one_of(STAGE, STAGE, STAGE, VALUES), min_size=1, max_size=3)
WORKFLOWS = st.one_of(st.fixed_dictionaries({"stages": STAGES}),
                      st.fixed_dictionaries({"name": TEXT, "stages": STAGES}),
                      st.fixed_dictionaries({"stages": STAGES}), VALUES)


def check_outcome(res, before: set[str], folder: Path) -> None:
    """Success, or one `Error:` line, exit 1/2, no traceback and no new files."""
    assert "Traceback" not in res.output, res.output
    if res.exit_code == 0:
        return
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert res.exit_code in (1, 2) and len(errors) == 1, res.output
    assert errors[0].startswith("Error: "), errors[0]
    left = {str(p.relative_to(folder)) for p in folder.rglob("*")} - before
    assert left == set(), (left, res.output)


def run_in_folder(write, args: list[str]):
    """Run the CLI in a fresh temporary folder (relative paths land there), then check it."""
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        os.chdir(folder)
        try:
            Path(EMPTY_FASTA).write_text("")
            write()
            before = {str(p.relative_to(folder)) for p in folder.rglob("*")}
            res = CliRunner().invoke(main, args)
            check_outcome(res, before, folder)
        finally:
            os.chdir(home)
    return res


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=CONFIGS)
def test_random_config_files_fail_in_one_line(config):
    def write():
        Path("c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))

    res = run_in_folder(write, ["pretrain", EMPTY_FASTA, "--out-dir", "run",
                                "--config", "c.yaml", "--device", "cpu"])
    assert res.exit_code == 1, res.output  # never trains: the config or the empty data fails
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error")][0]
    assert "c.yaml" in line or "config field '" in line or EMPTY_FASTA in line, line


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflow=WORKFLOWS)
def test_random_workflows_fail_in_one_line(workflow):
    def write():
        Path("wf.yaml").write_text(yaml.safe_dump(workflow, allow_unicode=True))

    res = run_in_folder(write, ["run", "wf.yaml"])
    assert res.exit_code == 1, res.output  # nothing a random workflow names can succeed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.tuples(st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items()
                                                  for k in ks]), SCALARS), min_size=1,
                      max_size=3))
def test_random_set_values_fail_in_one_line(items):
    sets = [a for key, value in items
            for a in ("--set", f"{key}={yaml.safe_dump(value).strip().removesuffix('...')}")]
    res = run_in_folder(lambda: None, ["pretrain", EMPTY_FASTA, "--out-dir", "run",
                                       "--device", "cpu", *sets])
    assert res.exit_code == 1, res.output
