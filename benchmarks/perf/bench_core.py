"""Simulation-core speed: the exact Q table of `commonsenseqa` from the disk cache against
computing it, and the simulated oracle's draws against numpy's own draw of as many uniform
numbers, each pair measured in the same run.

    .venv/bin/python benchmarks/perf/bench_core.py [--repeats 5]

Targets: a cached table loads in at most 0.1 of the time its first computation (compute and
store) takes; the oracle draws a batch of completions in at most 20 times the time numpy takes
to draw as many uniform numbers in one call (the floor of any sampler).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from targets import Target, verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
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
        for _ in range(args.repeats):
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
        oracle_s, numpy_s = [], []
        for _ in range(args.repeats):  # alternating, so that drift hits both alike
            oracle = SimulatedOracle(env, queries, per_batch, rng)
            t0 = time.perf_counter()
            oracle.pull(batch)
            oracle_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rng.random(per_batch)
            numpy_s.append(time.perf_counter() - t0)

    table, load = statistics.median(cached), first
    draw, floor = statistics.median(oracle_s), statistics.median(numpy_s)
    print(f"commonsenseqa exact table: first (compute + store) {load:.2f} s, cached (median of "
          f"{args.repeats}) {table:.3f} s")
    print(f"{per_batch:,} completions (median of {args.repeats}): simulated oracle "
          f"{per_batch / draw / 1e6:.1f} million/s, numpy uniforms {per_batch / floor / 1e6:.1f}"
          " million/s")
    verdict("bench_core", [
        Target("cached / first table load", table / load, 0.1),
        Target("oracle draw / numpy uniform draw", draw / floor, 20.0),
    ])


if __name__ == "__main__":
    main()
