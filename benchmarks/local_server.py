"""The real ``face-service serve`` as a child process on 127.0.0.1, for benchmarks and tests.

RSS is read from ``/proc/<pid>/status`` (Linux).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
# Set per server; never taken from the caller's environment.
_OWNED_SETTINGS = ("FACE_DATA_DIR", "FACE_API_KEY", "FACE_PORT", "FACE_HOST")
# Test defaults: one inference thread and the CPU, so concurrent test servers stay predictable.
_TEST_SETTINGS = {"FACE_INTRA_OP_THREADS": "1", "FACE_DEVICE": "cpu"}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _serve_command() -> list[str]:
    # The real console script of this environment; `python -m service.cli` when it is not installed.
    script = Path(sys.executable).with_name("face-service")
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "service.cli", "serve"]


class LocalServer:
    """``face-service serve`` as a child process on 127.0.0.1 with a free port.

    stdout and stderr go to ``log_path``. ``start`` can be called again after ``kill``/``stop`` (same
    data dir, same key, a new port): that is how the crash test restarts the service.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        inherit_settings: bool = False,
    ) -> None:
        """``inherit_settings``: keep the caller's ``FACE_*`` settings (device, threads, index...),
        as a benchmark of the configured service wants; otherwise one CPU thread, as tests want."""
        self.data_dir = Path(data_dir)
        self.inherit_settings = inherit_settings
        self.api_key = api_key or f"load-{secrets.token_urlsafe(24)}"
        self.extra_env = dict(env or {})
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FACE_")}
        if self.inherit_settings:
            env.update(
                (key, value)
                for key, value in os.environ.items()
                if key.startswith("FACE_") and key not in _OWNED_SETTINGS
            )
        else:
            env.update(_TEST_SETTINGS)
            # Only the models location is taken from the caller's FACE_* settings (where the pack is).
            env.update(
                (name, os.environ[name]) for name in ("FACE_MODELS_DIR", "FACE_PACK") if name in os.environ
            )
        env.update(
            {
                "FACE_DATA_DIR": str(self.data_dir),
                "FACE_API_KEY": self.api_key,
                "FACE_PORT": str(self.port),
                "FACE_HOST": "127.0.0.1",
                "FACE_LOG_LEVEL": "warning",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout_s: float = 120.0) -> None:
        if self._process is not None:
            raise RuntimeError("the server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._process = subprocess.Popen(
            _serve_command(),
            cwd=REPO_ROOT,
            env=self.environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                raise RuntimeError(f"the server exited with status {code} at start; see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash the gallery must survive)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)
        self._reap()

    def stop(self, timeout_s: float = 30.0) -> int:
        """A clean shutdown (SIGINT, as Ctrl+C); returns the exit status."""
        if self._process is None:
            return 0
        self._process.send_signal(signal.SIGINT)
        try:
            code = self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait(timeout=30)
        self._reap()
        return code

    def _reap(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LocalServer:
        if self._process is None:  # already started (with a longer ready timeout, say): keep it
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self.stop()
