"""Operations: a full disk, and who may read the data files (the real ``face-service serve``).

The full disk is real: a 4 MiB tmpfs (root only; skipped elsewhere) holding the data dir and a
filler file that leaves 256 KiB free. Enrollments go on until the disk is full: that one answers
507 ``storage_full``, stored keys keep working (authentication only reads), freeing the filler
makes enrollment work again, and after a restart every acknowledged face is there.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.load_test import FaceImages
from benchmarks.local_server import REPO_ROOT
from service.gallery.store import is_storage_full
from tests.robustness.conftest import ServerFactory

TMPFS_BYTES = 4 * 1024 * 1024
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
OTHER_ERRNOS = (errno.EACCES, errno.EIO, errno.ENOENT, errno.EROFS, errno.EPERM, errno.EMFILE)
LEFT_BYTES = 256 * 1024  # room for a few enrollments before the disk is full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (needs root: mount(2))."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _create_stored_key(data_dir: Path, pack_dir: Path) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACE_")}
    env.update(FACE_DATA_DIR=str(data_dir), FACE_MODELS_DIR=str(pack_dir.parent), FACE_PACK=pack_dir.name)
    created = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--scopes", "read,enroll"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(line.split()[1] for line in created.stdout.splitlines() if line.startswith("key:"))


def _enroll(client: httpx.Client, subject_id: str, image: bytes) -> httpx.Response:
    return client.post(
        f"/v1/subjects/{subject_id}/faces", files=[("images", ("face.jpg", image, "image/jpeg"))]
    )


def _listed_faces(client: httpx.Client) -> set[str]:
    faces: set[str] = set()
    for subject in client.get("/v1/subjects", params={"limit": 100}).json()["subjects"]:
        listing = client.get(f"/v1/subjects/{subject['id']}/faces")
        assert listing.status_code == 200, listing.text
        faces.update(face["id"] for face in listing.json()["faces"])
    return faces


def test_a_full_disk_answers_507_keeps_keys_working_and_loses_nothing(
    small_disk: Path, make_server: ServerFactory, face_images: FaceImages, default_pack_dir: Path
) -> None:
    data_dir = small_disk / "data"
    stored_key = _create_stored_key(data_dir, default_pack_dir)
    server = make_server(FACE_DATA_DIR=str(data_dir))
    server.start()
    # All but LEFT_BYTES taken by a file an operator can delete later to free space.
    disk = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(b"\x01" * (disk.f_bavail * disk.f_frsize - LEFT_BYTES))
    photos = [
        (person, data) for person in sorted(face_images.people) for _, data in face_images.people[person]
    ]
    acknowledged: set[str] = set()
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": stored_key}, timeout=60) as client:
        subject_id = client.post("/v1/subjects", json={"name": "fills the disk"}).json()["id"]
        full: httpx.Response | None = None
        for _, image in photos:
            answer = _enroll(client, subject_id, image)
            if answer.status_code == 507:
                full = answer
                break
            assert answer.status_code in (201, 422), answer.text
            acknowledged.update(
                item["face_id"] for item in answer.json().get("results", []) if item["accepted"]
            )
        assert full is not None, f"the disk never filled ({len(acknowledged)} faces enrolled)"
        assert full.headers["content-type"].startswith("application/problem+json")
        assert full.json()["type"] == "urn:face-service:problem:storage_full"
        assert "nothing from this request was stored" in full.json()["detail"]
        assert acknowledged, "no face fitted before the disk filled: the test proves nothing"

        # Full disk: stored keys still authenticate, reads work, the service stays ready.
        assert client.get("/v1/info").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert _listed_faces(client) == acknowledged
        again = _enroll(client, subject_id, photos[0][1])
        assert again.status_code == 507, again.text

        filler.unlink()  # space is back: writes work again
        after = _enroll(client, subject_id, photos[-1][1])
        assert after.status_code == 201, after.text
        acknowledged.update(item["face_id"] for item in after.json()["results"] if item["accepted"])
    assert server.stop() == 0
    server.start()
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": stored_key}, timeout=60) as client:
        assert _listed_faces(client) == acknowledged
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_data_files_are_private_whatever_the_umask(
    umask: int, tmp_path: Path, make_server: ServerFactory, face_images: FaceImages
) -> None:
    data_dir = tmp_path / "fresh" / "data"  # the service creates it
    server = make_server(FACE_DATA_DIR=str(data_dir))
    previous = os.umask(umask)  # inherited by the child
    try:
        server.start()
    finally:
        os.umask(previous)
    person = sorted(face_images.people)[0]
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
        subject_id = client.post("/v1/subjects", json={"name": person}).json()["id"]
        assert _enroll(client, subject_id, face_images.people[person][0][1]).status_code == 201
        _assert_private(data_dir, expect_wal=True)
    assert server.stop() == 0
    _assert_private(data_dir, expect_wal=False)


def _assert_private(data_dir: Path, *, expect_wal: bool) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data_dir.iterdir()}
    expected = {"gallery.sqlite3", "api_keys.sqlite3", "gallery.lock"}
    if expect_wal:
        expected |= {"gallery.sqlite3-wal", "gallery.sqlite3-shm"}
    assert expected <= set(modes), modes
    assert all(path.is_file() for path in data_dir.iterdir())
    assert modes == dict.fromkeys(modes, 0o600), {name: oct(mode) for name, mode in modes.items()}


def test_check_repair_creates_private_files(tmp_path: Path, default_pack_dir: Path) -> None:
    """The salvage target and the moved-aside file are 0600 too (umask 000)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "gallery.sqlite3").write_bytes(b"not a database at all" * 100)
    os.chmod(data_dir / "gallery.sqlite3", 0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACE_")}
    env.update(FACE_DATA_DIR=str(data_dir))
    previous = os.umask(0)
    try:
        repair = subprocess.run(
            [sys.executable, "-m", "service.cli", "check", "--repair"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        os.umask(previous)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data_dir.iterdir()}
    assert any(name.startswith("gallery.sqlite3.corrupt-") for name in modes)
    assert modes == dict.fromkeys(modes, 0o600), {name: oct(mode) for name, mode in modes.items()}


def _sqlite_error_of(statement: str, setup: Callable[[sqlite3.Connection], None]) -> sqlite3.Error:
    conn = sqlite3.connect(":memory:")
    setup(conn)
    try:
        conn.execute(statement)
    except sqlite3.Error as error:
        return error
    finally:
        conn.close()
    raise AssertionError(f"{statement} did not fail")


def _tiny_database(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 2")


STORAGE_FULL = {
    "sqlite-full": _sqlite_error_of("INSERT INTO t VALUES (zeroblob(100000))", _tiny_database),
    **{f"oserror-{errno.errorcode[code]}": OSError(code, os.strerror(code)) for code in FULL_ERRNOS},
}
NOT_STORAGE_FULL = {
    "sqlite-no-table": _sqlite_error_of("SELECT * FROM missing", lambda conn: None),
    "sqlite-constraint": _sqlite_error_of(
        "INSERT INTO t VALUES (1)",
        lambda conn: conn.execute("CREATE TABLE t (x UNIQUE)").execute("INSERT INTO t VALUES (1)"),
    ),
    **{f"oserror-{errno.errorcode[code]}": OSError(code, os.strerror(code)) for code in OTHER_ERRNOS},
    "value-error": ValueError("database or disk is full"),
}


@pytest.mark.parametrize("name", sorted(STORAGE_FULL))
def test_storage_full_errors_are_recognised(name: str) -> None:
    assert is_storage_full(STORAGE_FULL[name])


@pytest.mark.parametrize("name", sorted(NOT_STORAGE_FULL))
def test_other_errors_are_not_storage_full(name: str) -> None:
    assert not is_storage_full(NOT_STORAGE_FULL[name])
