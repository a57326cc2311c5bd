"""Re-embedding a gallery with another pack: correct embeddings, pin switch, all or nothing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.gallery.backends import store_options
from service.gallery.data_dir_lock import GalleryLockedError
from service.gallery.gallery import Gallery
from service.gallery.reembed import reembed_gallery
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore
from service.gallery.store import GalleryError, NewFace, PackMismatchError, PackPin, StoredCrop
from service.packs.files import write_manifest
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings

SETTINGS = Settings(faiss_gpu=False)


@pytest.fixture(scope="module")
def other_pipeline(default_pack_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FacePipeline:
    """Another pack: same networks, a different id, flip augmentation on, and a looser template.

    The looser template (landmarks pulled 8% towards the chip centre) needs context beyond the
    default chip: it is what the stored crop's margin is for.
    """
    base = load_pack(default_pack_dir)
    folder = tmp_path_factory.mktemp("other-pack")
    for name in base.manifest.files:
        shutil.copy(default_pack_dir / name, folder / name)
    template = np.asarray(base.manifest.embedder.template)
    centre = np.asarray(base.manifest.embedder.input_size) / 2
    looser = tuple(tuple(float(v) for v in point) for point in centre + (template - centre) * 0.92)
    embedder = base.manifest.embedder.model_copy(update={"flip_augmentation": True, "template": looser})
    write_manifest(folder, base.manifest.model_copy(update={"id": "other-pack-flip", "embedder": embedder}))
    return FacePipeline.from_pack(load_pack(folder), Settings(device="cpu", intra_op_threads=2))


def _enroll_johns(
    data_dir: Path, pipeline: FacePipeline, johns: dict[str, list[np.ndarray]]
) -> dict[str, str]:
    """Two photos per person, with crops; returns face id -> photo key "name/i"."""
    photo_of_face: dict[str, str] = {}
    with Gallery.open(data_dir, pipeline.pack_id, pipeline.embedding_size, SETTINGS) as gallery:
        for name, images in johns.items():
            subject = gallery.create_subject(name)
            for i, image in enumerate(images[:2]):
                (embedded,) = pipeline.analyze_sync(image)
                crop = StoredCrop(*pipeline.storage_crop(image, embedded.face))
                (record,) = gallery.add_faces(subject.id, [NewFace.from_embedded(embedded, crop)])
                photo_of_face[record.id] = f"{name}/{i}"
    return photo_of_face


def _stored_embeddings(data_dir: Path) -> dict[int, np.ndarray]:
    store = SqliteGalleryStore(data_dir / GALLERY_FILE)
    ids, matrix = store.all_embeddings()
    store.close()
    return dict(zip(ids.tolist(), matrix, strict=True))


def test_reembed_switches_the_pack_with_the_new_packs_embeddings(
    tmp_path: Path,
    default_pipeline: FacePipeline,
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    photo_of_face = _enroll_johns(tmp_path, default_pipeline, johns)
    progress: list[tuple[int, int]] = []
    report = reembed_gallery(
        tmp_path, other_pipeline, batch_size=4, progress=lambda d, t: progress.append((d, t))
    )
    assert (report.old_pack_id, report.new_pack_id) == (default_pipeline.pack_id, other_pipeline.pack_id)
    assert report.reembedded == len(photo_of_face)
    assert report.dropped == 0
    assert progress[-1] == (len(photo_of_face), len(photo_of_face))

    with pytest.raises(PackMismatchError):
        Gallery.open(tmp_path, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS)
    with Gallery.open(tmp_path, other_pipeline.pack_id, other_pipeline.embedding_size, SETTINGS) as gallery:
        for face_id, photo in photo_of_face.items():
            name, i = photo.split("/")
            record = gallery.get_face(face_id)
            assert record.pack_id == other_pipeline.pack_id
            # What the new pack computes from the ORIGINAL photo, vs. from the stored crop.
            fresh = other_pipeline.analyze_sync(johns[name][int(i)])[0].embedding
            stored = gallery._store.subject_embeddings(record.subject_id)
            # Re-aligning from the stored crop resamples the face twice: SFace measures 0.989+ here.
            assert float(np.max(stored @ fresh)) > 0.98, photo
        # And identification works in the new pack's space.
        probes = [(name, images[5]) for name, images in johns.items()]
        queries = np.stack([other_pipeline.analyze_sync(image)[0].embedding for _, image in probes])
        for (name, _), candidates in zip(probes, gallery.identify(queries, top_k=1), strict=True):
            assert candidates[0].name == name


class FailingEmbedder:
    """The new pack, failing on its second batch (a crash or OOM half-way through)."""

    def __init__(self, pipeline: FacePipeline) -> None:
        self._pipeline = pipeline
        self.pack_id, self.embedding_size = pipeline.pack_id, pipeline.embedding_size
        self.chip_size, self.template = pipeline.chip_size, pipeline.template
        self.calls = 0

    def embed_chips_sync(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("out of memory")
        return self._pipeline.embed_chips_sync(chips)


def test_a_failed_reembed_changes_nothing(
    tmp_path: Path,
    default_pipeline: FacePipeline,
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    _enroll_johns(tmp_path, default_pipeline, {name: johns[name] for name in list(johns)[:3]})
    before = _stored_embeddings(tmp_path)
    failing = FailingEmbedder(other_pipeline)
    with pytest.raises(RuntimeError, match="out of memory"):
        reembed_gallery(tmp_path, failing, batch_size=2)
    assert failing.calls == 2  # the first batch was written inside the transaction, then rolled back
    after = _stored_embeddings(tmp_path)
    assert after.keys() == before.keys()
    for index_id, embedding in before.items():
        np.testing.assert_array_equal(after[index_id], embedding)
    Gallery.open(tmp_path, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS).close()


def test_faces_without_crops_block_the_switch_unless_dropped(
    tmp_path: Path,
    default_pipeline: FacePipeline,
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    name = next(iter(johns))
    with Gallery.open(
        tmp_path, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS
    ) as gallery:
        subject = gallery.create_subject(name)
        faces = [default_pipeline.analyze_sync(image)[0] for image in johns[name][:2]]
        crop = StoredCrop(*default_pipeline.storage_crop(johns[name][0], faces[0].face))
        gallery.add_faces(
            subject.id, [NewFace.from_embedded(faces[0], crop), NewFace.from_embedded(faces[1])]
        )
        with pytest.raises(GalleryLockedError):  # never while the gallery is open elsewhere
            reembed_gallery(tmp_path, other_pipeline)

    with pytest.raises(GalleryError, match="1 faces were enrolled without a stored crop"):
        reembed_gallery(tmp_path, other_pipeline)
    store = SqliteGalleryStore(tmp_path / GALLERY_FILE)
    assert store.pinned_pack() == PackPin(default_pipeline.pack_id, default_pipeline.embedding_size)
    store.close()

    report = reembed_gallery(tmp_path, other_pipeline, drop_faces_without_crop=True)
    assert (report.reembedded, report.dropped) == (1, 1)
    with Gallery.open(tmp_path, other_pipeline.pack_id, other_pipeline.embedding_size, SETTINGS) as gallery:
        assert gallery.counts().faces == 1
        assert gallery.index_size == 1


@pytest.mark.parametrize("former", ["dlib", "fp32"])
def test_reembed_migrates_a_gallery_of_a_former_default_to_the_default(
    tmp_path: Path,
    former: str,
    request: pytest.FixtureRequest,
    default_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    """The upgrade paths of the README: galleries pinned to the former default packs (dlib, then fp32)."""
    former_dir: Path = request.getfixturevalue(f"{former}_pack_dir")
    old = FacePipeline.from_pack(load_pack(former_dir), Settings(device="cpu", intra_op_threads=2))
    assert old.pack_id != default_pipeline.pack_id
    photo_of_face = _enroll_johns(tmp_path, old, johns)
    with pytest.raises(PackMismatchError, match=f"FACE_PACK={former}"):
        Gallery.open(tmp_path, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS)

    report = reembed_gallery(tmp_path, default_pipeline, batch_size=4)
    assert (report.old_pack_id, report.new_pack_id) == (old.pack_id, default_pipeline.pack_id)
    assert report.reembedded == len(photo_of_face)
    with Gallery.open(
        tmp_path, default_pipeline.pack_id, default_pipeline.embedding_size, SETTINGS
    ) as gallery:
        probes = [(name, images[5]) for name, images in johns.items()]
        queries = np.stack([default_pipeline.analyze_sync(image)[0].embedding for _, image in probes])
        for (name, _), candidates in zip(probes, gallery.identify(queries, top_k=1), strict=True):
            assert candidates[0].name == name


def test_reembed_of_a_shared_gallery_stops_replicas_still_on_the_old_pack(
    tmp_path: Path,
    default_pipeline: FacePipeline,
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
    pg_url: str,
) -> None:
    """PostgreSQL: re-embedding while a replica runs the old pack; the replica must refuse, not mix."""
    shared = Settings(faiss_gpu=False, database_url=pg_url, feed_poll_interval_s=0.2)
    few = {name: johns[name] for name in list(johns)[:2]}
    old = Gallery.open(tmp_path / "a", default_pipeline.pack_id, default_pipeline.embedding_size, shared)
    try:
        subjects = {}
        for name, images in few.items():
            (embedded,) = default_pipeline.analyze_sync(images[0])
            crop = StoredCrop(*default_pipeline.storage_crop(images[0], embedded.face))
            subjects[name] = old.create_subject(name).id
            old.add_faces(subjects[name], [NewFace.from_embedded(embedded, crop)])

        report = reembed_gallery(
            tmp_path / "offline", other_pipeline, options=store_options(shared), batch_size=1
        )
        assert report.reembedded == len(few)

        probe = default_pipeline.analyze_sync(few[next(iter(few))][5])[0].embedding
        deadline = time.monotonic() + 10
        while old.catch_up() < old.change_seq():  # the follower reads the re-embedding from the feed
            assert time.monotonic() < deadline, "the old replica did not follow the feed"
            time.sleep(0.1)
        with pytest.raises(PackMismatchError) as refused:
            old.identify(probe, top_k=1)
        assert refused.value.gallery_pack == other_pipeline.pack_id
    finally:
        old.close()

    with Gallery.open(tmp_path / "b", other_pipeline.pack_id, other_pipeline.embedding_size, shared) as new:
        for name, images in few.items():
            query = other_pipeline.analyze_sync(images[5])[0].embedding
            assert new.identify(query, top_k=1)[0][0].subject_id == subjects[name]
