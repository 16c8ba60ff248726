"""Every perf script against its targets, one after another: what `make bench` runs.

    .venv/bin/python benchmarks/perf/suite.py --commit REV [--full] [--only bench_core,...]

Quick by default: fewer repetitions than the commands in docs/measured.md, the same targets
(each a ratio measured in one run: targets.py). ``--full`` runs every script with its own
defaults, as the docs do. The scripts that compare with a pinned commit (bench_pinned,
bench_protocol) get ``--commit``. Each script's output is shown as it runs; then one line per
target, each script's seconds and the total. Exits 1 if any target was missed or any script
failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# every perf script, with its quick arguments
SCRIPTS: dict[str, list[str]] = {
    "bench_core": [],
    "bench_cli": ["--repeats", "5"],
    "bench_speed": ["--runs", "10"],
    "bench_pinned": ["--runs", "10", "--rounds", "3"],
    "bench_protocol": ["--runs", "5", "--rounds", "3"],
    "bench_client": ["--requests", "20"],
    "bench_stream": ["--requests", "30"],
    "bench_gateway_throughput": [],
}
PINNED = ("bench_pinned", "bench_protocol")
HELPERS = ("suite", "targets", "rig", "fake_upstream")  # the modules here that are no bench


def run(name: str, args: list[str]) -> tuple[int, list[str], float]:
    """Run one script, echoing its output; its exit status, target lines and seconds."""
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith(("PASS", "MISS")):
            lines.append(line.rstrip())
    return proc.wait(), lines, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", required=True,
                    help="the commit bench_pinned and bench_protocol compare with, e.g. HEAD")
    ap.add_argument("--full", action="store_true", help="the scripts' own (longer) defaults")
    ap.add_argument("--only", default=",".join(SCRIPTS), help="some of the scripts")
    args = ap.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        ap.error(f"no perf script {unknown}; choose from {', '.join(SCRIPTS)}")
    start = time.perf_counter()
    results = []
    for name in names:
        extra = ["--commit", args.commit] if name in PINNED else []
        results.append((name, *run(name, [*([] if args.full else SCRIPTS[name]), *extra])))
    total = time.perf_counter() - start
    print(f"\n{'script':<26} {'seconds':>8}  verdict")
    failed = []
    for name, status, lines, seconds in results:
        verdicts = lines or [f"ERROR (exit status {status}, no target measured)"]
        if status:
            failed.append(name)
        for i, line in enumerate(verdicts):
            print(f"{name if i == 0 else '':<26} {f'{seconds:.1f}' if i == 0 else '':>8}  {line}")
    print(f"total {total:.0f} s ({total / 60:.1f} min); "
          + (f"FAILED: {', '.join(failed)}" if failed else "every target met"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
