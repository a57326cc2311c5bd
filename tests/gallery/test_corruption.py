"""A damaged gallery file: the real ``face-service serve`` refuses with one line, ``check --repair`` fixes it.

Every kind of damage is applied to a copy of one real gallery (three people of dlib_johns, two faces
each, with crops): the start must fail with one line naming the file and the repair command (no
traceback), ``check`` must report it, ``check --repair`` must move the damage aside (the original
bytes are kept) and the next start must serve every face that was not damaged.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.local_server import LocalServer
from service.gallery.gallery import Gallery
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore
from service.gallery.store import NewFace, PackPinMissingError, StoredCrop
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(faiss_gpu=False)
PEOPLE = 3
FACES_PER_PERSON = 2
ALL_FACES = PEOPLE * FACES_PER_PERSON


@pytest.fixture(scope="module")
def template_gallery(
    tmp_path_factory: pytest.TempPathFactory,
    default_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> Path:
    """A data dir holding a real, healthy gallery (closed, WAL checkpointed into the file)."""
    data_dir = tmp_path_factory.mktemp("template") / "data"
    with Gallery.open(
        data_dir, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS
    ) as gallery:
        for name in sorted(johns)[:PEOPLE]:
            subject = gallery.create_subject(name)
            for image in johns[name][:FACES_PER_PERSON]:
                (embedded,) = default_pipeline.analyze_sync(image)
                crop = StoredCrop(*default_pipeline.storage_crop(image, embedded.face))
                gallery.add_faces(subject.id, [NewFace.from_embedded(embedded, crop)])
    assert not (data_dir / f"{GALLERY_FILE}-wal").exists()
    return data_dir


def _run_cli(data_dir: Path, pack_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACE_")}
    env.update(
        FACE_DATA_DIR=str(data_dir),
        FACE_MODELS_DIR=str(pack_dir.parent),
        FACE_PACK=pack_dir.name,
        FACE_API_KEY="corruption-test-key",
        FACE_DEVICE="cpu",
        FACE_INTRA_OP_THREADS="1",
        FACE_LOG_LEVEL="error",
        FACE_PORT="1",  # never reached: these starts must fail before binding
    )
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _first_face(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT MIN(index_id) FROM faces").fetchone()[0])


def _set_embedding(db: Path, value: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE faces SET embedding = ? WHERE index_id = ?", (value, _first_face(db)))
    conn.close()


def _bad_floats(special: float) -> Callable[[Path], None]:
    def corrupt(db: Path) -> None:
        with sqlite3.connect(db) as conn:
            (blob,) = conn.execute("SELECT embedding FROM faces LIMIT 1").fetchone()
        values = list(struct.unpack(f"<{len(blob) // 4}f", blob))
        values[7] = special
        _set_embedding(db, struct.pack(f"<{len(values)}f", *values))

    return corrupt


def _truncate(db: Path) -> None:
    with open(db, "r+b") as handle:
        handle.truncate(db.stat().st_size // 2)


def _zero_header(db: Path) -> None:
    with open(db, "r+b") as handle:
        handle.write(bytes(100))


def _garbage(db: Path) -> None:
    db.write_bytes(np.random.default_rng(9).bytes(db.stat().st_size))


def _directory(db: Path) -> None:
    db.unlink()
    db.mkdir()
    (db / "something").write_text("not a database")


def _orphan_face(db: Path) -> None:
    conn = sqlite3.connect(db)  # foreign keys are off on a plain connection: as a hand edit would be
    with conn:
        conn.execute("UPDATE faces SET subject_id = 'gone' WHERE index_id = ?", (_first_face(db),))
    conn.close()


FILE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "zeroed-header": _zero_header,
    "garbage": _garbage,
    "directory": _directory,
}
ROW_DAMAGE: dict[str, Callable[[Path], None]] = {
    "embedding-too-short": lambda db: _set_embedding(db, b"\x00" * 12),
    "embedding-too-long": lambda db: _set_embedding(db, b"\x00" * 4 * 1000),
    "embedding-empty": lambda db: _set_embedding(db, b""),
    "embedding-as-text": lambda db: _set_embedding(db, "not floats"),
    "embedding-nan": _bad_floats(float("nan")),
    "embedding-inf": _bad_floats(float("inf")),
    "face-of-no-subject": _orphan_face,
}


def _damaged_copy(template: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    (data_dir / "gallery.lock").unlink(missing_ok=True)
    damage(data_dir / GALLERY_FILE)
    return data_dir


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], db: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("face-service: cannot start:")]
    assert len(lines) == 1, output
    assert str(db) in lines[0]
    assert "face-service check --repair" in lines[0]


def _served_faces(data_dir: Path, tmp_path: Path, pack_dir: Path) -> int:
    """Start the real server on ``data_dir`` and count the faces its API lists."""
    env = {"FACE_MODELS_DIR": str(pack_dir.parent), "FACE_PACK": pack_dir.name}
    with LocalServer(data_dir, env=env, log_path=tmp_path / "after-repair.log") as server:
        subjects = httpx.get(f"{server.base_url}/v1/subjects", headers=server.headers, timeout=30).json()
        total = 0
        for subject in subjects["subjects"]:
            faces = httpx.get(
                f"{server.base_url}/v1/subjects/{subject['id']}/faces", headers=server.headers, timeout=30
            )
            assert faces.status_code == 200, faces.text
            total += len(faces.json()["faces"])
        return total


@pytest.mark.parametrize("kind", sorted(FILE_DAMAGE))
def test_an_unreadable_gallery_file_stops_the_start_and_repair_moves_it_aside(
    kind: str, template_gallery: Path, tmp_path: Path, default_pack_dir: Path
) -> None:
    data_dir = _damaged_copy(template_gallery, tmp_path, FILE_DAMAGE[kind])
    db = data_dir / GALLERY_FILE
    damaged_bytes = db.read_bytes() if db.is_file() else None

    _assert_one_clear_line(_run_cli(data_dir, default_pack_dir, "serve"), db)
    check = _run_cli(data_dir, default_pack_dir, "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "unreadable" in check.stdout

    repair = _run_cli(data_dir, default_pack_dir, "check", "--repair")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    (aside,) = data_dir.glob(f"{GALLERY_FILE}.corrupt-*Z")  # kept, never deleted (its -wal, -shm too)
    if damaged_bytes is not None:
        assert aside.read_bytes() == damaged_bytes
    else:
        assert (aside / "something").read_text() == "not a database"
    assert _run_cli(data_dir, default_pack_dir, "check").returncode == 0
    # The change sequence goes on from the damaged file's when its header is readable (salvage: +1).
    with sqlite3.connect(template_gallery / GALLERY_FILE) as before, sqlite3.connect(db) as after:
        template_seq = before.execute("PRAGMA user_version").fetchone()[0]
        salvaged_seq = after.execute("PRAGMA user_version").fetchone()[0]
    assert template_seq > 0
    assert salvaged_seq == {"truncated": template_seq + 1, "directory": 0}.get(kind, 1)
    salvaged = re.search(r"salvaged into a new file: .*?(\d+) faces", repair.stdout)
    assert salvaged is not None, repair.stdout
    # Nothing is readable from a file without its header; a truncated one keeps its first pages' rows.
    assert int(salvaged.group(1)) <= (ALL_FACES if kind == "truncated" else 0)
    assert _served_faces(data_dir, tmp_path, default_pack_dir) == int(salvaged.group(1))


@pytest.mark.parametrize("kind", sorted(ROW_DAMAGE))
def test_a_bad_face_row_stops_the_start_and_repair_quarantines_only_it(
    kind: str, template_gallery: Path, tmp_path: Path, default_pack_dir: Path
) -> None:
    data_dir = _damaged_copy(template_gallery, tmp_path, ROW_DAMAGE[kind])
    db = data_dir / GALLERY_FILE
    bad_index_id = _first_face(db)

    _assert_one_clear_line(_run_cli(data_dir, default_pack_dir, "serve"), db)
    check = _run_cli(data_dir, default_pack_dir, "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"face #{bad_index_id}:" in check.stdout

    repair = _run_cli(data_dir, default_pack_dir, "check", "--repair")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    with sqlite3.connect(db) as conn:
        quarantined = conn.execute("SELECT index_id, png IS NOT NULL FROM quarantined_faces").fetchall()
    assert quarantined == [(bad_index_id, 1)]  # the face and its crop are kept, out of the way
    assert _served_faces(data_dir, tmp_path, default_pack_dir) == ALL_FACES - 1


@pytest.mark.parametrize("faces_deleted", [0, ALL_FACES - 1])
def test_a_removed_pack_pin_is_refused_while_faces_remain(
    faces_deleted: int, template_gallery: Path, tmp_path: Path, default_pack_dir: Path
) -> None:
    def remove_pin(db: Path) -> None:
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("DELETE FROM meta")
            conn.execute(
                "DELETE FROM faces WHERE index_id IN (SELECT index_id FROM faces ORDER BY index_id LIMIT ?)",
                (faces_deleted,),
            )
        conn.close()

    data_dir = _damaged_copy(template_gallery, tmp_path, remove_pin)
    result = _run_cli(data_dir, default_pack_dir, "serve")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "pack pin (the meta row) is missing" in result.stderr
    assert "will not guess" in result.stderr
    store = SqliteGalleryStore(data_dir / GALLERY_FILE)
    try:
        assert store.pinned_pack() is None  # nothing was re-pinned
    finally:
        store.close()


def test_an_empty_gallery_without_a_pin_is_pinned(tmp_path: Path) -> None:
    store = SqliteGalleryStore(tmp_path / GALLERY_FILE)
    try:
        store.create_subject("no faces yet")
        assert store.pin("some-pack", 8).pack_id == "some-pack"
        store.add_faces(store.list_subjects().items[0].id, [NewFace(np.eye(8, dtype=np.float32)[0], 0.9)])
        with sqlite3.connect(tmp_path / GALLERY_FILE) as hand_edit:
            hand_edit.execute("DELETE FROM meta")
        with pytest.raises(PackPinMissingError, match="1 faces"):
            store.pin("other-pack", 8)
        assert store.pinned_pack() is None
    finally:
        store.close()
