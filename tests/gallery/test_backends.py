"""The gallery composes from its protocols; the backend table refuses names it does not hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.gallery.backends import UnknownBackendError, open_store
from service.gallery.faiss_index import FaissIndex
from service.gallery.gallery import Gallery
from service.gallery.index import IndexOptions
from service.gallery.sqlite_store import SqliteGalleryStore
from service.gallery.store import NewFace, StoreOptions
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
    with pytest.raises(UnknownBackendError, match=r"'postgres'.*known backends: sqlite"):
        open_store(tmp_path, StoreOptions(backend="postgres"))
    assert not (tmp_path / "gallery.sqlite3").exists()
