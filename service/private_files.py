"""Private data files: biometric data and key hashes are the owner's only, whatever the umask.

SQLite creates a database with mode 0644 (less the umask) and gives its -wal, -shm and -journal files
the database file's mode, so creating the (empty) database file 0600 first makes all of them 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; a folder this call creates is made 0700.

    A folder that already exists keeps its mode: the operator chose it.
    """
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return path  # created meanwhile by another process (or a file is there: the caller's open says so)
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def ensure_private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (an existing file is left alone)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # os.open's mode is filtered by the umask
    finally:
        os.close(fd)
    return path
