"""The report of a real run, for the docs: ``iapo optimize`` on the yes/no task of the live
tests (``tests/data/yesno_task.toml``) with the default learner, arms that stop once the vote
is decided and prices, against the SmolLM2-135M-Instruct server the tests use (started here
on loopback unless ``--base-url`` names a running one). Writes into ``--out`` (docs/report):
the report's per-context table (table.txt, which docs/report.md includes) and its two
figures (PNG and SVG; git keeps the PNG).

    .venv/bin/python benchmarks/experiments/report_example.py --out docs/report

Cited by docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from truncation import server_at

from iapo.live import report as live_report
from iapo.live.optimize import optimize
from iapo.live.task import load_task

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def task_text(url: str) -> str:
    text = (DATA / "yesno_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    text = text.replace('learner = "psst"\n', "").replace("budget = 32", "budget = 40")
    return text.replace("[train]", "[pricing]\ninput_per_million = 0.15\n"
                        'output_per_million = 0.6\n\n[train]\nstop = "decided"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report")
    parser.add_argument("--base-url", default=None, help="a running SmolLM2 server's /v1 URL")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with server_at(args.base_url, folder) as url:
            shutil.copy(DATA / "yesno.jsonl", folder / "yesno.jsonl")
            (folder / "task.toml").write_text(task_text(url))
            report = optimize(load_task(folder / "task.toml"), folder / "run", progress=False)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("quality-vs-n", "quality-vs-cost"):
            for suffix in (".png", ".svg"):
                shutil.copy(folder / "run" / "figures" / f"{name}{suffix}",
                            args.out / f"{name}{suffix}")
    table = live_report.md_table(live_report.context_table(report))
    (args.out / "table.txt").write_text("\n".join(table) + "\n")
    print(json.dumps({"out": str(args.out), "seconds": round(time.perf_counter() - t0, 1),
                      "test_acr": report["test_acr"]}, indent=2))


if __name__ == "__main__":
    main()
