"""On-disk cache of exact per-query tables, in the platform's user cache directory.

Set ``IAPO_CACHE_DIR`` to use another folder (tests do). Entries are keyed by a fingerprint of
the environment's data and of the table format, so changed data never reads a stale table.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import platformdirs

from iapo.files import OutputError, write_atomically

FORMAT_VERSION = "1"


def cache_dir() -> Path:
    """The folder for cached tables (created on first use)."""
    env = os.environ.get("IAPO_CACHE_DIR")
    path = Path(env) if env else Path(platformdirs.user_cache_dir("iapo"))
    return path


def load_or_compute(
    key: str,
    compute: Callable[[], dict[str, npt.NDArray]],
    required: tuple[str, ...] = (),
) -> dict[str, npt.NDArray]:
    """Arrays stored under ``key``; computed by ``compute()`` and stored on a miss.

    An entry that cannot be read or lacks a ``required`` array is recomputed. A cache that
    cannot be written (read-only disk) is not an error: the arrays are returned.
    """
    path = cache_dir() / f"{key}-v{FORMAT_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            if all(name in arrays for name in required):
                return arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass
        path.unlink(missing_ok=True)  # a torn or foreign file: recompute
    arrays = compute()
    try:  # atomic: a reader never sees half a file
        write_atomically(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]
    except OutputError:
        pass
    return arrays
