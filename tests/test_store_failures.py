"""Full disks, damaged stores and unwritable outputs: one line that says what to do, nothing
stored lost, and a resume that writes the uninterrupted policy byte for byte.

A request with n > 1 carries one seed; had part of its completions been stored, a resume
would ask for the rest under another seed and learn from other samples. The store writes the
completions of a request in one transaction, so a disk that fills up mid-run leaves whole
requests only. Checked twice: with the SQLite error injected at the n-th stored completion, and
on a real 'tmpfs' that fills up (where this machine lets the tests mount one: as root).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iapo.live import store as store_module
from iapo.live.store import CompletionStore
from live_helpers import ScriptedServer
from test_live_trust import seed_answer, tokens
from test_live_units import cli, mv_raw, write_task


def n_task(tmp: Path, url: str) -> Path:
    """A task whose server honours ``n``: its pulls of N > 1 are requests of n > 1."""
    raw = mv_raw(url)
    raw["model"]["supports_n"] = True
    raw["train"].update(n_max=3, budget=60, cost_scale=0.3)
    raw["contexts"]["budgets"] = {"low": 0.0, "mid": 0.5, "high": 1.0}
    return write_task(tmp, raw, n_records=10)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """One upstream for the uninterrupted and the interrupted runs: the same task file (its
    URL included), so their policies can be compared byte for byte."""
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens, honour_n=True) as srv:
        yield srv


class FullAfter:
    """A connection whose disk 'fills up' once ``rows`` completions are stored: every
    transaction after that fails as SQLite fails it (SQLITE_FULL, rolled back whole)."""

    def __init__(self, db: sqlite3.Connection, rows: int) -> None:
        self._db = db
        self.left = rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __enter__(self) -> Any:
        return self._db.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._db.__exit__(*exc)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        if "INTO completions" in sql:
            if len(rows) > self.left:
                self.left = 0
                raise sqlite3.OperationalError("database or disk is full")
            self.left -= len(rows)
        return self._db.executemany(sql, rows)

    def execute(self, sql: str, *args: Any) -> Any:
        if "INTO completions" in sql:
            if self.left < 1:
                raise sqlite3.OperationalError("database or disk is full")
            self.left -= 1
        return self._db.execute(sql, *args)


def _fill_after(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    init = CompletionStore.__init__

    def patched(self: CompletionStore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.db = FullAfter(self.db, rows)  # type: ignore[assignment]

    monkeypatch.setattr(CompletionStore, "__init__", patched)


@pytest.mark.parametrize("rows", [8, 20, 35])
def test_a_full_disk_is_one_line_and_the_resume_writes_the_uninterrupted_policy(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch,
        rows: int) -> None:
    task = n_task(tmp_path, server.base_url)
    assert cli("optimize", str(task), "--out", str(tmp_path / "whole")).exit_code == 0
    uninterrupted = (tmp_path / "whole" / "policy.json").read_bytes()
    total = len(server.requests)
    assert any(r.get("n", 1) > 1 for r in server.requests)  # requests of n > 1 were made

    with monkeypatch.context() as m:
        _fill_after(m, rows)
        res = cli("optimize", str(task), "--out", str(tmp_path / "cut"))
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "is full" in lines[0] and "run the same command" in lines[0]
    # no exception escaped the command (the upstream's own log may show cancelled requests)
    assert isinstance(res.exception, SystemExit) and "Usage:" not in res.output
    with CompletionStore(tmp_path / "cut" / "store.sqlite") as store:
        kept = store.count()
        sizes = store.pool_sizes()
    assert 0 < kept <= rows
    assert not (tmp_path / "cut" / "policy.json").exists()

    before = len(server.requests)
    res = cli("optimize", str(task), "--out", str(tmp_path / "cut"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cut" / "policy.json").read_bytes() == uninterrupted
    # the resume asked exactly for the requests that were not stored, nothing twice
    assert len(server.requests) - before < total
    with CompletionStore(tmp_path / "cut" / "store.sqlite") as store:
        assert all(store.pool_sizes()[p] >= k for p, k in sizes.items())


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform == "linux"


@pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs root on Linux "
                    "(the simulated full disk above runs everywhere)")
def test_a_real_full_disk_then_more_room_resumes_to_the_same_policy(
        tmp_path: Path, server: ScriptedServer) -> None:
    task = n_task(tmp_path, server.base_url)
    assert cli("optimize", str(task), "--out", str(tmp_path / "whole")).exit_code == 0
    uninterrupted = (tmp_path / "whole" / "policy.json").read_bytes()
    total = len(server.requests)
    small = tmp_path / "small"
    small.mkdir()
    # room for the store and part of the run (every transaction adds 4 KiB pages to the WAL)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)],
                   check=True)
    try:
        out = small / "run"
        before = len(server.requests)
        res = subprocess.run([sys.executable, "-m", "iapo.cli", "optimize", str(task), "--out",
                              str(out)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "is full" in errors[0], res.stderr
        assert "Traceback" not in res.stderr
        paid_before_full = len(server.requests) - before
        subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
        with CompletionStore(out / "store.sqlite") as store:
            assert store.count() > 0  # it had stored part of the run
        before = len(server.requests)
        res = subprocess.run([sys.executable, "-m", "iapo.cli", "optimize", str(task),
                              "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert (out / "policy.json").read_bytes() == uninterrupted
        # what was stored before the disk filled up was not paid again
        assert len(server.requests) - before < total
        assert paid_before_full > 0
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --- damaged and emptied stores ---------------------------------------------------------------


def _finished_run(tmp_path: Path, server: ScriptedServer) -> tuple[Path, Path]:
    task = n_task(tmp_path, server.base_url)
    out = tmp_path / "run"
    assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
    return task, out


def test_a_store_with_an_overwritten_page_is_one_line_naming_the_file(
        tmp_path: Path, server: ScriptedServer) -> None:
    task, out = _finished_run(tmp_path, server)
    path = out / "store.sqlite"
    with sqlite3.connect(path) as db:  # fold the WAL in, so the pages are in the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page: 3 * page] = b"\xa5" * page  # one page of the completions overwritten
    path.write_bytes(bytes(data))
    before = len(server.requests)
    for args in (["optimize", str(task), "--out", str(out)],
                 ["export-env", str(path), "--out", str(tmp_path / "env.npz")]):
        res = cli(*args)
        assert res.exit_code == 1, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1, res.output
        assert str(path) in lines[0] and "damaged" in lines[0] and "backup" in lines[0]
        assert "Traceback" not in res.output and "Usage:" not in res.output
    assert len(server.requests) == before  # nothing was paid
    assert path.stat().st_size == len(data)  # and the damaged file was left as it was


def test_a_zero_length_store_is_refused_not_silently_paid_again(
        tmp_path: Path, server: ScriptedServer) -> None:
    task, out = _finished_run(tmp_path, server)
    for suffix in ("", "-wal", "-shm"):
        p = out / f"store.sqlite{suffix}"
        if suffix == "":
            p.write_bytes(b"")
        else:
            p.unlink(missing_ok=True)
    report_before = (out / "report.json").read_text()
    before = len(server.requests)
    res = cli("optimize", str(task), "--out", str(out))
    assert res.exit_code == 1, res.output
    assert "is empty (0 bytes)" in res.output and "delete it to start over" in res.output
    assert len(server.requests) == before
    assert (out / "store.sqlite").stat().st_size == 0  # nothing was written into it
    assert (out / "report.json").read_text() == report_before  # the run history is kept
    (out / "store.sqlite").unlink()  # as the message says: delete it to start over
    assert cli("optimize", str(task), "--out", str(out)).exit_code == 0


# --- unwritable outputs -------------------------------------------------------------------


def test_export_env_outputs_one_line_when_unwritable_and_prints_the_real_path(
        tmp_path: Path, server: ScriptedServer) -> None:
    _, out = _finished_run(tmp_path, server)
    store = str(out / "store.sqlite")
    res = cli("export-env", store, "--out", "/proc/nope.npz")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "cannot write the environment '/proc/nope.npz'" in res.output
    if _can_mount():  # a read-only file system refuses root too
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                       check=True)
        try:
            res = cli("export-env", store, "--out", str(ro / "env.npz"))
            assert res.exit_code == 1 and "cannot write the environment" in res.output
            assert "Read-only file system" in res.output
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=False)
    # a path through a file: no folder can be made there, whoever runs it
    res = cli("export-env", store, "--out", str(out / "policy.json" / "env.npz"))
    assert res.exit_code == 1 and "cannot write the environment" in res.output
    assert (out / "policy.json").is_file()
    res = cli("export-env", store, "--out", str(tmp_path / "x.txt"))
    assert res.exit_code == 0, res.output
    assert f"written to {tmp_path / 'x.txt.npz'}" in res.output
    assert (tmp_path / "x.txt.npz").is_file() and not (tmp_path / "x.txt").exists()
    res = cli("export-env", store, "--out", str(tmp_path / "y.npz"))
    assert res.exit_code == 0 and f"written to {tmp_path / 'y.npz'}" in res.output
    assert (tmp_path / "y.npz").is_file() and not (tmp_path / "y.npz.npz").exists()


def test_a_log_store_that_cannot_be_written_stops_serve_with_one_line(
        tmp_path: Path, server: ScriptedServer) -> None:
    _, out = _finished_run(tmp_path, server)
    for bad in ("/proc/log.sqlite", str(out / "policy.json" / "log.sqlite")):
        res = subprocess.run([sys.executable, "-m", "iapo.cli", "serve",
                              str(out / "policy.json"), "--log-store", bad, "--port", "0"],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "IAPO_API_KEYS"})
        assert res.returncode == 1, res.stdout + res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and bad.rsplit("/", 1)[0] in errors[0], res.stderr
        assert "Traceback" not in res.stderr and "serving on" not in res.stdout


# --- runtime failures are not usage errors ------------------------------------------------------


def test_a_failing_upstream_is_an_error_line_not_a_usage_error(tmp_path: Path) -> None:
    with ScriptedServer(default="500") as srv:
        task = n_task(tmp_path, srv.base_url)
        res = cli("optimize", str(task), "--out", str(tmp_path / "run"))
    assert res.exit_code == 1, res.output
    assert "Usage:" not in res.output and "--help" not in res.output
    assert "Error:" in res.output and "HTTP 500" in res.output


def test_a_policy_that_is_not_a_file_is_said_so(tmp_path: Path) -> None:
    res = cli("answer", "/dev/null", "hi", "--context", "budget=low")
    assert res.exit_code == 2
    assert "is not a regular file" in res.output and "does not exist" not in res.output
    res = cli("answer", str(tmp_path / "missing.json"), "hi", "--context", "budget=low")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_bench_with_a_bad_envs_file_leaves_no_out_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an environment")
    out = tmp_path / "bench"
    res = cli("bench", "--envs", str(bad), "--budgets", "100", "--runs", "1", "--out", str(out))
    assert res.exit_code == 2, res.output
    assert not out.exists()
    res = cli("bench", "--envs", "no-such-env", "--budgets", "100", "--runs", "1", "--out",
              str(out))
    assert res.exit_code == 2 and not out.exists()


def test_store_failures_map_sqlite_errors_to_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    full = store_module.store_failure(path, sqlite3.OperationalError("database or disk is full"))
    assert "is full" in str(full) and "resumes" in str(full)
    bad = store_module.store_failure(path, sqlite3.DatabaseError("database disk image is "
                                                                 "malformed"))
    assert str(path) in str(bad) and "damaged" in str(bad)
    ro = store_module.store_failure(path, sqlite3.OperationalError("attempt to write a "
                                                                   "readonly database"))
    assert "cannot be written" in str(ro)
    with pytest.raises(store_module.StoreFailure):
        with store_module.store_errors(path):
            raise sqlite3.OperationalError("database or disk is full")
