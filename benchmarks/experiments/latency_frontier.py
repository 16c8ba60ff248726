"""The quality / latency / completions frontier of every arm (p, N, W), as a figure.

    .venv/bin/python benchmarks/experiments/latency_frontier.py [--out docs/latency/frontier.png]

For ``math`` and ``commonsenseqa`` at the mid budget (cost weight 0.2, no latency term), under
the synthetic latency model (:class:`iapo.latency.SyntheticLatency`, defaults), the exact Q,
expected latency and expected completions of every arm (p, N, W), W in 1, 2, 4, ..., 32. Left:
Q against expected latency for the best prompt, one line per W over the odd N (W = 32 is one
wave of N, the paper's arm), with the frontier over every arm of every prompt: the arms no
other arm beats in both Q and latency. Right: the completions each pays. Printed: the
frontier's arms. Cited by docs/latency.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from iapo.envs import get_environment
from iapo.problem import Stopping

ENVS = ("math", "commonsenseqa")


def frontier(latency: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both (lower latency, higher Q), by
    latency."""
    order = np.lexsort((-q, latency))
    best, keep = -np.inf, []
    for i in order:
        if q[i] > best:
            keep.append(i)
            best = q[i]
    return np.array(keep, dtype=np.intp)


def main() -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/latency/frontier.png"))
    args = parser.parse_args()
    fig, axes = plt.subplots(len(ENVS), 2, figsize=(11, 4.2 * len(ENVS)))
    for row, name in zip(axes, ENVS, strict=True):
        env = get_environment(name).with_contexts(["budget=mid"])
        env = env.with_stopping(Stopping.every_width(env.problem.n_max))
        arms = env.arm_table()
        widths = env.problem.stopping.widths
        q, seconds, paid = arms.q[0], arms.latency, arms.completions  # [P, N, S]
        best = int(np.unravel_index(int(np.argmax(q)), q.shape)[0])
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(widths)))
        for s, w in enumerate(widths):
            label = f"W = {w}" if w < env.problem.n_max else "W = N (one wave)"
            odd = slice(0, None, 2)  # odd N: an even N ties more often and is rarely better
            row[0].plot(seconds[best, odd, s], q[best, odd, s], "-o", ms=3, lw=0.8,
                        color=colors[s], label=label)
            row[1].plot(seconds[best, odd, s], paid[best, odd, s], "-o", ms=3, lw=0.8,
                        color=colors[s])
        flat_s, flat_q = seconds.reshape(-1), q.reshape(-1)
        edge = frontier(flat_s, flat_q)
        row[0].step(flat_s[edge], flat_q[edge], where="post", color="crimson", lw=1.2,
                    label="frontier, every prompt")
        for ax in row:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([10, 20, 50, 100, 200])
            ax.grid(alpha=0.3)
        row[0].set_title(f"{name}: Q, prompt {best}, N odd")
        row[1].set_title(f"{name}: completions paid, prompt {best}, N odd")
        row[0].set_xlabel("expected latency (s)")
        row[1].set_xlabel("expected latency (s)")
        row[0].set_ylabel("Q")
        row[1].set_ylabel("expected completions")
        row[0].legend(fontsize=7, loc="lower right")
        print(f"{name}: the frontier (prompt, N, W, latency s, Q)")
        for i in edge:
            p, n, s = np.unravel_index(int(i), q.shape)
            print(f"  ({p}, {n + 1}, {min(widths[s], n + 1)})  {flat_s[i]:7.1f}  {flat_q[i]:.4f}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
