"""report.html in a real headless browser: Debian's Chromium (``make browser``) driven through
playwright. The page renders offline (file://, no network), its tables hold the policy's
arms, its figures load, and no console message or page error is an error. The screenshot is
written to build/report-screenshot.png."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from iapo.live.optimize import optimize
from iapo.live.task import load_task
from live_helpers import ScriptedServer
from test_live_units import mv_raw, write_task

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def answer_of(body: dict[str, Any]) -> str:
    """Prompt b (its template says "Question") is right more often than prompt a."""
    r = random.Random(body.get("seed"))
    right = 0.7 if "Question" in body["messages"][-1]["content"] else 0.5
    if r.random() < right:
        return "The answer is (B)."
    return r.choice(["The answer is (A).", "I am not sure.", "The answer is (C)."])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    with ScriptedServer(answer_of=answer_of, tokens_of=lambda s: 5 + (s or 0) % 7) as srv:
        raw = mv_raw(srv.base_url)
        raw["train"].update(n_max=5, budget=160, learner="psst-auto")
        raw["pricing"] = {"input_per_million": 0.5, "output_per_million": 1.5}
        task = write_task(tmp, raw, n_records=30)
        optimize(load_task(task), tmp / "run", progress=False)
    return tmp / "run"


def test_report_html_renders_its_tables_and_figures_without_console_errors(run: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's Chromium is missing: run `make browser` (make test does)"
    policy = json.loads((run / "policy.json").read_text())
    names = load_task(run.parent / "task.toml").prompts
    problems: list[str] = []
    requests: list[str] = []
    shot = ROOT / "build" / "report-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((run / "report.html").as_uri())
            page.wait_for_load_state("load")
            rows = page.locator("table.policy tbody tr")
            assert rows.count() == len(policy["policy"])
            for i, ch in enumerate(policy["policy"]):
                cells = rows.nth(i).locator("td").all_inner_texts()
                assert cells[0] == ch["context"]
                assert cells[2] == str(ch["n"])
                assert cells[1] == names[ch["prompt"]].name
            assert page.locator("table.runner-ups").count() >= 1
            images = page.locator("img")
            assert images.count() == 2
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert all(w > 100 for w in widths)  # both figures decoded
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    # nothing but the page itself and its inlined figures is loaded
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert shot.stat().st_size > 10_000


def test_report_md_and_json_hold_the_same_arms(run: Path) -> None:
    policy = json.loads((run / "policy.json").read_text())
    report = json.loads((run / "report.json").read_text())
    md = (run / "report.md").read_text()
    for ch, row in zip(policy["policy"], report["policy"], strict=True):
        assert (row["prompt_index"], row["n"]) == (ch["prompt"], ch["n"])
        assert row["train"]["q"] == ch["q_hat"]
        low, high = row["test"]["q_ci95"]
        assert low is None or low <= row["test"]["q"] <= high
        assert f"| {row['context']} | {row['prompt']} | {row['n']} | {row['train']['q']:.4f}" \
            in md
    assert "![quality-vs-n](figures/quality-vs-n.png)" in md
    for name in ("quality-vs-n", "quality-vs-cost"):
        for suffix in (".png", ".svg"):
            assert (run / "figures" / f"{name}{suffix}").stat().st_size > 1000
