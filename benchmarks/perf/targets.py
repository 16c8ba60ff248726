"""A perf script's verdict: every target is a ratio of two things measured in the same run
(against the direct call or a pinned commit), never absolute seconds, since the machines
this runs on differ fourfold in speed.

Each target prints one line, ``PASS`` or ``MISS``, which ``suite.py`` collects; a script with a
missed target exits with status 1 and a message naming each miss.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``ratio`` (measured) against ``limit``: at most the limit, or ``at_least`` it."""

    what: str
    ratio: float
    limit: float
    at_least: bool = False

    @property
    def met(self) -> bool:
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        return (f"{'PASS' if self.met else 'MISS'}  {self.what} = {self.ratio:.3f} "
                f"(target {sign} {self.limit:g})")


def verdict(script: str, targets: list[Target]) -> None:
    """Print every target's line; exit with status 1 naming the missed ones, if any."""
    for t in targets:
        print(t.line(), flush=True)
    missed = [t for t in targets if not t.met]
    if missed:
        sys.exit(f"{script}: {len(missed)} of {len(targets)} targets missed: "
                 + "; ".join(t.line().removeprefix("MISS  ") for t in missed))
