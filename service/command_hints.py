"""Commands printed in hints and errors, spelled so that they work when pasted.

``make install`` never activates ``.venv``, so a bare ``face-service`` is often "command not found":
a hint names the program as the running interpreter's environment has it (``.venv/bin/face-service``)
unless that very file is what the shell finds anyway. A service started with ``FACE_DATA_DIR`` or
``FACE_MODELS_DIR`` set also gets them in front of the command, so the hint acts on the same data.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def program_path(program: str) -> str:
    """``program`` as the shell should be told: bare when on ``PATH``, else its path in this environment."""
    here = Path(sys.executable).parent / program
    if not here.is_file():
        return program
    found = shutil.which(program)
    if found is not None and Path(found).resolve() == here.resolve():
        return program
    try:
        relative = here.absolute().relative_to(Path.cwd())
    except ValueError:
        return str(here.absolute())
    return str(relative)


def command_hint(
    program: str,
    *args: str,
    data_dir: Path | None = None,
    models_dir: Path | None = None,
    pack: str | None = None,
) -> str:
    """A pasteable shell command: ``FACE_DATA_DIR=/x .venv/bin/face-service keys create ...``.

    The settings given are the ones the command must share with the caller; each one that is not its
    default is written out in front (the shell the hint is pasted into may not have it exported).
    """
    from service.settings import default_data_dir, default_models_dir

    shared = (
        ("FACE_DATA_DIR", data_dir, default_data_dir()),
        ("FACE_MODELS_DIR", models_dir, default_models_dir()),
        ("FACE_PACK", pack, "default"),
    )
    prefix = [
        f"{name}={shlex.quote(str(value))}"
        for name, value, default in shared
        if value is not None and str(value) != str(default)
    ]
    return " ".join([*prefix, shlex.quote(program_path(program)), *(shlex.quote(a) for a in args)])
