"""Pack-file primitives below the loader: the pack error, file hashing, writing ``manifest.json``.

The loader, the insightface tables and the export step all use these; keeping them here lets
imports run one way (loader → insightface → files) instead of in a circle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from service.atomic_files import write_text_atomic
from service.packs.manifest import MANIFEST_FILE, PackManifest

_HASH_CHUNK = 1 << 20


class PackError(ValueError):
    """A pack folder cannot be used: the message says what is wrong and where."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (packs hold files of hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(pack_dir: Path, manifest: PackManifest) -> Path:
    """Write ``manifest.json`` atomically (temp file, fsync, rename) so readers never see half of it."""
    return write_text_atomic(pack_dir / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
