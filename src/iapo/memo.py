"""A bounded in-process memo of table rows (least recently used dropped first).

Exact MV credits depend only on a short integer key (group size, gold votes, the other votes
sorted); benches meet the same keys again and again, so the estimators keep what they
computed, but never more than ``maxsize`` rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class Memo:
    """Rows of floats by integer key rows, at most ``maxsize`` of them. A row may be shorter
    than the table it is read into: the rest of that table row is 0 (an MV credit row of a
    group of g completions is read into tables as wide as the largest group of a batch)."""

    def __init__(self, maxsize: int = 200_000) -> None:
        self.maxsize = maxsize
        self._rows: OrderedDict[tuple[int, ...], FloatArray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: npt.NDArray[np.integer], width: int,
             compute: Callable[[npt.NDArray[np.intp]], Sequence[FloatArray]]) -> FloatArray:
        """[U, width]: row i is the memo of keys[i] (zero-padded to ``width``);
        ``compute(missing)`` gives the rows of the indices of keys not memoized yet (called
        once, for all of them), each at most ``width`` long."""
        out = np.zeros((keys.shape[0], width))
        missing = []
        for i, key in enumerate(map(tuple, keys.tolist())):
            hit = self._rows.get(key)
            if hit is None:
                missing.append(i)
            else:
                self._rows.move_to_end(key)
                out[i, : hit.size] = hit
        if missing:
            fresh = compute(np.asarray(missing, dtype=np.intp))
            for i, row in zip(missing, fresh, strict=True):
                out[i, : row.size] = row
                self._rows[tuple(keys[i].tolist())] = row
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)
        return out
