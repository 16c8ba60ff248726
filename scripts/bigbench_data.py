"""Build the datasets of the two Best-of-N environments from BIG-bench task files.

    python scripts/bigbench_data.py BIGBENCH_DIR OUT_DIR

BIGBENCH_DIR is `bigbench/benchmark_tasks` of the `bigbench==1.0.0` sdist (the Makefile's
`bon-data` target takes it out of the sdist with pip; nothing is installed). Writes:

- OUT_DIR/xsum.jsonl: the first 104 examples of `gem/xsum/task.json` (in file order) whose
  article has at most 300 words; query = the article, gold = the reference summary.
- OUT_DIR/hhh.jsonl: the first 28 examples of each of `hhh_alignment/{helpful, harmless,
  honest, other}` (112 requests); query = the request, gold = {"preferred": the answer scored
  1, "dispreferred": the one scored 0, "category": the subset}.

The sizes keep a full collection (6 prompts x 24 completions of every pair) within a few hours
of a 2-core machine; both are above the 100 queries the environments need.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    xsum = json.loads((src / "gem" / "xsum" / "task.json").read_text())["examples"]
    rows = []
    for i, ex in enumerate(xsum):
        if len(ex["input"].split()) <= 300:
            target = ex["target"] if isinstance(ex["target"], str) else ex["target"][0]
            rows.append({"id": f"xsum-{i}", "query": ex["input"], "gold": target})
        if len(rows) == 104:
            break
    (out / "xsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hhh = []
    for cat in ("helpful", "harmless", "honest", "other"):
        task = json.loads((src / "hhh_alignment" / cat / "task.json").read_text())
        for i, ex in enumerate(task["examples"][:28]):
            scores = ex["target_scores"]
            good = [a for a, s in scores.items() if s == 1]
            bad = [a for a, s in scores.items() if s == 0]
            hhh.append({"id": f"{cat}-{i}", "query": ex["input"],
                        "gold": {"preferred": good[0], "dispreferred": bad[0], "category": cat}})
    (out / "hhh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hhh))
    print(f"{len(rows)} xsum articles, {len(hhh)} hhh requests written to {out}")


if __name__ == "__main__":
    main()
