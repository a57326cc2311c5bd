"""Cached, idempotent pack builds shared by every built-in pack (default, dlib, ensemble).

A pack that verifies (every sha256 matches), was made by the builder's recipe and declares what the
builder would declare now is left alone; a missing, corrupted or older pack is rebuilt atomically.
Concurrent builders (several test sessions, ``make pack``) are serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.packs.files import PackError
from service.packs.loader import load_pack
from service.packs.manifest import PackManifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackRecipe:
    """How one built-in pack is made and how to tell that a built copy is current."""

    name: str  # for messages: "default", "dlib", "ensemble"
    created_by: str  # written into the manifest; bump it when anything that goes into the pack changes
    build: Callable[[Path], None]  # writes a complete pack to the folder (atomically)
    # A declared convention that differs from what the builder would write now (cheap: no torch).
    difference: Callable[[PackManifest], str | None] = lambda manifest: None


def build_cached(recipe: PackRecipe, out_dir: Path, *, force: bool = False) -> Path:
    """Build ``recipe`` into ``out_dir`` unless a verified, current pack is already there."""
    with build_lock(out_dir):
        reason = "forced" if force else stale_reason(recipe, out_dir)
        if reason is None:
            logger.info(
                "%s pack in %s is up to date (every sha256 matches); nothing to do", recipe.name, out_dir
            )
            return out_dir
        logger.info("building the %s pack in %s: %s", recipe.name, out_dir, reason)
        recipe.build(out_dir)
    return out_dir


def stale_reason(recipe: PackRecipe, out_dir: Path) -> str | None:
    """Why the pack in ``out_dir`` must be (re)built, or None when it is current."""
    if not out_dir.exists():
        return "no pack there yet"
    try:
        pack = load_pack(out_dir, verify=True)
    except PackError as exc:
        return str(exc)
    if pack.manifest.created_by != recipe.created_by:
        return f"it was made by {pack.manifest.created_by!r}, not {recipe.created_by!r}"
    return recipe.difference(pack.manifest)


@contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    # One builder at a time per pack folder; the lock file lives beside the pack, not inside it.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
