"""How much the trained policies depend on the CPU: psst-auto's policies on a CPU's widest
SIMD path against the same on AVX2 only, and with estimates compared at 12 decimals.

    .venv/bin/python benchmarks/experiments/cpu_ties.py [--envs math,commonsenseqa]
        [--runs 50]

numpy's reductions and OpenBLAS take the widest SIMD path a CPU has (AVX-512 where there is
one), and sum in another order there: the same estimate differs in its last bits from one CPU
to another. Where two arms' estimates are equal in exact arithmetic (majority-vote credits
over the same queries often are), PSST's keep step and final choice are meant to break the
tie at random; the last bit breaks it instead. For runs 0..R-1 (the policies `iapo simulate`
and the benches train: psst-auto at T = 2,000, seed 0), the script trains every run's policy
in four processes:

- ``native``: as the CPU runs it;
- ``avx2``: with numpy's AVX-512 paths and OpenBLAS's AVX-512 kernels off
  (``NPY_DISABLE_CPU_FEATURES``, with numpy 2.4's names for them, and
  ``OPENBLAS_CORETYPE=Haswell``), as on a CPU without them;
- ``native, rounded`` and ``avx2, rounded``: the same, with the estimates PSST keeps and
  chooses by rounded to 12 decimals first (so that sums in another order tie, and are
  broken as ties are), patched in here, not in the library.

Printed per environment: the runs whose policy differs between native and avx2, without and
with rounding, and the runs whose policy the rounding changes. On a CPU without AVX-512 the
two paths are the same and nothing can differ; the first line says which the host has.
Cited by docs/measured.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import types
from typing import Any

import numpy as np

AVX2 = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "OPENBLAS_CORETYPE": "Haswell"}
DECIMALS = 12


def round_ties() -> None:
    """Patch psst-auto's keep step and final choice to compare estimates at DECIMALS."""
    psst = importlib.import_module("iapo.learners.psst")
    auto = importlib.import_module("iapo.learners.auto")
    keep_best, best_choices = psst.keep_best, psst.best_choices

    def rounded_keep(value: np.ndarray, alive: np.ndarray, keep: Any, rng: Any) -> Any:
        return keep_best(np.round(value, DECIMALS), alive, keep, rng)

    def rounded_best(stats: Any, allowed: np.ndarray, rng: Any) -> Any:
        view = types.SimpleNamespace(mean=np.round(stats.mean, DECIMALS), counts=stats.counts,
                                     width=stats.width, latency=stats.latency)
        return best_choices(view, allowed, rng)

    psst.keep_best = auto.keep_best = rounded_keep  # type: ignore[attr-defined]
    psst.best_choices = rounded_best  # type: ignore[attr-defined]


def policies(env_name: str, runs: int) -> list[list[list[int]]]:
    """The trained policy of every run (`iapo.simulate.trained_policy`): [(prompt, n)] per
    context."""
    from iapo.simulate import SimConfig, trained_policy

    config = SimConfig(env=env_name, runs=runs)  # simulate's training: seed 0, T = 2,000
    return [[[c.prompt, int(c.n or 1)] for c in trained_policy(config, run)[2]]
            for run in range(runs)]


def child(env_name: str, runs: int, rounded: bool) -> None:
    if rounded:
        round_ties()
    print(json.dumps(policies(env_name, runs)))


def trained(env_name: str, runs: int, avx2: bool, rounded: bool) -> list[Any]:
    env = dict(os.environ, **(AVX2 if avx2 else {}))
    args = [sys.executable, __file__, "--child", env_name, "--runs", str(runs)]
    done = subprocess.run(args + (["--rounded"] if rounded else []), env=env, check=True,
                          capture_output=True, text=True)
    return list(json.loads(done.stdout))


def differ(a: list[Any], b: list[Any]) -> list[int]:
    """The runs whose policies differ."""
    return [r for r, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="math,commonsenseqa")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rounded", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs, args.rounded)
        return
    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy 1
        umath = importlib.import_module("numpy.core._multiarray_umath")
    features = umath.__cpu_features__
    print(f"host: AVX512F {'yes' if features.get('AVX512F') else 'no'}; {args.runs} runs, "
          "psst-auto at T = 2,000")
    for env_name in args.envs.split(","):
        got = {(avx2, rounded): trained(env_name, args.runs, avx2, rounded)
               for avx2 in (False, True) for rounded in (False, True)}
        print(f"{env_name}: native and avx2 differ in runs "
              f"{differ(got[False, False], got[True, False])}; rounded, in "
              f"{differ(got[False, True], got[True, True])}; the rounding changes "
              f"runs {differ(got[False, False], got[False, True])} (native) and "
              f"{differ(got[True, False], got[True, True])} (avx2)", flush=True)


if __name__ == "__main__":
    main()
