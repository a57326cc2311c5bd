"""scripts/install.sh takes torch from PyTorch's CPU index, and degrades cleanly when it does not answer.

The script runs for real in dry-run mode with its index probe on (``TORCH_INDEX_PROBE=1``), against
local servers: one that serves a ``torch/`` page, and every kind of index that does not answer.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_command(env: dict[str, str]) -> tuple[list[str], str]:
    """The torch pip command install.sh would run (dry run, probe on), and its stderr."""
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--extras", "export", sys.executable],
        env={**os.environ, "INSTALL_DRY_RUN": "1", "TORCH_INDEX_PROBE": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    torch = [c for c in commands if any(arg.startswith("torch==") for arg in c)]
    assert len(torch) == 1, result.stdout
    assert all("--index-url" not in c for c in commands if c is not torch[0])  # torch alone
    return torch[0], result.stderr


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def index_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local 'simple' index root with a torch/ page, and nothing else."""
    root = tmp_path_factory.mktemp("index")
    (root / "torch").mkdir()
    (root / "torch" / "index.html").write_text("<html><body>torch</body></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: the probe must time out, not hang the install."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_answering_index_is_used_for_torch_alone(index_server: str) -> None:
    command, stderr = _torch_command({"TORCH_INDEX_URL": index_server})
    assert command[command.index("--index-url") + 1] == index_server
    assert "warning" not in stderr


@pytest.mark.parametrize(
    "kind", ["refused", "unresolvable-host", "not-a-url", "no-torch-page", "never-answers", "file-scheme"]
)
def test_an_index_that_does_not_answer_falls_back_with_a_warning(
    kind: str, index_server: str, silent_server: str, tmp_path: Path
) -> None:
    url = {
        "refused": f"http://127.0.0.1:{_closed_port()}/whl/cpu",
        "unresolvable-host": "https://download.pytorch.invalid/whl/cpu",
        "not-a-url": "no scheme here",
        "no-torch-page": f"{index_server}/elsewhere",
        "never-answers": silent_server,
        "file-scheme": (tmp_path / "missing").as_uri(),
    }[kind]
    command, stderr = _torch_command({"TORCH_INDEX_URL": url, "TORCH_INDEX_TIMEOUT": "2"})
    assert "--index-url" not in command
    assert f"torch index {url} does not answer" in stderr
    assert "TORCH_INDEX_URL" in stderr  # says how to choose another


def test_empty_index_url_means_pips_own_indexes_without_a_probe() -> None:
    command, stderr = _torch_command({"TORCH_INDEX_URL": ""})
    assert "--index-url" not in command
    assert stderr == ""


def test_the_default_is_pytorchs_cpu_index() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--extras", "export", sys.executable],
        env={**env, "INSTALL_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (torch,) = [shlex.split(line) for line in result.stdout.splitlines() if "torch==" in line]
    assert torch[torch.index("--index-url") + 1] == CPU_INDEX
