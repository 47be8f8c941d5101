"""Config: defaults validate, overrides are typed, bad keys/values are named; shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sciformer.config import RunConfig, apply_overrides, load_config, read_run_config, save_config
from sciformer.errors import ConfigError
from sciformer.cli import main
from sciformer.workflow import load_workflow

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate():
    RunConfig().validate()


def test_override_types_are_parsed():
    cfg = apply_overrides(RunConfig(), ["train.lr=3e-4", "model.norm=post", "data.quantiles=[0.1, 0.5, 0.9]",
                                        "train.compile=true", "model.dropout=0"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.norm == "post"
    assert cfg.data.quantiles == [0.1, 0.5, 0.9]
    assert cfg.train.compile is True
    assert isinstance(cfg.model.dropout, float)


@pytest.mark.parametrize("item, words", [
    ("model.d_modl=3", ["model.d_modl", "valid keys"]),
    ("optim.lr=1", ["optim.lr"]),
    ("train.lr=fast", ["train.lr", "float"]),
    ("model.n_heads=2.5", ["model.n_heads", "int"]),
    ("train.compile=3", ["train.compile", "bool"]),
    ("train.lr", ["expected key=value"]),
])
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(RunConfig(), [item])
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("item, key", [
    ("data.mask_rate=1.5", "data.mask_rate"),
    ("model.d_model=100", "model.d_model"),  # not divisible by 8 heads
    ("model.dropout=1.0", "model.dropout"),
    ("model.attention_dropout=-0.1", "model.attention_dropout"),
    ("train.max_steps=0", "train.max_steps"),
    ("model.attention=flash", "model.attention"),
    ("model.positions=alibi", "model.positions"),
    ("data.quantiles=[0.1, 0.9]", "data.quantiles"),
])
def test_out_of_range_values_are_named(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg = load_config(None, [item])
        from sciformer.model import SciFormer

        SciFormer(cfg.model)  # kind names are checked where the model is built


def test_yaml_file_and_unknown_section(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"model": {"d_model": 64, "n_heads": 4}, "train": {"lr": 0.01}}))
    cfg = load_config(good, ["train.lr=0.02"])
    assert cfg.model.d_model == 64 and cfg.train.lr == 0.02
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_config_json_round_trip(tmp_path):
    cfg = load_config(None, ["model.d_model=64", "model.n_heads=4", "data.context=32"])
    save_config(cfg, tmp_path / "config.json", extra={"task": "forecast", "n_features": 3})
    back, extra = read_run_config(tmp_path / "config.json")
    assert back == cfg
    assert extra == {"task": "forecast", "n_features": 3}


@pytest.mark.parametrize("workflow", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_workflow_loads(workflow):
    """Every stage parses through the CLI's own commands; pretrain configs fit their task."""
    wf = load_workflow(workflow, main.commands)
    for verb, args, _, _ in wf["parsed"]:
        if verb == "pretrain":
            for data in args["data"]:
                assert (ROOT / data).exists() or any(
                    s.get("simulate", {}).get("out") == data for s in wf["stages"]), data


def test_workflow_errors(tmp_path):
    bad = tmp_path / "wf.yaml"
    bad.write_text("stages:\n  - train: {data: x}\n")
    with pytest.raises(ConfigError, match="unknown verb 'train'"):
        load_workflow(bad, main.commands)
    bad.write_text("stages:\n  - pretrain: {data: x, out: y}\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_workflow(bad, main.commands)
