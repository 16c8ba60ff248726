"""Brute-force helpers shared by the tests (independent of the code under test)."""

from __future__ import annotations

import itertools

import numpy as np


def compositions(n: int, parts: int) -> np.ndarray:
    """Every vector of ``parts`` non-negative integers summing to n (stars and bars)."""
    rows = []
    for bars in itertools.combinations(range(n + parts - 1), parts - 1):
        cuts = (-1, *bars, n + parts - 1)
        rows.append([cuts[i + 1] - cuts[i] - 1 for i in range(parts)])
    return np.array(rows, dtype=np.int64)
