"""The real-model engine is built for a portable x86-64 baseline, and its fixture fails fast.

`make test` compiles llama-cpp-python from its sdist (the Makefile's LLAMA_CMAKE_ARGS): AVX2,
FMA and F16C, never the build machine's own CPU. A library compiled with llama.cpp's default
GGML_NATIVE=ON carries AMX tile instructions on a CPU that has them and crashes on its first
completion wherever the kernel does not enable AMX, or the CPU lacks it; AVX-512 crashes every
CPU without it. The disassembly of every installed library shows none of them.

The ``llama`` fixture asks one real completion before any test uses the server; a server that
lists its model and then crashes fails every real-model test at once, with one message.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import httpx
import pytest

from conftest import LlamaServer, first_completion, free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]

# what only AMX or AVX-512 (EVEX) code contains: the tile instructions, zmm registers, the
# mask registers k1-k7 as operands, and the sixteen upper xmm/ymm registers
FORBIDDEN = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|"
                       r"tilerelease|tdp\w+)\b|%zmm\d+|%k[1-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")


def forbidden_instructions(library: Path) -> list[str]:
    """The disassembled lines of ``library`` that use AMX or AVX-512."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if FORBIDDEN.search(line)]


def test_the_scan_finds_amx_and_avx512_where_they_are(tmp_path: Path) -> None:
    # a known positive: assemble each kind of forbidden instruction, and one allowed AVX2 one
    source = tmp_path / "probe.s"
    source.write_text(textwrap.dedent("""\
        .text
        vfmadd231ps %ymm1, %ymm2, %ymm3
        vaddps %zmm0, %zmm1, %zmm2
        ldtilecfg (%rax)
        tileloadd (%rax,%rbx,1), %tmm0
        vpaddd %ymm17, %ymm1, %ymm2
        vmovaps %ymm1, %ymm2{%k1}
    """))
    obj = tmp_path / "probe.o"
    subprocess.run(["as", "-o", str(obj), str(source)], check=True)
    found = forbidden_instructions(obj)
    assert len(found) == 5, found
    assert not any("vfmadd231ps" in line for line in found)


def test_the_installed_llama_cpp_has_no_amx_and_no_avx512() -> None:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    libraries = sorted(p for p in lib.glob("lib*.so") if p.is_file())
    names = {p.name for p in libraries}
    assert {"libggml-cpu.so", "libggml-base.so", "libllama.so"} <= names, names
    server = ROOT / "build" / "llama-server" / "bin" / "llama-server"  # `make llama-server`
    if server.is_file():
        libraries.append(server)
    for library in libraries:
        found = forbidden_instructions(library)
        assert not found, f"{library} uses AMX or AVX-512, e.g. {found[:3]}"


def _makefile_variable(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name} := ((?:[^\n]*\\\n)*[^\n]*)", text, re.M)
    assert match, f"the Makefile sets no {name}"
    return match.group(1).replace("\\\n", " ")


def test_the_makefile_builds_for_the_baseline_and_pins_the_version_pyproject_names() -> None:
    import llama_cpp

    version = _makefile_variable("LLAMA_CPP_VERSION").strip()
    assert llama_cpp.__version__ == version  # the wheel the Makefile built is the one in use
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["llama"] == [f"llama-cpp-python[server]=={version}"]
    # the dev extras never name it: pip would compile it for the host's CPU
    assert not any("llama" in d for d in extras["dev"])
    args = _makefile_variable("LLAMA_CMAKE_ARGS").split()
    for flag in ("GGML_NATIVE=OFF", "GGML_AVX2=ON", "GGML_FMA=ON", "GGML_F16C=ON",
                 "GGML_AVX512=OFF", "GGML_AMX_TILE=OFF", "GGML_AMX_INT8=OFF",
                 "GGML_AMX_BF16=OFF", "GGML_CPU_ALL_VARIANTS=OFF", "GGML_BACKEND_DL=OFF"):
        assert f"-D{flag}" in args, flag
    text = (ROOT / "Makefile").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "march=native" not in code and "GGML_NATIVE=ON" not in code
    # the wheel is built without pip's cache, into a folder keyed by version and flags
    assert "--no-cache-dir" in text and "$(LLAMA_KEY)" in text


# --- the fixture: a server that lists its model, then dies on its first completion -----------

CRASHING_SERVER = textwrap.dedent("""\
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            print("ggml: illegal instruction in libggml-cpu", flush=True)
            os._exit(132)

    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_a_server_that_dies_on_its_first_completion_fails_with_the_cause(
        tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(CRASHING_SERVER)
    log = tmp_path / "server.log"
    port = free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            wait_until_up(f"{url}/models", proc, 30, "the fake server", log.read_text)
            assert httpx.get(f"{url}/models").status_code == 200  # it looks alive
            with pytest.raises(pytest.fail.Exception) as e:
                first_completion(url, proc, log)
        finally:
            proc.kill()
            proc.wait()
    message = str(e.value)
    assert "crashed on its first completion" in message
    assert "exit status 132" in message
    assert "illegal instruction in libggml-cpu" in message  # the log's tail is shown


def test_the_real_server_answers_completions_and_stays_up(llama: LlamaServer) -> None:
    for _ in range(2):
        r = httpx.post(f"{llama.url}/chat/completions", timeout=120, json={
            "model": "smollm2", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is 2 + 3?"}]})
        assert r.status_code == 200
        assert isinstance(r.json()["choices"][0]["message"]["content"], str)
    assert llama.proc.poll() is None
