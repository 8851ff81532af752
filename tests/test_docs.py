"""The documentation stays true: its code runs and the CLI reference matches the commands."""

import re
import runpy
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_up_to_date():
    sys.path.insert(0, str(DOCS))
    try:
        from make_cli_reference import render
    finally:
        sys.path.remove(str(DOCS))
    assert (DOCS / "cli.md").read_text() == render(), "run: python docs/make_cli_reference.py"


@pytest.mark.slow
def test_api_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "full.yaml").write_text((DOCS.parent / "configs" / "full.yaml").read_text())
    script = tmp_path / "api_example.py"
    script.write_text(code.replace('"run.steps=20"', '"run.steps=4", "model.weights=none", "data.workers=0"'))
    ns = runpy.run_path(str(script))
    assert ns["fractions"].shape == (len(ns["corners"]), ns["scheme"].num_classes + 1)
    assert (tmp_path / "api-demo" / "pred").is_dir() and ns["predicted"].shape == ns["truth"].shape
