"""The Python examples of the documentation run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_the_python_example_of_the_index_page_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = python_blocks("index.md")
    exec(compile(block, "docs/index.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("{") and "'regret'" in out[0]
    assert out[1] == "{'batches': 50, 'estimator': 'blocks', 'growth': 1.0, 'epsilon': 0.05}"
    assert out[2].startswith("Choice(prompt=") and out[2].endswith(" 2000")
