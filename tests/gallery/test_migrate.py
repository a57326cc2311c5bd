"""``face-service migrate``: a SQLite gallery and its API keys copied into a real PostgreSQL, verified."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from service.auth.keys import Scope, SqliteKeyStore
from service.auth.postgres_keys import PostgresKeyStore
from service.cli import main
from service.gallery.gallery import Gallery
from service.gallery.migrate import (
    MigrationError,
    compare,
    fingerprint,
    hide_password,
    migrate_to_postgres,
)
from service.gallery.postgres_store import open_postgres_store
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore, open_sqlite_store
from service.gallery.store import NewFace, StoredCrop, StoreOptions
from service.postgres.pool import PoolOptions
from service.settings import Settings
from tests.gallery.conftest import unit_vectors

PACK = "test-pack-migrate"
DIM = 24
SETTINGS = Settings(faiss_gpu=False)


@dataclass(frozen=True)
class Source:
    """A data dir holding a small gallery and keys, and what a test needs to check the copy."""

    data_dir: Path
    queries: np.ndarray  # one embedding close to each kept subject's faces
    active_key: str
    revoked_key: str
    max_index_id: int


def _crop(seed: int) -> StoredCrop:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8)
    landmarks = rng.uniform(4, 28, size=(5, 2)).astype(np.float32)
    return StoredCrop(image, landmarks)


@pytest.fixture
def source(tmp_path: Path) -> Source:
    """Four subjects (one deleted later), faces with and without crops, a deleted face, two keys."""
    data_dir = tmp_path / "data"
    centres = unit_vectors(4, DIM, seed=1)
    noise = np.random.default_rng(2)
    with Gallery.open(data_dir, PACK, DIM, SETTINGS) as gallery:
        subjects = [
            gallery.create_subject("Ada", {"team": "blue", "level": 3, "tags": ["a", "b"]}),
            gallery.create_subject("Grace", {"nested": {"x": 0.25, "y": None}}),
            gallery.create_subject("Zoë ünïcode", {}),
            gallery.create_subject("Temporary", {"drop": True}),
        ]
        for number, (subject, centre) in enumerate(zip(subjects, centres, strict=True)):
            faces = []
            for i in range(3):
                vector = centre + 0.2 * noise.standard_normal(DIM).astype(np.float32)
                vector /= np.linalg.norm(vector)
                faces.append(
                    NewFace(
                        vector.astype(np.float32),
                        det_score=0.9 - 0.01 * i,
                        quality={"sharpness": 0.5 + i / 10, "pose": float(number)},
                        crop=_crop(10 * number + i) if i != 2 else None,  # every third face without a crop
                    )
                )
            records = gallery.add_faces(subject.id, faces)
        first_face = gallery.list_faces(subjects[0].id)[0]
        gallery.delete_face(first_face.id)  # a gap in the index ids
        gallery.delete_subject(subjects[3].id)  # and a subject gone with its faces (the highest ids)
        max_index_id = max(record.index_id for record in records)
    keys = SqliteKeyStore.in_data_dir(data_dir)
    keys.ensure_schema()
    active = keys.create(
        frozenset({Scope.READ, Scope.ENROLL}), name="kiosk", collections=frozenset({"kiosk"})
    )
    revoked = keys.create(frozenset({Scope.ADMIN}), name="old admin")
    keys.revoke(revoked.record.id)
    return Source(data_dir, centres[:3], active.key, revoked.key, max_index_id)


def _file_hashes(data_dir: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.iterdir())
        if path.suffix == ".sqlite3"
    }


def _with_password(url: str, password: str) -> str:
    """The fixture's URL (``postgresql://postgres:@/db?host=...``, trust auth) with a password in it."""
    assert url.startswith("postgresql://postgres:@")
    return url.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)


