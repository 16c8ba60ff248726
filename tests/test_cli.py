"""The ``iapo`` command line: ``envs`` and ``oracle``, checked against independently computed Q."""

from __future__ import annotations

import itertools
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from brute import mv_brute_force_vectorized
from iapo.cli import main


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def oracle_json(env: str) -> dict[str, Any]:
    result = run("oracle", env, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # progress bars go to stderr


# --- independent Q ------------------------------------------------------------------------------


def credit_by_sequences(probs: np.ndarray, gold: int, n: int) -> float:
    """MV credit summed over every sequence of n answers (L^n of them)."""
    total = 0.0
    for seq in itertools.product(range(probs.size), repeat=n):
        pr = math.prod(float(probs[i]) for i in seq)
        if pr == 0.0:
            continue
        votes = np.bincount(seq, minlength=probs.size)
        top = votes.max()
        if votes[gold] == top:
            total += pr / int((votes == top).sum())
    return total




def math_credit(prompts: list[int], ns: list[int]) -> np.ndarray:
    """Mean MV credit over all math queries, straight from the raw answer counts: [P', len(ns)]."""
    with resources.files("iapo.envs").joinpath("data", "math.npz").open("rb") as fh:
        with np.load(fh) as f:
            counts = f["answer_counts"].astype(np.float64)[prompts]
            gold = f["gold"].astype(np.int64)
            total = float(f["samples_per_pair"])
    probs = counts / total  # [P', X, L]
    n_prompts, n_queries, n_cat = probs.shape
    gold_first = np.empty_like(probs)
    for x in range(n_queries):
        order = [gold[x], *[c for c in range(n_cat) if c != gold[x]]]
        gold_first[:, x] = probs[:, x, order]
    rows, inverse = np.unique(gold_first.reshape(-1, n_cat), axis=0, return_inverse=True)
    credit = mv_brute_force_vectorized(rows, max(ns))[:, [n - 1 for n in ns]][inverse.reshape(-1)]
    return credit.reshape(n_prompts, n_queries, len(ns)).mean(axis=1)


def math_costs() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("iapo.envs").joinpath("data", "math.npz").open("rb") as fh:
        with np.load(fh) as f:
            return f["cost_per_completion"].astype(np.float64), f["cost_weights"].astype(float)


# --- iapo envs ----------------------------------------------------------------------------------


def test_envs_json_lists_every_shipped_environment() -> None:
    result = run("envs", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    expected = {
        "math": ("mv", 25, 316, 3),
        "commonsenseqa": ("mv", 48, 1500, 3),
        "synth-bernoulli": ("mv", 32, 520, 3),
        "synth-categorical": ("bon", 32, 512, 27),
        "helpful-harmless-smollm2": ("bon", 6, 112, 27),
        "summarization-smollm2": ("bon", 6, 104, 27),
    }
    assert set(rows) == set(expected)
    for name, (agg, prompts, queries, contexts) in expected.items():
        r = rows[name]
        assert (r["aggregator"], r["prompts"], r["queries"], r["contexts"], r["n_max"]) == (
            agg, prompts, queries, contexts, 32
        )
    assert rows["synth-categorical"]["objectives"] == ["obj1", "obj2"]
    assert rows["synth-bernoulli"]["synthetic"] and not rows["math"]["synthetic"]


def test_envs_table() -> None:
    result = run("envs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "agg"]
    by_name = {line.split()[0]: line.split()[1:6] for line in lines[1:]}
    assert by_name["commonsenseqa"] == ["mv", "48", "1500", "3", "32"]
    assert by_name["synth-categorical"] == ["bon", "32", "512", "27", "32"]


# --- iapo oracle --------------------------------------------------------------------------------


def check_shape(out: dict[str, Any], keys: list[str]) -> None:
    assert set(out) == {"env", "acr", "latency_model", "contexts"}
    assert [c["context"] for c in out["contexts"]] == keys
    for c in out["contexts"]:
        assert set(c) == {"context", "prompt", "n", "wave", "q", "paid", "waves", "latency",
                          "latency_p95"}
        assert isinstance(c["prompt"], int) and isinstance(c["n"], int)
        assert isinstance(c["q"], float)
        # the paper's arms send all N at once: one wave of N, N paid
        assert (c["wave"], c["paid"], c["waves"]) == (c["n"], c["n"], 1.0)
        assert 0 < c["latency"] <= c["latency_p95"]


def test_oracle_math_json() -> None:
    out = oracle_json("math")
    assert out["env"] == "math"
    check_shape(out, ["budget=low", "budget=mid", "budget=high"])
    # all contexts are equally likely: the ACR is the mean of the best Q's
    assert out["acr"] == pytest.approx(np.mean([c["q"] for c in out["contexts"]]), abs=1e-12)
    cost, cost_weights = math_costs()
    np.testing.assert_allclose(cost_weights, [0.0, 0.2, 1.0])
    for c, w in zip(out["contexts"], cost_weights, strict=True):
        assert 0 <= c["prompt"] < 25 and 1 <= c["n"] <= 32
        # the reported Q of the reported arm, computed from the raw counts
        credit = math_credit([c["prompt"]], [c["n"]])[0, 0]
        assert c["q"] == pytest.approx(credit - w * c["n"] * cost[c["prompt"]], abs=1e-9)
    # no arm with N <= 16 beats the reported ones (the full N range is in the hand-made test)
    ns = list(range(1, 17))
    credit = math_credit(list(range(25)), ns)  # [25, 16]
    for c, w in zip(out["contexts"], cost_weights, strict=True):
        q = credit - w * np.array(ns)[None, :] * cost[:, None]
        assert c["q"] >= q.max() - 1e-9


# a hand-made majority-voting environment: 3 prompts, 4 queries, 3 answers, 10 answers per pair
HAND_MV: dict[str, Any] = {
    "answer_counts": np.array([
        [[9, 1, 0], [1, 2, 7], [10, 0, 0], [1, 1, 8]],
        [[5, 5, 0], [4, 3, 3], [5, 1, 4], [5, 2, 3]],
        [[5, 3, 2], [2, 5, 3], [5, 1, 4], [3, 3, 4]],
    ]),
    "samples_per_pair": np.array(10),
    "gold": np.array([0, 1, 0, 2]),
    "cost_per_completion": np.array([0.01, 0.002, 0.03]),
    "budget_levels": np.array(["low", "mid", "high"]),
    "cost_weights": np.array([0.0, 0.2, 1.0]),
    "n_max": np.array(6),
}


def hand_mv_q() -> np.ndarray:
    d = HAND_MV
    probs = d["answer_counts"] / 10.0
    n_prompts, n_queries, _ = probs.shape
    n_max = int(d["n_max"])
    credit = np.array([
        [np.mean([credit_by_sequences(probs[p, x], int(d["gold"][x]), n)
                  for x in range(n_queries)]) for n in range(1, n_max + 1)]
        for p in range(n_prompts)
    ])
    n = np.arange(1, n_max + 1)
    return np.stack([credit - w * n[None, :] * d["cost_per_completion"][:, None]
                     for w in d["cost_weights"]])


def check_best(out: dict[str, Any], q: np.ndarray) -> None:
    """Each reported arm attains the largest Q of its context; the ACR is their mean."""
    for c, ctx in enumerate(out["contexts"]):
        assert ctx["q"] == pytest.approx(q[c].max(), abs=1e-9)
        assert q[c, ctx["prompt"], ctx["n"] - 1] == pytest.approx(q[c].max(), abs=1e-9)
    assert out["acr"] == pytest.approx(q.max(axis=(1, 2)).mean(), abs=1e-9)


def test_oracle_on_a_hand_made_mv_file(tmp_path: Path) -> None:
    path = tmp_path / "hand-mv.npz"
    np.savez(path, **HAND_MV)
    out = oracle_json(str(path))
    assert out["env"] == "hand-mv"
    check_shape(out, ["budget=low", "budget=mid", "budget=high"])
    q = hand_mv_q()
    check_best(out, q)
    # the polarized prompt 0 needs several votes when completions are free, fewer when not
    assert [(c["prompt"], c["n"]) for c in out["contexts"]] == [
        (int(i) // 6, int(i) % 6 + 1) for i in q.reshape(3, -1).argmax(axis=1)
    ]


HAND_BON: dict[str, Any] = {
    "aggregator": np.array("bon"),
    "scores": np.array([
        [[[1.0, 0.0, 0.1], [0.0, 1.0, 0.3], [0.5, 0.5, 0.2]],
         [[0.2, 0.2, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.4]]],
        [[[0.6, 0.6, 0.2], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]],
         [[0.3, 0.7, 0.1], [0.7, 0.3, 0.1], [0.0, 0.0, 0.0]]],
    ]),
    "probs": np.array([[[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]],
                       [[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]]),
    "objective_names": np.array(["helpful", "harmless"]),
    "objective_lower": np.array([0.0, 0.0]),
    "objective_upper": np.array([1.0, 1.0]),
    "weight_grid": np.array([[0.2, 0.8], [0.8, 0.2]]),
    "budget_levels": np.array(["low", "high"]),
    "cost_weights": np.array([0.0, 0.5]),
    "n_max": np.array(4),
}


def hand_bon_q() -> np.ndarray:
    d = HAND_BON
    scores, probs = d["scores"], d["probs"]
    n_prompts, n_queries, n_support, _ = scores.shape
    q = []
    for w in d["weight_grid"]:
        for cw in d["cost_weights"]:
            qc = np.zeros((n_prompts, int(d["n_max"])))
            for p, x in itertools.product(range(n_prompts), range(n_queries)):
                for n in range(1, int(d["n_max"]) + 1):
                    for tup in itertools.product(range(n_support), repeat=n):
                        pr = math.prod(probs[p, x, i] for i in tup)
                        best = max(float(scores[p, x, i, :2] @ w) for i in tup)
                        spend = cw * sum(scores[p, x, i, 2] for i in tup)
                        qc[p, n - 1] += pr * (best - spend) / n_queries
            q.append(qc)
    return np.stack(q)


def test_oracle_on_a_hand_made_bon_file(tmp_path: Path) -> None:
    path = tmp_path / "hand-bon.npz"
    np.savez(path, **HAND_BON)
    out = oracle_json(str(path))
    assert out["env"] == "hand-bon"
    check_shape(out, [
        "helpful=0.2,harmless=0.8,budget=low",
        "helpful=0.2,harmless=0.8,budget=high",
        "helpful=0.8,harmless=0.2,budget=low",
        "helpful=0.8,harmless=0.2,budget=high",
    ])
    check_best(out, hand_bon_q())


def test_oracle_table(tmp_path: Path) -> None:
    path = tmp_path / "hand-mv.npz"
    np.savez(path, **HAND_MV)
    result = run("oracle", str(path))
    assert result.exit_code == 0, result.output
    q = hand_mv_q()
    acr = q.max(axis=(1, 2)).mean()
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"hand-mv: optimal ACR {acr:.4f} over 4 queries; latency model")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["budget=low", "budget=mid", "budget=high"]
    for c, r in enumerate(rows):
        assert r[2] == r[3]  # one wave of N
        assert float(r[8]) == pytest.approx(q[c].max(), abs=1e-4)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_environment_exits_2_and_says_so() -> None:
    result = run("oracle", "nope")
    assert result.exit_code == 2
    assert "unknown environment 'nope'" in result.output
    assert "math" in result.output  # and it lists the known ones


def test_malformed_file_exits_2_and_names_the_problem(tmp_path: Path) -> None:
    data = dict(HAND_MV)
    data["gold"] = np.array([0, 1, 0, 3])
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    result = run("oracle", str(path), "--json")
    assert result.exit_code == 2
    assert "gold labels must be integers in 0..2" in result.output


def test_torn_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "whole.npz"
    np.savez(path, **HAND_MV)
    whole = path.read_bytes()
    torn = tmp_path / "torn.npz"
    torn.write_bytes(whole[: len(whole) // 2])
    result = run("oracle", str(torn))
    assert result.exit_code == 2, result.output
    assert "not a readable .npz file" in result.output


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = run("oracle", str(tmp_path / "absent.npz"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.output
