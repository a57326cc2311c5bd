"""The gallery composes from its protocols; the backend table picks PostgreSQL from the settings and
refuses names it does not hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.gallery.backends import UnknownBackendError, open_store, store_options
from service.gallery.faiss_index import FaissIndex
from service.gallery.gallery import Gallery
from service.gallery.index import IndexOptions
from service.gallery.postgres_feed import PostgresChangeFeed
from service.gallery.postgres_store import PostgresGalleryStore
from service.gallery.sqlite_store import SqliteGalleryStore
from service.gallery.store import NewFace, StoreOptions
from service.settings import SearchBackend, Settings
from tests.gallery.conftest import unit_vectors

DIM = 16


def test_gallery_composes_from_a_sqlite_store_and_a_faiss_index(tmp_path: Path) -> None:
    store = SqliteGalleryStore(tmp_path / "gallery.sqlite3")
    store.pin("pack-a", DIM)
    gallery = Gallery(store, FaissIndex(DIM, IndexOptions(use_gpu=False)))
    with gallery:
        vectors = unit_vectors(2, DIM, 3)
        subject = gallery.create_subject("ada")
        gallery.add_faces(subject.id, [NewFace(vectors[0], 0.9)])
        [[best]] = gallery.identify(vectors[0], top_k=1)
        assert best.subject_id == subject.id
        assert gallery.sizes().indexed_faces == 1


def test_unknown_backend_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackendError, match=r"'postgres'.*known backends: postgresql, sqlite"):
        open_store(tmp_path, StoreOptions(backend="postgres"))
    assert not (tmp_path / "gallery.sqlite3").exists()


def test_store_options_are_sqlite_without_a_database_url() -> None:
    assert store_options(Settings(database_url=None)) == StoreOptions()


def test_store_options_pick_postgresql_from_the_database_url() -> None:
    settings = Settings(
        database_url="postgresql://face:pw@db:5432/gallery",
        db_pool_min_size=2,
        db_pool_max_size=5,
        db_timeout_s=1.5,
    )
    assert store_options(settings) == StoreOptions(
        backend="postgresql",
        database_url="postgresql://face:pw@db:5432/gallery",
        pool_min_size=2,
        pool_max_size=5,
        timeout_s=1.5,
        vector_index=False,
    )
    searching_in_postgres = Settings(database_url="postgresql://db/gallery", search=SearchBackend.PGVECTOR)
    assert store_options(searching_in_postgres).vector_index


def test_open_store_opens_the_postgresql_backend_the_settings_name(pg_url: str, tmp_path: Path) -> None:
    opened = open_store(tmp_path, store_options(Settings(database_url=pg_url)))
    try:
        assert isinstance(opened.store, PostgresGalleryStore)
        assert isinstance(opened.feed, PostgresChangeFeed)  # replicas follow the shared gallery's changes
        assert opened.lock is None
        opened.store.pin("pack-a", DIM)
        assert opened.store.create_subject("ada").name == "ada"
    finally:
        opened.close()
    assert not (tmp_path / "gallery.sqlite3").exists()  # nothing in the data dir
