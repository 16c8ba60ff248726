"""A bounded in-process memo of table rows (least recently used dropped first).

Exact MV credits depend only on a short integer key (group size, gold votes, the other votes
sorted); benches meet the same keys again and again, so the estimators keep what they
computed, but never more than ``maxsize`` rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class Memo:
    """Rows of floats by integer key rows, at most ``maxsize`` of them."""

    def __init__(self, maxsize: int = 200_000) -> None:
        self.maxsize = maxsize
        self._rows: OrderedDict[tuple[int, ...], FloatArray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: npt.NDArray[np.integer], width: int,
             compute: Callable[[npt.NDArray[np.intp]], FloatArray]) -> FloatArray:
        """[U, width]: row i is the memo of keys[i], ``compute(missing)`` ([len, width]) for
        the indices of keys not memoized yet (called once, for all of them)."""
        out = np.empty((keys.shape[0], width))
        missing = []
        for i, key in enumerate(map(tuple, keys.tolist())):
            hit = self._rows.get(key)
            if hit is None:
                missing.append(i)
            else:
                self._rows.move_to_end(key)
                out[i] = hit
        if missing:
            idx = np.asarray(missing, dtype=np.intp)
            fresh = compute(idx)
            out[idx] = fresh
            for i, row in zip(missing, fresh, strict=True):
                self._rows[tuple(keys[i].tolist())] = row
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)
        return out
