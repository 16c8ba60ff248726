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


def test_the_defaults_the_pages_state_are_the_codes() -> None:
    import dataclasses

    from iapo.learners import UCB, EpsilonGreedy, Softmax
    from iapo.settings import DEFAULT_LEARNER, PAPER_BUDGETS, ServeConfig, serve_default

    budget_page = (DOCS / "psst-budget.md").read_text()
    assert "decide in 50 equal batches" in budget_page and "20 batches, each" not in budget_page
    for spec in (EpsilonGreedy(), Softmax(), UCB()):
        assert (spec.batches, spec.growth) == (50, 1.0)
    assert "`iapo train` and task files without a `learner` use `psst-auto`" in budget_page
    assert DEFAULT_LEARNER == "psst-auto"
    assert "--budgets 1000,5000" in (DOCS / "../README.md").read_text()
    assert PAPER_BUDGETS == (1000, 2000, 5000, 10000, 20000)
    gateway = (DOCS / "gateway.md").read_text()
    assert "`--body-timeout` seconds (10 by default)" in gateway
    assert "Bodies over `--max-body` (1 MB) get 413" in gateway
    assert (serve_default("body_timeout"), serve_default("max_body")) == (10.0, 1_000_000)
    assert {f.name for f in dataclasses.fields(ServeConfig)} >= {"limits", "cors_origins"}
