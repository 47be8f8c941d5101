"""docs/configuration.md is generated from sciformer/config.py and must be current."""

from pathlib import Path

from sciformer.config import RunConfig
from sciformer.config_docs import render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_is_current():
    assert PAGE.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m sciformer.config_docs > "
        "docs/configuration.md`")


def test_every_field_is_documented_with_a_why():
    text = render()
    cfg = RunConfig().to_dict()
    for section, fields in cfg.items():
        for name in fields:
            row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{section}.{name}`"))
            assert row.rstrip(" |").split("|")[-1].strip(), f"{section}.{name} has no comment"
