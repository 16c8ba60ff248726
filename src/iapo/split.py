"""Reproducible train/test splits of query indices."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError

SeedLike = int | np.random.SeedSequence | np.random.Generator


def train_test_split(
    n_queries: int, seed: SeedLike, test_fraction: float = 0.2
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Shuffle 0..n_queries-1 from ``seed`` and cut it: (train, test), each sorted.

    The test part holds round(test_fraction * n_queries) queries (at least one of each part).
    """
    if n_queries < 2:
        raise InputError(f"a split needs at least 2 queries (one to train on, one to test "
                         f"on); got {n_queries}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction {test_fraction} must lie strictly between 0 and 1, "
                         "e.g. 0.2")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    perm = rng.permutation(n_queries)
    n_test = min(max(1, round(test_fraction * n_queries)), n_queries - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
