"""Simulation-core speed: exact Q table of `commonsenseqa` (first time and cached) and the
simulated oracle's draw rate.

    .venv/bin/python benchmarks/bench_core.py

Targets (2-core machine): cached table loads in under 0.5 s; the oracle draws over 5 million
completions per second.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["IAPO_CACHE_DIR"] = cache
        from iapo.envs import get_environment
        from iapo.oracle import SimulatedOracle
        from iapo.pulls import Pull

        t0 = time.perf_counter()
        env = get_environment("commonsenseqa")
        env.query_table(progress=False)
        first = time.perf_counter() - t0

        cached = []
        for _ in range(5):
            t0 = time.perf_counter()
            fresh = get_environment("commonsenseqa")  # new object: reads the disk cache
            fresh.query_table(progress=False)
            cached.append(time.perf_counter() - t0)

        rng = np.random.default_rng(0)
        queries = np.arange(1200)
        problem = env.problem
        # one PSST-like round: every prompt at N_max, many groups each
        batch = [Pull(p, problem.n_max, 2000) for p in range(problem.n_prompts)]
        per_batch = sum(b.cost for b in batch)
        rates = []
        for _ in range(5):
            oracle = SimulatedOracle(env, queries, per_batch, rng)
            t0 = time.perf_counter()
            oracle.pull(batch)
            rates.append(per_batch / (time.perf_counter() - t0))

        print(f"commonsenseqa exact table, first time (compute + store): {first:.2f} s")
        med = statistics.median(cached)
        print(f"commonsenseqa exact table, cached (median of 5):        {med:.3f} s")
        print(
            f"simulated oracle, commonsenseqa, {per_batch:,} completions per batch "
            f"(median of 5): {statistics.median(rates) / 1e6:.1f} million completions/s"
        )


if __name__ == "__main__":
    main()
