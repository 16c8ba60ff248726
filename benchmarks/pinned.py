"""A pinned earlier commit, checked out into a temporary git worktree for as long as a
benchmark compares against it (benchmarks/perf/bench_pinned.py, perf/bench_protocol.py,
same_results.py)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """The checkout of ``commit`` (its root; its package is under ``src``), removed after."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pinned"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path),
                        commit], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                           check=False, capture_output=True)
