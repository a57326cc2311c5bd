"""A gallery pinned to another pack: the start error's commands name folders and work when pasted."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from service.cli import main
from service.gallery.sqlite_store import SqliteGalleryStore
from service.packs.loader import load_pack, read_manifest, resolve_pack_dir
from service.packs.manifest import MANIFEST_FILE

OTHER_ID = "other-pack-0123abcd"


def _pack_folder_with_id(source: Path, folder: Path, pack_id: str) -> None:
    """The default pack's files linked under another folder, its manifest claiming ``pack_id``."""
    folder.mkdir(parents=True)
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    for name in manifest["files"]:
        (folder / name).symlink_to(source / name)
    manifest["id"] = pack_id
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("holders", [[], ["kept"], ["b-copy", "a-copy"]], ids=["none", "one", "two"])
@pytest.mark.parametrize("spaced", [False, True], ids=["plain", "spaced-dirs"])
def test_mismatch_advice_is_pasteable(
    tmp_path: Path,
    default_pack_dir: Path,
    holders: list[str],
    spaced: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / ("with space" if spaced else "plain")
    data_dir, models_dir = root / "data", root / "models"
    models_dir.mkdir(parents=True)
    data_dir.mkdir()
    (models_dir / "current").symlink_to(default_pack_dir, target_is_directory=True)
    for name in holders:
        _pack_folder_with_id(default_pack_dir, models_dir / name, OTHER_ID)
    store = SqliteGalleryStore(data_dir / "gallery.sqlite3")
    store.pin(OTHER_ID, load_pack(default_pack_dir).manifest.embedder.embedding_size)
    store.close()
    for name, value in {
        "FACE_DATA_DIR": data_dir,
        "FACE_MODELS_DIR": models_dir,
        "FACE_PACK": "current",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")
    monkeypatch.delenv("FACE_API_KEY", raising=False)

    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    pasted = re.findall(r"`([^`]+)`", err)
    commands = [shlex.split(c) for c in pasted]
    assert OTHER_ID in err
    reembed = commands[0]
    assert reembed[reembed.index("--pack") + 1] == "current"  # a folder name, as --pack takes it
    if holders:
        keep = commands[1]
        expected = sorted(holders)[0]
        assert keep[0] == f"FACE_PACK={expected}"
        assert read_manifest(resolve_pack_dir(models_dir, expected)).id == OTHER_ID
        assert Path(keep[-2]).name == "face-service"
        assert keep[-1] == "serve"
    else:
        assert len(commands) == 1
        assert f"no folder under {models_dir} holds {OTHER_ID!r}" in err

    # Pasted into a shell that has none of these settings, the re-embed command moves the gallery over.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACE_")}
    env["FACE_INTRA_OP_THREADS"] = "1"
    done = subprocess.run(["bash", "-c", pasted[0]], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = SqliteGalleryStore(data_dir / "gallery.sqlite3")
    try:
        pinned = store.pinned_pack()
        assert pinned is not None
        assert pinned.pack_id == load_pack(default_pack_dir).manifest.id
    finally:
        store.close()
