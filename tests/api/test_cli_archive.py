"""``face-service export`` and ``face-service import``: a gallery file moved to another data dir, verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.gallery.gallery import Gallery
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore
from service.gallery.store import NewFace, StoredCrop
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings
from tests.api.conftest import JOHNS


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, default_pack_dir: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_DEVICE", "cpu")
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")
    monkeypatch.delenv("FACE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FACE_API_KEY", raising=False)
    return monkeypatch


def _enroll(data_dir: Path, pack_dir: Path, shared_faces: Path) -> None:
    pipeline = FacePipeline.from_pack(load_pack(pack_dir), Settings(device="cpu", intra_op_threads=1))
    settings = Settings(faiss_gpu=False)
    with Gallery.open(data_dir, pipeline.pack_id, pipeline.embedding_size, settings) as gallery:
        for name in JOHNS[:2]:
            subject = gallery.create_subject(name, {"team": "johns"})
            for path in sorted((shared_faces / "dlib_johns" / name).glob("*.jpg"))[:2]:
                image = np.asarray(Image.open(path).convert("RGB"))
                (embedded,) = pipeline.analyze_sync(image)
                crop = StoredCrop(*pipeline.storage_crop(image, embedded.face))
                gallery.add_faces(subject.id, [NewFace.from_embedded(embedded, crop)])


def _counts(data_dir: Path) -> tuple[int, int]:
    store = SqliteGalleryStore(data_dir / GALLERY_FILE)
    try:
        counts = store.counts()
    finally:
        store.close()
    return counts.subjects, counts.faces


def test_export_then_import_into_another_data_dir(
    env: pytest.MonkeyPatch,
    tmp_path: Path,
    default_pack_dir: Path,
    shared_faces: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, target, archive = tmp_path / "source", tmp_path / "target", tmp_path / "out" / "gallery.tar"
    archive.parent.mkdir()
    env.setenv("FACE_DATA_DIR", str(source))
    assert main(["export", "--out", str(archive)]) == 1
    assert "no gallery" in capsys.readouterr().err
    assert not archive.exists()

    _enroll(source, default_pack_dir, shared_faces)
    assert main(["export", "--out", str(archive)]) == 0
    assert "exported 2 subjects, 4 faces (4 crops)" in capsys.readouterr().out
    assert list(archive.parent.iterdir()) == [archive]  # no partial file left beside it

    env.setenv("FACE_DATA_DIR", str(target))
    assert main(["import", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "imported 2 subjects, 4 faces" in out
    assert "embeddings as they are" in out
    assert _counts(target) == (2, 4)

    assert main(["import", str(archive)]) == 1  # the ids are taken now
    err = capsys.readouterr().err
    assert "import failed, gallery unchanged" in err
    assert "--on-conflict" in err
    assert main(["import", str(archive), "--on-conflict", "new-ids"]) == 0
    out = capsys.readouterr().out
    assert "2 subjects got new ids; 4 faces got new ids" in out
    assert _counts(target) == (4, 8)

    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(archive.read_bytes()[:-20000])
    assert main(["import", str(damaged), "--on-conflict", "new-ids"]) == 1
    assert "truncated" in capsys.readouterr().err
    assert _counts(target) == (4, 8)


def test_import_and_export_into_a_collection(
    env: pytest.MonkeyPatch,
    tmp_path: Path,
    default_pack_dir: Path,
    shared_faces: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, archive = tmp_path / "data", tmp_path / "gallery.tar"
    env.setenv("FACE_DATA_DIR", str(data_dir))
    _enroll(data_dir, default_pack_dir, shared_faces)
    assert main(["export", "--out", str(archive)]) == 0
    capsys.readouterr()

    assert main(["import", str(archive), "--collection", "kiosk"]) == 1  # not declared
    assert "not declared in FACE_COLLECTIONS" in capsys.readouterr().err
    env.setenv("FACE_COLLECTIONS", f'{{"kiosk": "{default_pack_dir.name}"}}')
    assert main(["import", str(archive), "--collection", "kiosk"]) == 0
    assert "imported 2 subjects, 4 faces" in capsys.readouterr().out
    # The collection's own gallery (where the service keeps it) got them; the default one is as it was.
    assert _counts(data_dir / "collections" / "kiosk") == (2, 4)
    assert _counts(data_dir) == (2, 4)
    again = tmp_path / "kiosk.tar"
    assert main(["export", "--out", str(again), "--collection", "kiosk"]) == 0
    assert "exported 2 subjects, 4 faces" in capsys.readouterr().out
    assert main(["check", "--collection", "kiosk"]) == 0