def _gallery_view(gallery: Gallery) -> list[tuple[object, ...]]:
    """Everything a client sees of a gallery, crops included, in listing order."""
    view: list[tuple[object, ...]] = []
    for subject in gallery.list_subjects(limit=100).items:
        view.append((subject.id, subject.name, subject.metadata, subject.created_at, subject.updated_at))
        for face in gallery.list_faces(subject.id):
            crop = gallery.get_crop(face.id)
            pixels = None if crop is None else (crop.image.tobytes(), crop.landmarks.tobytes())
            view.append(
                (
                    face.id,
                    face.index_id,
                    face.subject_id,
                    face.det_score,
                    face.quality,
                    face.created_at,
                    pixels,
                )
            )
    return view


def test_migrate_copies_the_gallery_and_keys_and_verifies(
    source: Source, pg_url: str, tmp_path: Path
) -> None:
    before = _file_hashes(source.data_dir)
    progress: list[tuple[int, int]] = []
    report = migrate_to_postgres(
        source.data_dir, pg_url, batch_size=2, progress=lambda done, total: progress.append((done, total))
    )

    assert report.ok, report.differences
    assert (report.source_gallery.subjects, report.source_gallery.faces, report.source_gallery.crops) == (
        3,
        8,
        5,
    )
    assert (report.target_gallery.subjects, report.target_gallery.faces, report.target_gallery.crops) == (
        3,
        8,
        5,
    )
    assert report.target_gallery.embeddings_sha256() == report.source_gallery.embeddings_sha256()
    assert report.target_gallery.crops_sha256() == report.source_gallery.crops_sha256()
    assert (report.source_keys, report.target_keys) == (2, 2)
    assert progress[-1] == (8, 8)
    assert len(progress) >= 4  # batches of 2: several transactions
    assert _file_hashes(source.data_dir) == before  # the source is only read

    with Gallery.open(source.data_dir, PACK, DIM, SETTINGS) as sqlite_gallery:
        expected_view = _gallery_view(sqlite_gallery)
        expected_hits = sqlite_gallery.identify(source.queries, top_k=3)
    with Gallery.open(
        tmp_path / "replica", PACK, DIM, Settings(faiss_gpu=False, database_url=pg_url)
    ) as copy:
        assert (copy.counts().subjects, copy.counts().faces) == (3, 8)
        assert _gallery_view(copy) == expected_view
        hits = copy.identify(source.queries, top_k=3)
        assert [[(c.subject_id, c.name, c.face_id) for c in row] for row in hits] == [
            [(c.subject_id, c.name, c.face_id) for c in row] for row in expected_hits
        ]
        for row, expected_row in zip(hits, expected_hits, strict=True):
            np.testing.assert_allclose(
                [c.similarity for c in row], [c.similarity for c in expected_row], atol=1e-6
            )
        # Enrolling after the migration never reuses an index id of the source (deleted ones included).
        subject = copy.list_subjects().items[0]
        (added,) = copy.add_faces(subject.id, [NewFace(source.queries[0], det_score=0.8)])
        assert added.index_id > source.max_index_id

    keys = PostgresKeyStore.open(pg_url, PoolOptions(1, 1, 5.0))
    try:
        record = keys.authenticate(source.active_key)  # a key made before the migration works after it
        assert record is not None
        assert (record.name, record.scopes) == ("kiosk", frozenset({Scope.READ, Scope.ENROLL}))
        assert record.collections == {"kiosk"}  # a key limited to collections stays limited
        assert keys.authenticate(source.revoked_key) is None  # and a revoked one stays revoked
        assert [key.id for key in keys.list(include_revoked=False)] == [record.id]
        assert {key.id: key for key in keys.list()} == {
            key.id: key for key in SqliteKeyStore.in_data_dir(source.data_dir).list()
        }
    finally:
        keys.close()


