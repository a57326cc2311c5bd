"""The service runs on OpenCV's headless build, and nothing installs the GUI build behind it."""

from __future__ import annotations

import os
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {
        requirement.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip()
        for requirement in requirements
    }


def test_service_depends_on_headless_opencv_only() -> None:
    project = _pyproject()["project"]
    every = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    assert "opencv-python-headless" in _names(project["dependencies"])
    assert "opencv-python" not in _names(every)
    assert "insightface" not in _names(every)  # it requires opencv-python: installed --no-deps instead


def test_this_environment_has_no_gui_opencv() -> None:
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("opencv-python")
    assert metadata.version("opencv-python-headless")


def test_install_script_installs_insightface_without_its_dependencies() -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "install.sh"), "--extras", "export,dev", "python3"],
        env={**os.environ, "INSTALL_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert any("--no-deps insightface==" in line for line in lines)
    service_only = subprocess.run(
        [str(REPO_ROOT / "scripts" / "install.sh"), "python3"],
        env={**os.environ, "INSTALL_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "insightface" not in service_only.stdout
