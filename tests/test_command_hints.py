"""Hints print commands that work when pasted: the venv's program path, and the same data dir.

The bootstrap hint is run for real through bash (without the venv on PATH, as after `make install`)
for data dirs that need quoting; the key it creates must land in the service's own key store.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.auth.authenticator import bootstrap_authenticator
from service.auth.keys import KEYS_DB_FILE
from service.command_hints import command_hint, program_path
from service.settings import Settings

VENV_BIN = Path(sys.executable).parent


def _without_venv_on_path() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACE_")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()
    )
    return env


@pytest.mark.parametrize("folder", ["plain", "with space", "it's quoted", "ümlaut-и-日本", "$HOME;rm"])
def test_bootstrap_hint_runs_as_pasted_on_the_same_data_dir(tmp_path: Path, folder: str) -> None:
    data_dir = tmp_path / folder
    out = io.StringIO()
    bootstrap_authenticator(Settings(data_dir=data_dir, api_key=None, auth_enabled=True), out=out)
    (hint,) = re.findall(r"`([^`]+)`", out.getvalue())
    assert "face-service keys create" in hint
    result = subprocess.run(
        ["bash", "-c", hint], env=_without_venv_on_path(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "key:" in result.stdout
    with sqlite3.connect(data_dir / KEYS_DB_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 2


@pytest.mark.parametrize("program", ["face-service", "face-export", "face-train", "face-eval"])
def test_program_path_is_runnable_without_the_venv_on_path(program: str) -> None:
    os.environ["PATH"], saved = _without_venv_on_path()["PATH"], os.environ["PATH"]
    try:
        path = program_path(program)
    finally:
        os.environ["PATH"] = saved
    assert Path(path).is_file()
    assert os.access(path, os.X_OK)


def test_program_on_path_is_named_bare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert program_path("face-service") == "face-service"
    assert command_hint("face-service", "serve") == "face-service serve"