def test_the_cli_migrates_prints_a_summary_and_never_the_password(
    source: Source, pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACE_DATABASE_URL", raising=False)
    password = "Sekr3t-pw-4711"
    url = _with_password(pg_url, password)

    assert main(["migrate", "--to", url, "--data-dir", str(source.data_dir), "--batch-size", "3"]) == 0
    out, err = capsys.readouterr()
    assert "verified" in out
    assert "postgres:***@" in out
    assert any(line.split()[:2] == ["faces", "8"] for line in out.splitlines())
    assert "copied 8/8 faces" in err
    assert password not in out + err

    # Run again: the target is no longer empty, refused with what to do, still without the password.
    assert main(["migrate", "--to", url, "--data-dir", str(source.data_dir)]) == 1
    out, err = capsys.readouterr()
    assert "already holds a gallery (3 subjects, 8 faces" in err
    assert "empty database" in err
    assert password not in out + err


def test_the_cli_takes_the_target_from_face_database_url(
    source: Source, pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACE_DATABASE_URL", pg_url)
    monkeypatch.setenv("FACE_DATA_DIR", str(source.data_dir))
    assert main(["migrate"]) == 0
    assert "verified" in capsys.readouterr().out


def test_an_unreachable_target_fails_without_the_password(
    source: Source, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACE_DATABASE_URL", raising=False)
    password = "Unreachable-pw-0815"
    url = f"postgresql://someone:{password}@127.0.0.1:1/gallery?connect_timeout=1"
    assert main(["migrate", "--to", url, "--data-dir", str(source.data_dir)]) == 1
    out, err = capsys.readouterr()
    assert "migrate failed" in err
    assert "nothing was copied" in err
    assert password not in out + err


def test_a_target_with_a_gallery_is_refused_and_left_alone(source: Source, pg_url: str) -> None:
    opened = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    try:
        opened.store.pin(PACK, DIM)
        live = opened.store.create_subject("someone already here")
    finally:
        opened.close()

    with pytest.raises(
        MigrationError, match=r"already holds a gallery \(1 subjects, 0 faces.*empty database"
    ):
        migrate_to_postgres(source.data_dir, pg_url)

    opened = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    try:
        assert [s.id for s in opened.store.list_subjects().items] == [live.id]
    finally:
        opened.close()


def test_a_target_pinned_to_another_pack_is_refused(source: Source, pg_url: str) -> None:
    opened = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    try:
        opened.store.pin("another-pack", DIM)
    finally:
        opened.close()
    with pytest.raises(MigrationError, match=r"pinned to pack 'another-pack'.*empty database"):
        migrate_to_postgres(source.data_dir, pg_url)


def test_a_target_pinned_to_the_same_pack_and_empty_is_accepted(source: Source, pg_url: str) -> None:
    """A service started on the database and stopped before any enrollment pinned it: that is fine."""
    opened = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    try:
        opened.store.pin(PACK, DIM)
    finally:
        opened.close()
    assert migrate_to_postgres(source.data_dir, pg_url).ok


def test_a_target_holding_api_keys_is_refused(source: Source, pg_url: str) -> None:
    keys = PostgresKeyStore.open(pg_url, PoolOptions(1, 1, 5.0))
    try:
        keys.create(frozenset({Scope.ADMIN}), name="bootstrap admin")
    finally:
        keys.close()
    with pytest.raises(MigrationError, match=r"already holds 1 API keys.*empty database"):
        migrate_to_postgres(source.data_dir, pg_url)
    opened = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    try:
        assert opened.store.counts().faces == 0  # refused before anything was copied
    finally:
        opened.close()


def test_a_running_service_blocks_the_migration(source: Source, pg_url: str) -> None:
    with (
        Gallery.open(source.data_dir, PACK, DIM, SETTINGS),
        pytest.raises(MigrationError, match="stop the service"),
    ):
        migrate_to_postgres(source.data_dir, pg_url)


def test_a_data_dir_without_a_gallery_is_refused(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(MigrationError, match="no gallery at"):
        migrate_to_postgres(tmp_path, pg_url)
    assert not (tmp_path / GALLERY_FILE).exists()  # nothing was created


def test_a_data_dir_without_keys_migrates_the_gallery(source: Source, pg_url: str) -> None:
    (source.data_dir / "api_keys.sqlite3").unlink()
    report = migrate_to_postgres(source.data_dir, pg_url)
    assert report.ok
    assert (report.source_keys, report.target_keys, report.target_gallery.faces) == (0, 0, 8)


def test_verification_names_what_differs(source: Source, pg_url: str) -> None:
    """A copy changed behind the migration's back: the fingerprints say which faces and what."""
    assert migrate_to_postgres(source.data_dir, pg_url).ok
    with psycopg.connect(pg_url) as conn:
        register_vector(conn)
        ids = [int(row[0]) for row in conn.execute("SELECT index_id FROM faces ORDER BY index_id")]
        conn.execute(
            "UPDATE faces SET embedding = %s WHERE index_id = %s", (np.ones(DIM, np.float32), ids[0])
        )
        conn.execute("UPDATE faces SET det_score = 0.1 WHERE index_id = %s", (ids[1],))
        cropped = [int(row[0]) for row in conn.execute("SELECT index_id FROM face_crops ORDER BY index_id")]
        conn.execute("DELETE FROM face_crops WHERE index_id = %s", (cropped[-1],))
        conn.execute("DELETE FROM faces WHERE index_id = %s", (ids[-2],))
        conn.execute("UPDATE subjects SET name = 'Renamed' WHERE name = 'Grace'")

    source_store = open_sqlite_store(source.data_dir, StoreOptions(), must_exist=True)
    target_store = open_postgres_store(
        Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url)
    )
    try:
        source_print = fingerprint(source_store.store)
        target_print = fingerprint(target_store.store)
    finally:
        source_store.close()
        target_store.close()
    differences = "\n".join(compare(source_print, target_print))
    assert "faces: 8 in the source, 7 in the target" in differences
    assert f"1 faces missing from the target: #{ids[-2]}" in differences
    assert f"with a different embedding: #{ids[0]}" in differences
    assert f"with a different id, pack, score, quality, time or crop flag: #{ids[1]}" in differences
    assert f"crops missing from the target: #{cropped[-1]}" in differences
    assert "subjects with a different name" in differences
    assert source_print.embeddings_sha256() != target_print.embeddings_sha256()
    assert compare(source_print, source_print) == []


def test_the_source_s_last_index_id_counts_deleted_faces(source: Source, tmp_path: Path) -> None:
    opened = open_sqlite_store(source.data_dir, StoreOptions(), must_exist=True)
    try:
        store = opened.store
        assert isinstance(store, SqliteGalleryStore)
        present, _ = store.all_embeddings()
        assert int(present.max()) < source.max_index_id  # the highest ids went with a deleted subject
        assert store.last_index_id() == source.max_index_id
    finally:
        opened.close()
    (tmp_path / "empty").mkdir()
    empty = open_sqlite_store(tmp_path / "empty", StoreOptions())
    try:
        assert isinstance(empty.store, SqliteGalleryStore)
        assert empty.store.last_index_id() == 0  # no face ever added
    finally:
        empty.close()


def test_hide_password_covers_every_spelling() -> None:
    url = "postgresql://user:pa55word@db.example:5432/gallery"
    assert hide_password(f"cannot reach {url}: password pa55word refused", url) == (
        "cannot reach postgresql://user:***@db.example:5432/gallery: password *** refused"
    )
    keyword = "postgresql://db.example/gallery?user=u&password=pa55word"
    assert "pa55word" not in hide_password(f"at {keyword}", keyword)


def test_a_copy_that_fails_part_way_says_how_to_proceed(source: Source, pg_url: str) -> None:
    """PostgreSQL text cannot hold NUL, SQLite's can: a subject so named stops the copy after some batches."""
    with Gallery.open(source.data_dir, PACK, DIM, SETTINGS) as gallery:
        gallery.create_subject("nul\x00in the name")  # listed last: the first batches are already written
    with pytest.raises(MigrationError, match=r"holds part of a copy: migrate only into an empty database"):
        migrate_to_postgres(source.data_dir, pg_url, batch_size=1)
    with pytest.raises(MigrationError, match=r"already holds a gallery \(\d+ subjects.*stopped part way"):
        migrate_to_postgres(source.data_dir, pg_url)
