"""The README's Python examples run as a notebook user would (with fewer training steps)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=["proteins", "dynamics"][:len(BLOCKS)])
def test_readme_python_example_runs(i: int, tmp_path: Path, monkeypatch, capsys) -> None:
    assert len(BLOCKS) == 2
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    code = re.sub(r'"max_steps": \d+', '"max_steps": 4', BLOCKS[i])  # the API, not the skill
    code = code.replace('"d_model": 64', '"d_model": 32')
    exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert out.count("\n") >= (5 if i == 0 else 2), out
    assert os.path.isfile("runs/" + ("quickstart-protein" if i == 0 else "quickstart-l63")
                          + "/eval/metrics.json")
