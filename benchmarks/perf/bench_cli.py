"""Command-line start-up time: `iapo --help`, `iapo learners --help` and `iapo envs`, each as a
fresh interpreter, against the imports they cannot do without, measured in the same run:
`python -c "import click"` for the help pages (click and the standard library only: every
command imports numpy, the environments and the learners itself) and `python -c "import
numpy"` for `iapo envs`.

    .venv/bin/python benchmarks/perf/bench_cli.py [--repeats 11]

Targets: each help page at most 3 x `import click`, `iapo envs` at most 3 x `import numpy`
(before the imports were made lazy, a help page took about 30 x `import click`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from targets import Target, verdict

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import click": ["-c", "import click"],
    "import numpy": ["-c", "import numpy"],
    "iapo --help": ["-m", "iapo.cli", "--help"],
    "iapo learners --help": ["-m", "iapo.cli", "learners", "--help"],
    "iapo envs": ["-m", "iapo.cli", "envs"],
}
FLOORS = {"iapo --help": "import click", "iapo learners --help": "import click",
          "iapo envs": "import numpy"}
MAX_RATIO = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    repeats = parser.parse_args().repeats
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for i in range(repeats + 1):  # interleaved, so that drift hits all alike
        for name, args in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if i:  # the first round warms the file cache and the bytecode
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"median wall time of {repeats} runs each ({sys.executable})")
    print(f"{'command':<22} {'seconds':>8} {'x python':>9}")
    for name, t in med.items():
        print(f"{name:<22} {t:>8.3f} {t / med['python -c pass']:>9.1f}")
    verdict("bench_cli", [Target(f"{name} / {floor}", med[name] / med[floor], MAX_RATIO)
                          for name, floor in FLOORS.items()])


if __name__ == "__main__":
    main()
