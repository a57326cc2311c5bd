"""``face-service``: key management, start-up failures with clear messages, a real ``serve``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.auth.keys import Scope, SqliteKeyStore
from service.cli import main
from service.gallery.sqlite_store import SqliteGalleryStore
from service.packs.loader import load_pack

_KEY_LINE = re.compile(r"key:\s+(fsk_\S+)")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FACE_API_KEY", raising=False)
    return tmp_path


def test_keys_create_list_revoke(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--scopes", "read,enroll", "--name", "kiosk"]) == 0
    created = capsys.readouterr().out
    key = _KEY_LINE.search(created)
    assert key is not None
    record = SqliteKeyStore.in_data_dir(data_dir).authenticate(key.group(1))
    assert record is not None
    assert record.scopes == {Scope.READ, Scope.ENROLL}

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert record.id in listing
    assert "kiosk" in listing
    assert key.group(1) not in listing

    assert main(["keys", "revoke", record.id]) == 0
    capsys.readouterr()
    assert SqliteKeyStore.in_data_dir(data_dir).authenticate(key.group(1)) is None
    assert main(["keys", "list"]) == 0
    assert record.id not in capsys.readouterr().out  # revoked keys only with --all
    assert main(["keys", "list", "--all"]) == 0
    assert "revoked" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "\x1b[31mred", "evil\u202etxt", "cr\r", "\ud800"])
def test_keys_create_refuses_names_the_api_refuses(
    name: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--scopes", "read", "--name", name]) == 1
    assert "--name:" in capsys.readouterr().err
    assert SqliteKeyStore.in_data_dir(data_dir).list() == []  # nothing was created


def test_keys_errors_exit_1(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--scopes", "superuser"]) == 1
    assert "unknown scope" in capsys.readouterr().err
    assert main(["keys", "revoke", "0123456789ab"]) == 1
    assert "no API key" in capsys.readouterr().err


def test_serve_with_a_missing_pack_exits_1(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACE_MODELS_DIR", str(tmp_path / "no-models"))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "cannot start" in err
    assert "face-export default-pack" in err


def test_serve_on_a_gallery_of_another_pack_names_reembed(
    data_dir: Path,
    default_pack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = SqliteGalleryStore(data_dir / "gallery.sqlite3")
    store.pin("some-other-pack", 512)
    store.close()
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "some-other-pack" in err
    assert "face-service reembed" in err


def test_serve_with_an_unknown_threshold_name_exits_1(
    data_dir: Path,
    default_pack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_THRESHOLD", "far=1e-9")
    assert main(["serve"]) == 1
    assert "unknown operating point 'far=1e-9'" in capsys.readouterr().err


def test_reembed_on_the_current_pack_changes_nothing(
    data_dir: Path,
    default_pack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")
    assert main(["reembed"]) == 1  # no gallery yet
    assert "no gallery" in capsys.readouterr().err
    from service.packs.loader import load_pack

    store = SqliteGalleryStore(data_dir / "gallery.sqlite3")
    manifest = load_pack(default_pack_dir).manifest
    store.pin(manifest.id, manifest.embedder.embedding_size)
    store.close()
    assert main(["reembed"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(data_dir: Path, pack_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FACE_DATA_DIR": str(data_dir),
        "FACE_MODELS_DIR": str(pack_dir.parent),
        "FACE_PACK": pack_dir.name,
        "FACE_PORT": str(port),
        "FACE_INTRA_OP_THREADS": "1",
        "FACE_LOG_LEVEL": "warning",
    }
    env.pop("FACE_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(base: str, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.communicate()[1]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return out


def test_serve_prints_a_bootstrap_admin_key_once(tmp_path: Path, default_pack_dir: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    first = _start_server(tmp_path, default_pack_dir, port)
    try:
        _wait_healthy(base, first)
        assert httpx.get(f"{base}/v1/info").status_code == 401
    finally:
        out = _stop(first)
    key = _KEY_LINE.search(out)
    assert key is not None, out

    second = _start_server(tmp_path, default_pack_dir, port)
    try:
        _wait_healthy(base, second)
        info = httpx.get(f"{base}/v1/info", headers={"X-API-Key": key.group(1)})
        assert info.status_code == 200
        assert info.json()["pack_id"] == load_pack(default_pack_dir).manifest.id
    finally:
        again = _stop(second)
    assert _KEY_LINE.search(again) is None


def test_check_and_reembed_on_a_shared_postgresql_gallery(
    data_dir: Path,
    default_pack_dir: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.gallery.backends import open_store, store_options
    from service.settings import Settings

    monkeypatch.setenv("FACE_DATABASE_URL", pg_url)
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")
    assert main(["check"]) == 1  # an empty database holds no gallery yet
    assert "no gallery" in capsys.readouterr().err

    manifest = load_pack(default_pack_dir).manifest
    opened = open_store(data_dir, store_options(Settings()))
    opened.store.pin(manifest.id, manifest.embedder.embedding_size)
    opened.store.create_subject("someone")
    opened.close()
    assert main(["check"]) == 0
    assert "shared gallery: ok (1 subjects, 0 faces)" in capsys.readouterr().out
    assert main(["check", "--repair"]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert main(["reembed"]) == 0  # reads the database, not the (empty) data dir
    assert "nothing to do" in capsys.readouterr().out
    assert not (data_dir / "gallery.sqlite3").exists()
