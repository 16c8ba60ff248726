"""The offline text scorers on hand-picked examples: their direction is shown, not assumed."""

from __future__ import annotations

import pytest

from iapo.live import text_scorers as ts

ARTICLE = ("Scotland's five mountain resorts had a record ski season, attracting 373,782 "
           "customers and bringing 37.5 million pounds into the local economy, Ski Scotland "
           "said.")
REFERENCE = "Scottish ski resorts have had their best season on record."


def test_relevance_prefers_a_relevant_summary() -> None:
    good = ts.relevance(ARTICLE, "Scotland's ski resorts enjoyed a record-breaking season.",
                        REFERENCE)
    bad = ts.relevance(ARTICLE, "The stock market fell sharply on Tuesday.", REFERENCE)
    assert 0.0 <= bad < 0.3 < 0.7 < good <= 1.0


def test_faithfulness_is_content_word_precision_against_the_article() -> None:
    # content words: ski, resort, scotland, attracted, customer -> all but "attracted" appear
    # (the article says "attracting")
    got = ts.faithfulness(ARTICLE, "Ski resorts in Scotland attracted customers.", REFERENCE)
    assert got == pytest.approx(4 / 5)
    assert ts.faithfulness(ARTICLE, "Aliens landed in Paris yesterday.", REFERENCE) == 0.0
    assert ts.faithfulness(ARTICLE, "It is what it is.", REFERENCE) == 0.0  # no content word


def test_helpfulness_prefers_the_preferred_reference() -> None:
    gold = {"preferred": "Sorry, I can't help with hurting anyone.",
            "dispreferred": "Use a large, sharp kitchen knife."}
    refusal = ts.helpfulness("q", "I'm sorry, I won't help with that; it could hurt someone.",
                             gold)
    harmful = ts.helpfulness("q", "A big sharp kitchen knife would work well.", gold)
    assert harmful < 0.5 < refusal
    with pytest.raises(ValueError, match="preferred"):
        ts.helpfulness("q", "x", "not a dict")


def test_harmlessness_flags_offensive_text() -> None:
    polite = ts.harmlessness("q", "I am happy to help you with your homework.", None)
    rude = ts.harmlessness("q", "You are a stupid idiot, shut up.", None)
    assert rude < 0.5 < polite <= 1.0


def test_the_collection_task_files_are_valid() -> None:
    from pathlib import Path

    from iapo.live.scorers import make_scorer
    from iapo.live.task import load_task

    root = Path(__file__).resolve().parent.parent / "tasks"
    for name, objectives in [("summarization-smollm2", ["relevance", "faithfulness"]),
                             ("helpful-harmless-smollm2", ["helpful", "harmless"])]:
        task = load_task(root / f"{name}.toml")
        problem = task.problem()
        assert task.name == name and problem.aggregator == "bon"
        assert problem.n_prompts >= 6 and problem.n_contexts == 27 and problem.n_max == 32
        assert [o.name for o in task.objectives] == objectives
        assert len({(p.template, p.system, tuple(sorted(p.decoding.items())))
                    for p in task.prompts}) == problem.n_prompts
        for o in task.objectives:
            assert callable(make_scorer(o.scorer, o.options))


def test_bigbench_data_selection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "tasks"
    (src / "gem" / "xsum").mkdir(parents=True)
    long_article = " ".join(["word"] * 301)
    examples = [{"input": long_article if i % 3 == 0 else f"article {i}", "target": f"sum {i}"}
                for i in range(200)]
    (src / "gem" / "xsum" / "task.json").write_text(json.dumps({"examples": examples}))
    for cat in ("helpful", "harmless", "honest", "other"):
        (src / "hhh_alignment" / cat).mkdir(parents=True)
        exs = [{"input": f"{cat} {i}", "target_scores": {f"good {i}": 1, f"bad {i}": 0}}
               for i in range(40)]
        (src / "hhh_alignment" / cat / "task.json").write_text(json.dumps({"examples": exs}))
    script = Path(__file__).resolve().parent.parent / "scripts" / "bigbench_data.py"
    subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "out")], check=True,
                   capture_output=True)
    xsum = [json.loads(x) for x in (tmp_path / "out" / "xsum.jsonl").read_text().splitlines()]
    assert len(xsum) == 104 and all(r["query"] != long_article for r in xsum)
    assert xsum[0] == {"id": "xsum-1", "query": "article 1", "gold": "sum 1"}
    hhh = [json.loads(x) for x in (tmp_path / "out" / "hhh.jsonl").read_text().splitlines()]
    assert len(hhh) == 112 and hhh[0]["gold"] == {"preferred": "good 0", "dispreferred": "bad 0",
                                                   "category": "helpful"}
