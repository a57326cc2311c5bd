"""DataDirLock: one process at a time owns a data dir's gallery (an flock on ``gallery.lock``).

Two services, or a service and a reembed, writing to the same files would make the index of one
of them stale. The SQLite backend's opener takes this lock; a shared-database backend brings its
own (or none).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from service.gallery.store import GalleryError

LOCK_FILE = "gallery.lock"


class GalleryLockedError(GalleryError):
    """Another process has the gallery open (a running service, or a reembed in progress)."""


class DataDirLock:
    """An exclusive advisory lock (flock) on ``<data_dir>/gallery.lock``; released at close or exit."""

    def __init__(self, data_dir: Path) -> None:
        self._path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise GalleryLockedError(
                f"the gallery in {data_dir} is in use by another process (lock {self._path}); "
                "stop the service before running maintenance such as `face-service reembed`"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
