"""The paper's evaluation protocol ("Evaluation Protocol") as a resumable, parallel bench.

For every run r of every environment: an 80/20 split of the queries drawn from (seed, r) — and,
for a synthetic environment, a fresh instance drawn from (seed, r), as the paper instantiates
200 of them — then every learner at every budget trains on the training split and its policy
is scored by the exact ACR on the test split (no Monte Carlo). Paired design: all learners and
budgets of a run see the same split and instance.

Seeds: run r's seeds are children of ``numpy.random.SeedSequence(seed)`` by spawn keys
(``SeedSequence(seed).spawn`` gives child r the key (r,)): key (r, 0) draws the split, (r, 1)
the synthetic instance, and (r, 2, crc32(learner), budget, 0 | 1) the oracle and the learner.
A cell's result depends only on (seed, env, r, learner, budget), never on the number of
workers, on the other cells or on their order.

Work is done in units of (env, run), each training every (learner, budget) the run still
lacks; finished rows are appended to ``runs.csv`` as they arrive, so an interrupted bench
resumes where it stopped.

Rows, tables and figures call an environment by its name (:func:`env_names`): a registered
one by its registry name, a file by the name it stores (``iapo export-env`` stores the task's,
the name ``evaluate`` prints and the gateway serves the task's policies under), else by its
file name without .npz. ``bench.json`` records which file each name came from.
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.envs import Environment, environment_name, get_environment
from iapo.envs.registry import ENVIRONMENTS
from iapo.errors import InputError
from iapo.learners import get_learner
from iapo.oracle import SimulatedOracle
from iapo.problem import Stopping
from iapo.settings import PAPER_BUDGETS
from iapo.split import train_test_split

RUN_COLUMNS = ["env", "learner", "budget", "run", "acr", "oracle_acr", "regret",
               "completions_used", "seconds", "completions_per_query"]
BACKENDS = ("loky", "ray", "dask")


class BenchError(InputError):
    """A bench was configured wrongly, or its output folder belongs to another bench."""


@dataclass(frozen=True)
class Setup:
    """How a bench prices its environments' arms: the ``stopping`` rule (``auto_width``: the
    wave width is part of the arm, :meth:`iapo.problem.Stopping.every_width` of each
    environment's N_max), and the ``contexts`` and synthetic ``latency`` parameters of
    contexts that price latency (:meth:`iapo.problem.ContextGrid.with_latency`,
    :meth:`iapo.latency.SyntheticLatency.parse`; empty: the environment's own)."""

    stopping: Stopping = field(default_factory=Stopping)
    contexts: tuple[str, ...] = ()
    latency: str | None = None
    auto_width: bool = False

    def apply(self, env: Environment) -> Environment:
        """``env`` priced this way."""
        env = env.priced_by(self.latency, self.contexts)
        if self.auto_width:
            return env.with_stopping(Stopping.every_width(env.problem.n_max))
        return env.with_stopping(self.stopping)

    def identity(self) -> dict[str, Any]:
        """What must match for two benches to share an output folder (nothing for the
        paper's arms and contexts: older folders still match)."""
        same: dict[str, Any] = {}
        if self.stopping.early:
            same["stopping"] = self.stopping.to_dict()
        if self.auto_width:
            same["wave"] = "auto"
        if self.contexts:
            same["contexts"] = list(self.contexts)
        if self.latency is not None:
            same["latency"] = self.latency
        return same


@dataclass(frozen=True)
class BenchConfig:
    envs: tuple[str, ...]
    learners: tuple[str, ...]
    budgets: tuple[int, ...] = PAPER_BUDGETS
    runs: int = 200
    seed: int = 0
    test_fraction: float = 0.2
    reference: str = "psst"
    workers: int = 1
    backend: str = "loky"
    stopping: Stopping = field(default_factory=Stopping)
    contexts: tuple[str, ...] = ()
    latency: str | None = None
    auto_width: bool = False

    @property
    def setup(self) -> Setup:
        return Setup(self.stopping, tuple(self.contexts), self.latency, self.auto_width)

    def __post_init__(self) -> None:
        for name in ("envs", "learners", "budgets"):  # a repeated name is one cell, not two
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        if not self.envs:
            raise BenchError("give at least one environment")
        for e in self.envs:
            if e not in ENVIRONMENTS and not Path(e).is_file():
                raise BenchError(f"unknown environment '{e}'; known: {', '.join(ENVIRONMENTS)}")
        env_names(self.envs)  # two environments of one name would share their cells
        if not self.learners:
            raise BenchError("give at least one learner")
        for ln in self.learners:
            get_learner(ln)
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise BenchError(f"budgets {list(self.budgets)} must be positive integers")
        if self.runs < 1:
            raise BenchError(f"runs={self.runs} must be at least 1")
        if self.workers < 1:
            raise BenchError(f"workers={self.workers} must be at least 1")
        if self.backend not in BACKENDS:
            raise BenchError(f"backend '{self.backend}' is unknown; use one of {list(BACKENDS)}")

    def identity(self) -> dict[str, Any]:
        """What must match for two benches to share an output folder."""
        return {"seed": self.seed, "test_fraction": self.test_fraction,
                **self.setup.identity()}


def env_names(envs: Sequence[str]) -> dict[str, str]:
    """The name of each environment argument: a registered name is its own; a file is called
    by the name it stores (an exported environment: its task's), else by its file name without
    .npz (:func:`iapo.envs.environment_name`). Two arguments of one name are refused."""
    names: dict[str, str] = {}
    for e in envs:
        name = e if e in ENVIRONMENTS else environment_name(e)
        other = next((o for o, n in names.items() if n == name), None)
        if other is not None:
            raise BenchError(f"environments '{other}' and '{e}' are both named '{name}' (a "
                             "file's stored name, else its file name), so their rows would "
                             "mix; bench them into separate --out folders")
        names[e] = name
    return names


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """The seeds of ``key`` under the root ``seed`` (module docstring: run r's keys start
    with r; iapo.simulate adds (r, 3) for the traffic, (r, 4, ...) for its learners and (r, 5, ...)
    for their retrainings)."""
    return np.random.SeedSequence(seed, spawn_key=key)


def learner_key(name: str) -> int:
    return zlib.crc32(name.encode())


_REAL: dict[tuple[str, Setup], Environment] = {}


def run_environment_seed(seed: int, run: int) -> int:
    """The seed that draws run ``run``'s instance of a synthetic environment."""
    return int(seed_sequence(seed, run, 1).generate_state(1)[0])


def run_environment(name: str, seed: int, run: int,
                    setup: Setup = Setup()) -> Environment:  # noqa: B008 (frozen)
    """The environment instance of run ``run``: a fresh draw for synthetic ones; its arms
    priced by ``setup``."""
    spec = ENVIRONMENTS.get(name)
    if spec is not None and spec.synthetic:
        return setup.apply(spec.make(run_environment_seed(seed, run)))
    if (name, setup) not in _REAL:  # one load per worker process; tables are cached on disk
        _REAL[name, setup] = setup.apply(get_environment(name))
    return _REAL[name, setup]


def run_split(
    env_name: str, seed: int, run: int, test_fraction: float,
    setup: Setup = Setup(),  # noqa: B008 (frozen)
) -> tuple[Environment, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Run ``run``'s environment, its training queries and its test-split Q table [C, P, N]."""
    env, train, test = run_queries(env_name, seed, run, test_fraction, setup)
    env.query_table(progress=False)
    return env, train, env.q(test)


def run_queries(
    env_name: str, seed: int, run: int, test_fraction: float,
    setup: Setup = Setup(),  # noqa: B008 (frozen)
) -> tuple[Environment, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Run ``run``'s environment and its training and test queries (the split of key
    (run, 0))."""
    env = run_environment(env_name, seed, run, setup)
    train, test = train_test_split(env.n_queries, seed_sequence(seed, run, 0), test_fraction)
    return env, train, test


def run_oracle(env: Environment, train: npt.ArrayLike, learner: str, budget: int, seed: int,
               run: int) -> tuple[SimulatedOracle, np.random.Generator]:
    """The oracle over ``train`` and the learner's generator of one bench cell, seeded so that
    every cell draws its own completions, whatever else runs beside it."""
    key = learner_key(learner)
    return (SimulatedOracle(env, train, budget,
                            np.random.default_rng(seed_sequence(seed, run, 2, key, budget, 0))),
            np.random.default_rng(seed_sequence(seed, run, 2, key, budget, 1)))


def run_unit(
    env_name: str, run: int, cells: Sequence[tuple[str, int]], seed: int, test_fraction: float,
    setup: Setup = Setup(),  # noqa: B008 (frozen)
) -> list[dict[str, Any]]:
    """Train and score every (learner, budget) of ``cells`` on run ``run`` of ``env_name`` (a
    registered name or a file); the rows call the environment by its name (:func:`env_names`)."""
    env, train, test = run_queries(env_name, seed, run, test_fraction, setup)
    problem = env.problem
    env.query_table(progress=False)
    arms = env.arm_table(test)
    probs = problem.grid.probabilities
    oracle_acr = arms.optimal_acr(probs)
    rows = []
    for learner, budget in cells:
        oracle, rng = run_oracle(env, train, learner, budget, seed, run)
        t0 = time.perf_counter()
        result = get_learner(learner).learner(problem, oracle, budget, rng)
        seconds = time.perf_counter() - t0
        value = arms.acr(result.choices, probs)
        rows.append({
            "env": env.name, "learner": learner, "budget": int(budget), "run": int(run),
            "acr": value, "oracle_acr": oracle_acr, "regret": oracle_acr - value,
            "completions_used": int(oracle.ledger.spent), "seconds": seconds,
            # what each arm pays per test query when deployed: N, or fewer if it stops
            "completions_per_query": float(arms.values(arms.completions, result.choices)
                                           @ probs),
        })
    return rows


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Rows of a runs.csv (typed); a torn last line from an interrupted write is skipped."""
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                rows.append({
                    "env": r["env"], "learner": r["learner"], "budget": int(r["budget"]),
                    "run": int(r["run"]), "acr": float(r["acr"]),
                    "oracle_acr": float(r["oracle_acr"]), "regret": float(r["regret"]),
                    "completions_used": int(r["completions_used"]),
                    "seconds": float(r["seconds"]),
                    # (absent in benches written before the column existed)
                    "completions_per_query": float(r.get("completions_per_query") or "nan"),
                })
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def _header(path: Path) -> list[str]:
    """The column names in the first line of a CSV file."""
    with path.open(newline="") as fh:
        return next(csv.reader(fh), RUN_COLUMNS)


def _repair_csv(path: Path) -> None:
    """Drop a torn last line so appends start on a fresh line."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def plan(config: BenchConfig, done: set[tuple[str, str, int, int]]
         ) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """Units (env argument, run, cells still missing), skipping finished cells (``done``:
    (env name, learner, budget, run))."""
    units = []
    names = env_names(config.envs)
    for env in config.envs:
        for run in range(config.runs):
            cells = [(ln, b) for ln in config.learners for b in config.budgets
                     if (names[env], ln, b, run) not in done]
            if cells:
                units.append((env, run, cells))
    return units


def _backend_context(config: BenchConfig) -> AbstractContextManager[Any]:
    import joblib

    if config.backend == "loky":
        return nullcontext()
    if config.backend == "ray":
        try:
            from ray.util.joblib import register_ray
        except ImportError as e:
            raise BenchError("--backend ray needs Ray: pip install 'iapo[ray]'") from e
        register_ray()
        return joblib.parallel_config(backend="ray")
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise BenchError("--backend dask needs dask.distributed: pip install 'iapo[dask]'") from e
    return joblib.parallel_config(backend="dask")


def execute(
    config: BenchConfig,
    out: Path,
    progress: bool = True,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every missing cell of ``config`` into ``out``/runs.csv; return all rows there, an
    environment called by its name (rows that an older bench keyed by a file's path too)."""
    from tqdm.auto import tqdm

    meta = out / "bench.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # JSON and UTF-8 errors included
            raise BenchError(f"{meta} is not a bench's bench.json ({e}); use another --out or "
                             "remove the file") from e
        if not isinstance(old, dict):
            raise BenchError(f"{meta} is not a bench's bench.json (not a JSON object); use "
                             "another --out or remove the file")
        if old.get("identity") != config.identity():
            raise BenchError(
                f"{out} holds a bench with {old.get('identity')}, not {config.identity()}; "
                "use another --out, or the same --seed (and --stop, --wave, --contexts, --latency)"
            )
    for env in config.envs:  # compute (or load) real tables once, before the workers start
        spec = ENVIRONMENTS.get(env)
        if spec is None or not spec.synthetic:
            config.setup.apply(get_environment(env)).query_table(progress=progress)
        else:  # bad input is refused before anything is written
            config.setup.apply(spec.make(0))
    out.mkdir(parents=True, exist_ok=True)  # only once every environment loaded
    names = env_names(config.envs)
    meta.write_text(json.dumps({"identity": config.identity(), "last": asdict(config),
                                "names": names}, indent=2) + "\n")
    runs_csv = out / "runs.csv"
    _repair_csv(runs_csv)

    def named(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # benches before environments were named keyed a file's rows by its path
        return [{**r, "env": names.get(r["env"], r["env"])} for r in rows]

    done = {(r["env"], r["learner"], r["budget"], r["run"]) for r in named(read_runs(runs_csv))}
    units = plan(config, done)
    total = sum(len(c) for _, _, c in units)
    new_file = not runs_csv.exists() or runs_csv.stat().st_size == 0
    columns = RUN_COLUMNS if new_file else _header(runs_csv)  # an older bench keeps its columns
    with runs_csv.open("a", newline="") as fh, tqdm(
        total=total, desc="bench cells", unit="cell", disable=not progress or total == 0
    ) as bar:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        for rows in _results(config, units):
            writer.writerows(rows)
            fh.flush()
            bar.update(len(rows))
            if on_rows is not None:
                on_rows(rows)
    return named(read_runs(runs_csv))


def _results(config: BenchConfig, units: list[tuple[str, int, list[tuple[str, int]]]]
             ) -> Iterator[list[dict[str, Any]]]:
    import joblib

    if not units:
        return
    if config.workers == 1 and config.backend == "loky":
        for env, run, cells in units:
            yield run_unit(env, run, cells, config.seed, config.test_fraction, config.setup)
        return
    def jobs(chunk: list[tuple[str, int, list[tuple[str, int]]]]) -> Iterator[Any]:
        return (joblib.delayed(run_unit)(env, run, cells, config.seed, config.test_fraction,
                                         config.setup)
                for env, run, cells in chunk)

    with _backend_context(config):
        if config.backend == "ray":
            # Ray's joblib backend cannot stream results: run chunks, so that finished
            # cells still reach runs.csv as the bench goes
            parallel = joblib.Parallel(n_jobs=config.workers, return_as="list")
            step = max(1, 4 * config.workers)
            for i in range(0, len(units), step):
                yield from parallel(jobs(units[i: i + step]))
        else:
            parallel = joblib.Parallel(n_jobs=config.workers, return_as="generator_unordered")
            yield from parallel(jobs(units))
