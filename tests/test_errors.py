"""Bad input is an InputError, shown as one line and exit status 2; anything else is a defect.

The command line turns exactly InputError (and an unknown environment, and a pull past the
budget) into a usage error; a plain ValueError from inside iapo keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import iapo.envs
from iapo.bench.runner import BenchConfig, BenchError, execute
from iapo.bound import Bound
from iapo.cli import main
from iapo.envs import DataError, MVEnvironment
from iapo.errors import InputError
from iapo.exact import mv_credit_probability
from iapo.live.scorers import check_scorer, make_extractor, make_scorer
from iapo.live.store import StoreError
from iapo.live.task import TaskError
from iapo.live.text_scorers import helpfulness
from iapo.oracle import SimulatedOracle
from iapo.policy import PolicyError
from iapo.problem import ProblemError
from iapo.pulls import Ledger, Pull
from iapo.serve.keys import KeysFileError
from iapo.serve.run import ServeError
from iapo.split import train_test_split


def _mv_env() -> MVEnvironment:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=(2, 5))
    return MVEnvironment("tiny-mv", probs, np.array([0, 1, 2, 0, 1]), [0.01, 0.02],
                         {"low": 0.0, "high": 1.0}, n_max=3, cacheable=False)


# --- the command line: InputError is bad usage, any other ValueError a defect ----------------


def _failing_get_environment(error: Exception) -> object:
    def get_environment(name: str) -> object:
        raise error

    return get_environment


def test_an_internal_value_error_is_not_shown_as_bad_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `iapo oracle` imports get_environment from iapo.envs when it runs
    monkeypatch.setattr(iapo.envs, "get_environment",
                        _failing_get_environment(ValueError("internal")))
    result = CliRunner().invoke(main, ["oracle", "math"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)
    assert not isinstance(result.exception, InputError)
    assert str(result.exception) == "internal"
    assert "Usage:" not in result.output


def test_an_input_error_is_one_line_and_exit_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iapo.envs, "get_environment",
                        _failing_get_environment(InputError("bad thing; do X")))
    result = CliRunner().invoke(main, ["oracle", "math"])
    assert result.exit_code == 2
    assert "bad thing; do X" in result.output
    assert "Traceback" not in result.output


def test_a_subclass_of_input_error_is_bad_usage_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iapo.envs, "get_environment",
                        _failing_get_environment(DataError("gold must be integers")))
    result = CliRunner().invoke(main, ["oracle", "math"])
    assert result.exit_code == 2 and "gold must be integers" in result.output


def test_other_exceptions_keep_their_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iapo.envs, "get_environment",
                        _failing_get_environment(KeyError("a dict key")))
    result = CliRunner().invoke(main, ["oracle", "math"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_an_unknown_environment_stays_bad_usage() -> None:
    result = CliRunner().invoke(main, ["oracle", "no-such-env"])
    assert result.exit_code == 2 and "no-such-env" in result.output


# --- every user-facing error class derives from InputError -----------------------------------


@pytest.mark.parametrize(
    "cls",
    [ProblemError, PolicyError, DataError, TaskError, StoreError, BenchError, ServeError,
     KeysFileError],
)
def test_error_classes_are_input_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, InputError)
    assert issubclass(cls, ValueError)  # `except ValueError` still catches them


# --- bad input raises InputError with a message that names it --------------------------------


def test_a_split_needs_two_queries_and_a_fraction_inside_0_1() -> None:
    with pytest.raises(InputError, match="at least 2 queries.*got 1"):
        train_test_split(1, 0)
    with pytest.raises(InputError, match=r"test_fraction 1\.5 must lie strictly between 0 "
                                         r"and 1"):
        train_test_split(10, 0, 1.5)


def test_the_oracle_checks_its_training_queries_and_budget() -> None:
    env = _mv_env()
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="at least one training query"):
        SimulatedOracle(env, [], 10, rng)
    with pytest.raises(InputError, match=r"training queries must lie in 0\.\.4.*'tiny-mv'"):
        SimulatedOracle(env, [0, 5], 10, rng)
    with pytest.raises(InputError, match="budget T=-3 must be a non-negative integer"):
        SimulatedOracle(env, [0, 1], -3, rng)


@pytest.mark.parametrize(
    ("bad", "message"),
    [(Pull(2, 1, 1), r"prompt 2; prompts are 0\.\.1"), (Pull(0, 1, -1), "count -1"),
     (Pull(0, 4, 1), r"N=4 is outside 1\.\.3")],
)
def test_a_bad_pull_is_an_input_error(bad: Pull, message: str) -> None:
    oracle = SimulatedOracle(_mv_env(), [0, 1, 2], 100, np.random.default_rng(0))
    with pytest.raises(InputError, match=message):
        oracle.pull([bad])
    assert oracle.ledger.spent == 0


def test_q_on_no_queries_is_an_input_error() -> None:
    with pytest.raises(InputError, match="at least one query"):
        _mv_env().q([])


def test_the_bound_checks_delta() -> None:
    b = Bound(env="x", rounds=1, scale=1.0, contexts=[], h1=1.0, h2=1.0, m=1.0)
    for bad in (0.0, 1.0, 2.0):
        with pytest.raises(InputError, match=f"delta={bad} must lie strictly between 0 and 1"):
            b.budget_for(bad)


def test_exact_mv_tables_refuse_an_n_max_past_their_limit() -> None:
    with pytest.raises(InputError, match="N_max up to 1000; got 1001"):
        mv_credit_probability([[0.5, 0.5]], [0], 1001)


def test_scorer_configuration_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="scorer 'rouge' is unknown"):
        check_scorer("rouge", {})
    with pytest.raises(InputError, match="needs url"):
        check_scorer("http", {"url": "ftp://x"})
    with pytest.raises(InputError, match="module:function"):
        make_scorer("python", {"callable": "no_colon_here"})
    with pytest.raises(InputError, match="gone.py' does not exist"):
        make_scorer("python", {"callable": f"{tmp_path / 'gone.py'}:score"})
    with pytest.raises(InputError, match="cannot import module 'iapo_no_such_module'"):
        make_scorer("python", {"callable": "iapo_no_such_module:score"})
    with pytest.raises(InputError, match="label extractor needs aggregator.labels"):
        make_extractor("label", [])


def test_helpfulness_needs_a_preference_pair_as_gold() -> None:
    with pytest.raises(InputError, match="helpfulness needs gold"):
        helpfulness("q", "an answer", "just a string")


def test_a_corrupt_bench_json_is_a_bench_error(tmp_path: Path) -> None:
    (tmp_path / "bench.json").write_text("{not json")
    config = BenchConfig(envs=("synth-bernoulli",), learners=("uniform",), budgets=(10,), runs=1)
    with pytest.raises(BenchError, match=r"bench\.json is not a bench's bench\.json"):
        execute(config, tmp_path, progress=False)
    (tmp_path / "bench.json").write_text("[1, 2]")
    with pytest.raises(BenchError, match="not a JSON object"):
        execute(config, tmp_path, progress=False)


# --- internal invariants stay plain ValueErrors ----------------------------------------------


def test_internal_invariants_are_not_input_errors() -> None:
    ledger = Ledger(5)
    with pytest.raises(ValueError, match="negative") as charged:
        ledger.charge(-1)
    assert not isinstance(charged.value, InputError)
    with pytest.raises(ValueError, match="cannot refund") as refunded:
        ledger.refund(1)
    assert not isinstance(refunded.value, InputError)
