"""The problem model: objectives, contexts, the context grid, arms and problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from iapo.problem import (
    Arm,
    Context,
    ContextGrid,
    CostObjective,
    Objective,
    Problem,
    ProblemError,
    arm_at,
    arm_index,
)

HH = (Objective("helpful"), Objective("harmless"))


def hh_grid() -> ContextGrid:
    return ContextGrid.product(HH, [(0.3, 0.7), (0.8, 0.2)], {"low": 0.0, "high": 1.0})


def problem(n_max: int = 4, n_prompts: int = 3) -> Problem:
    return Problem("toy", "bon", tuple(f"p{i}" for i in range(n_prompts)), n_max, hh_grid())


# --- objectives ---------------------------------------------------------------------------------


def test_objective_bounds_must_be_ordered() -> None:
    with pytest.raises(ProblemError, match="'helpful'.*lower bound must be below"):
        Objective("helpful", 1.0, 1.0)
    with pytest.raises(ProblemError, match="lower bound"):
        Objective("helpful", 2.0, 1.0)


def test_objective_bounds_must_be_finite() -> None:
    with pytest.raises(ProblemError, match="finite"):
        Objective("helpful", 0.0, math.inf)
    with pytest.raises(ProblemError, match="finite"):
        Objective("helpful", math.nan, 1.0)


def test_objective_needs_a_name() -> None:
    with pytest.raises(ProblemError, match="name"):
        Objective("")


def test_cost_upper_bound_must_be_positive() -> None:
    with pytest.raises(ProblemError, match="cost upper bound.*positive"):
        CostObjective("cost", 0.0)
    with pytest.raises(ProblemError, match="cost upper bound"):
        CostObjective("cost", -1.0)


# --- contexts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, -0.1, 1.0000001])
def test_context_weight_outside_unit_interval_is_rejected(bad: float) -> None:
    with pytest.raises(ProblemError, match=r"weight .* outside \[0, 1\]"):
        Context((0.5, bad), "high", 1.0)


def test_context_weights_at_the_bounds_are_fine() -> None:
    c = Context((0.0, 1.0), "high", 0.0, 1.0)
    assert c.weights == (0.0, 1.0)
    assert c.cost_weight == 0.0


def test_negative_cost_weight_is_rejected_and_named() -> None:
    with pytest.raises(ProblemError, match="cost weight -0.5 of budget 'high' is negative"):
        Context((0.5, 0.5), "high", -0.5)


def test_non_finite_weights_are_rejected() -> None:
    with pytest.raises(ProblemError, match="finite"):
        Context((math.nan,), "low", 0.0)
    with pytest.raises(ProblemError, match="finite"):
        Context((0.5,), "low", math.inf)


@pytest.mark.parametrize("pr", [-0.1, 1.5])
def test_context_probability_outside_unit_interval(pr: float) -> None:
    with pytest.raises(ProblemError, match="probability"):
        Context((0.5,), "low", 0.0, pr)


def test_context_needs_weights_and_budget_name() -> None:
    with pytest.raises(ProblemError, match="at least one objective weight"):
        Context((), "low", 0.0)
    with pytest.raises(ProblemError, match="budget"):
        Context((0.5,), "", 0.0)


# --- context grid -------------------------------------------------------------------------------


def test_probabilities_must_sum_to_one() -> None:
    ctx = (Context((0.3, 0.7), "low", 0.0, 0.5), Context((0.3, 0.7), "high", 1.0, 0.4))
    with pytest.raises(ProblemError, match="sum to 0.9; they must sum to 1"):
        ContextGrid(HH, ctx)


def test_product_probabilities_must_match_the_number_of_contexts() -> None:
    with pytest.raises(ProblemError, match="3 probabilities given for 4 contexts"):
        ContextGrid.product(HH, [(0.3, 0.7), (0.8, 0.2)], {"low": 0.0, "high": 1.0},
                            [0.2, 0.3, 0.5])


def test_grid_rejects_wrong_number_of_weights() -> None:
    with pytest.raises(ProblemError, match="has 1 weights; the grid has 2 objectives"):
        ContextGrid(HH, (Context((0.3,), "low", 0.0),))


def test_grid_rejects_duplicate_or_reserved_objective_names() -> None:
    with pytest.raises(ProblemError, match="distinct"):
        ContextGrid((Objective("a"), Objective("a")), (Context((0.5, 0.5), "low", 0.0),))
    with pytest.raises(ProblemError, match="'budget'"):
        ContextGrid((Objective("budget"),), (Context((0.5,), "low", 0.0),))


def test_grid_rejects_duplicate_contexts() -> None:
    c = Context((0.3, 0.7), "low", 0.0, 0.5)
    with pytest.raises(ProblemError, match="same weights and budget"):
        ContextGrid(HH, (c, c))


def test_grid_needs_contexts_and_objectives() -> None:
    with pytest.raises(ProblemError, match="at least one context"):
        ContextGrid(HH, ())
    with pytest.raises(ProblemError, match="at least one objective"):
        ContextGrid((), (Context((0.5,), "low", 0.0),))


def test_product_order_arrays_and_keys() -> None:
    g = hh_grid()
    assert len(g) == 4
    assert g.n_objectives == 2
    # weight vectors outer, budget levels inner
    np.testing.assert_array_equal(g.weights, [[0.3, 0.7], [0.3, 0.7], [0.8, 0.2], [0.8, 0.2]])
    np.testing.assert_array_equal(g.cost_weights, [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(g.probabilities, [0.25] * 4)
    assert g.keys == [
        "helpful=0.3,harmless=0.7,budget=low",
        "helpful=0.3,harmless=0.7,budget=high",
        "helpful=0.8,harmless=0.2,budget=low",
        "helpful=0.8,harmless=0.2,budget=high",
    ]


def test_single_objective_keys_name_only_the_budget() -> None:
    g = ContextGrid.product([Objective("correct")], [(1.0,)], {"low": 0.0, "mid": 0.2})
    assert g.keys == ["budget=low", "budget=mid"]
    assert g.index({"budget": "mid"}) == 1


def test_distinct_weights_rebuild_every_context() -> None:
    g = ContextGrid.product(HH, [(0.8, 0.2), (0.3, 0.7)], {"low": 0.0, "mid": 0.2, "high": 1.0})
    uniq, inverse = g.distinct_weights()
    assert uniq.shape == (2, 2)
    assert inverse.shape == (6,)
    np.testing.assert_array_equal(uniq[inverse], g.weights)


def test_index_finds_the_named_context() -> None:
    g = hh_grid()
    assert g.index({"helpful": 0.8, "harmless": 0.2, "budget": "high"}) == 3
    assert g.index({"helpful": "0.3", "harmless": 0.7, "budget": "low"}) == 0


def test_index_errors_say_what_is_wrong() -> None:
    g = hh_grid()
    with pytest.raises(ProblemError, match=r"unknown context key\(s\) \['style'\]"):
        g.index({"style": 1.0, "budget": "low"})
    with pytest.raises(ProblemError, match="needs 'budget'"):
        g.index({"helpful": 0.3, "harmless": 0.7})
    with pytest.raises(ProblemError, match="needs a weight for 'harmless'"):
        g.index({"helpful": 0.3, "budget": "low"})
    with pytest.raises(ProblemError, match="no context matches"):
        g.index({"helpful": 0.5, "harmless": 0.5, "budget": "low"})
    with pytest.raises(ProblemError, match="not a number"):
        g.index({"helpful": "lots", "harmless": 0.7, "budget": "low"})


# --- arms and problems --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_arm_rejects_bad_n(n: float) -> None:
    with pytest.raises(ProblemError, match=f"N={n}"):
        Arm(0, n)  # type: ignore[arg-type]


def test_arm_rejects_bad_prompt() -> None:
    with pytest.raises(ProblemError, match="prompt -1"):
        Arm(-1, 1)


@pytest.mark.parametrize("n", [0, 5, 100])
def test_problem_n_outside_n_max(n: int) -> None:
    with pytest.raises(ProblemError, match=rf"N={n} is outside 1\.\.4"):
        problem(n_max=4).check_n(n)


def test_check_n_rejects_non_integers_and_accepts_the_range() -> None:
    p = problem(n_max=4)
    with pytest.raises(ProblemError, match="outside"):
        p.check_n(2.5)  # type: ignore[arg-type]
    assert [p.check_n(n) for n in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_problem_validation() -> None:
    g = hh_grid()
    with pytest.raises(ProblemError, match="aggregator 'median' is unknown"):
        Problem("x", "median", ("a",), 4, g)  # type: ignore[arg-type]
    with pytest.raises(ProblemError, match="at least one prompt"):
        Problem("x", "bon", (), 4, g)
    with pytest.raises(ProblemError, match="N_max=0"):
        Problem("x", "bon", ("a",), 0, g)
    with pytest.raises(ProblemError, match="exactly one task objective"):
        Problem("x", "mv", ("a",), 4, g)
    one = ContextGrid.product([Objective("correct", 0.0, 1.0)], [(1.0,)], {"low": 0.0})
    assert Problem("x", "mv", ("a",), 4, one, answers=2).answers == 2
    assert Problem("x", "mv", ("a",), 4, one).answers is None
    for bad in (1, 0, 2.5, True, "a", float("nan")):
        with pytest.raises(ProblemError, match="must be an integer >= 2"):
            Problem("x", "mv", ("a",), 4, one, answers=bad)  # type: ignore[arg-type]
    with pytest.raises(ProblemError, match="applies to majority voting"):
        Problem("x", "bon", ("a",), 4, g, answers=2)


def test_problem_sizes() -> None:
    p = problem(n_max=4, n_prompts=3)
    assert (p.n_prompts, p.n_contexts, p.n_objectives, p.n_arms) == (3, 4, 2, 12)


def test_arm_index_layout_by_hand() -> None:
    # N_max = 4: arms are laid out prompt-major: (0,1) (0,2) (0,3) (0,4) (1,1) ...
    assert [arm_index(p, n, 4) for p, n in [(0, 1), (0, 4), (1, 1), (2, 3)]] == [0, 3, 4, 10]
    assert Arm.from_index(11, 4) == Arm(2, 4)


def test_the_flat_arm_index_on_arrays_by_hand() -> None:
    # N_max = 4: (prompt, n) -> prompt * 4 + n - 1, elementwise, and back
    prompts, ns = np.array([0, 0, 1, 2]), np.array([1, 4, 1, 3])
    np.testing.assert_array_equal(arm_index(prompts, ns, 4), [0, 3, 4, 10])
    back = arm_at(np.array([0, 3, 4, 10, 11]), 4)
    np.testing.assert_array_equal(back[0], [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(back[1], [1, 4, 1, 3, 4])
    assert arm_at(7, 4) == (1, 4) and arm_index(1, 4, 4) == 7
    assert Arm.from_index(10, 4) == Arm(2, 3)


@given(n_prompts=st.integers(1, 6), n_max=st.integers(1, 9))
def test_arm_index_is_a_bijection(n_prompts: int, n_max: int) -> None:
    arms = [(i, n) for i in range(n_prompts) for n in range(1, n_max + 1)]
    idx = [arm_index(i, n, n_max) for i, n in arms]
    assert sorted(idx) == list(range(n_prompts * n_max))
    assert [arm_at(i, n_max) for i in idx] == arms


def test_everything_is_frozen() -> None:
    c = Context((0.5,), "low", 0.0)
    with pytest.raises(AttributeError):
        c.cost_weight = 2.0  # type: ignore[misc]
    a = Arm(0, 1)
    with pytest.raises(AttributeError):
        a.n = 3  # type: ignore[misc]
