"""Command-line start-up time: `iapo --help`, `iapo learners --help` and `iapo envs`, each as a
fresh interpreter, next to the interpreter's own start (`python -c pass`) measured in the same
run, so that the figures compare across machines as a difference or a ratio.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 11]

Target: every command within a few tenths of a second of the bare interpreter.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "iapo --help": ["-m", "iapo.cli", "--help"],
    "iapo learners --help": ["-m", "iapo.cli", "learners", "--help"],
    "iapo envs": ["-m", "iapo.cli", "envs"],
}


def median_seconds(args: list[str], repeats: int) -> float:
    """Median wall time of ``python args`` over ``repeats`` runs (after one warm-up run)."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if i:  # the first run warms the file cache and the bytecode
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    repeats = parser.parse_args().repeats
    medians = {name: median_seconds(args, repeats) for name, args in COMMANDS.items()}
    base = medians["python -c pass"]
    print(f"median wall time of {repeats} runs each ({sys.executable})")
    print(f"{'command':<22} {'seconds':>8} {'minus python':>13} {'x python':>9}")
    for name, t in medians.items():
        print(f"{name:<22} {t:>8.3f} {t - base:>13.3f} {t / base:>9.1f}")


if __name__ == "__main__":
    main()
