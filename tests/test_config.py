"""Config: defaults validate, overrides are typed, bad keys/values are named; shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sciformer.cli import main
from sciformer.config import RunConfig, apply_overrides, load_config, read_run_config, save_config
from sciformer.errors import ConfigError
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


# ---- derived fields, task settings, registries ----------------------------------------------
def test_linear_attention_refuses_attention_dropout():
    with pytest.raises(ConfigError, match="model.attention_dropout.*'linear'"):
        apply_overrides(RunConfig(), ["model.attention=linear",
                                      "model.attention_dropout=0.1"]).validate()
    apply_overrides(RunConfig(), ["model.attention=local", "model.attention_dropout=0.1"]
                    ).validate()


@pytest.mark.parametrize("key", ["model.vocab_size=40", "model.input_dim=3",
                                 "model.output_dim=9", "model.mask_id=1"])
def test_derived_fields_cannot_be_set(key):
    with pytest.raises(ConfigError, match="computed from the data"):
        apply_overrides(RunConfig(), [key])


@pytest.mark.parametrize("task, item, words", [
    ("masked", "data.context=32", "'data.context' does not apply to masked-residue"),
    ("masked", "train.batch_size=4", "'train.batch_size' does not apply to masked-residue"),
    ("masked", "model.n_decoder_layers=2", "encoder-only"),
    ("forecast", "data.crop_length=128", "'data.crop_length' does not apply to forecasting"),
    ("forecast", "model.n_decoder_layers=0", "at least one decoder layer"),
])
def test_settings_of_the_other_task_are_errors(task, item, words):
    from sciformer.config_tasks import for_task

    with pytest.raises(ConfigError, match=words):
        for_task(apply_overrides(RunConfig(), [item]), task)


def test_for_task_fills_derived_fields_without_touching_the_users_config():
    from sciformer.config_tasks import for_task

    user = apply_overrides(RunConfig(), ["model.d_model=64"])
    done = for_task(user, "masked", vocab_size=33, input_dim=0, output_dim=0, mask_id=32)
    assert done.model.n_decoder_layers == 0 and done.model.d_model == 64
    assert user.model.n_decoder_layers == 4  # the user's object is unchanged


def test_a_saved_run_config_is_not_a_users_setting(tmp_path):
    """config.json holds derived fields and every setting; reading it back must not trip the
    user-setting checks (a resumed or loaded run)."""
    from sciformer.config import explicit_keys
    from sciformer.config_tasks import for_task

    cfg = for_task(RunConfig(), "masked", vocab_size=33, mask_id=32)
    save_config(cfg, tmp_path / "config.json", extra={"task": "masked"})
    back, extra = read_run_config(tmp_path / "config.json")
    assert back == cfg and not explicit_keys(back) and extra == {"task": "masked"}
    for_task(back, "masked", vocab_size=33)
