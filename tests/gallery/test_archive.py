"""Gallery archives: export, verified import across backends and packs, refusals that change nothing."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery.archive import ArchiveError, ArchiveVersionError, open_archive
from service.gallery.gallery import Gallery
from service.gallery.store import ImportClashError, NewFace, PackPin, PortableFace, StoredCrop, Subject
from service.packs.files import write_manifest
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings
from service.usecases.errors import FacesWithoutCropError, ImportConflictError
from service.usecases.gallery_archive import (
    ImportOptions,
    OnConflict,
    export_archive_sync,
    import_archive_sync,
)

PEOPLE = 4
PHOTOS = 2
PROBE = 6  # the photo of each person used as a probe (never enrolled)


def _settings(url: str | None = None) -> Settings:
    return Settings(faiss_gpu=False, database_url=url, feed_poll_interval_s=0.2)


def _open(data_dir: Path, pipeline: FacePipeline, url: str | None = None) -> Gallery:
    return Gallery.open(data_dir, pipeline.pack_id, pipeline.embedding_size, _settings(url))


def _enroll(
    gallery: Gallery, pipeline: FacePipeline, johns: dict[str, list[np.ndarray]], *, crops: bool = True
) -> None:
    for number, (name, images) in enumerate(list(johns.items())[:PEOPLE]):
        subject = gallery.create_subject(name, {"employee": f"E-{number}", "tags": ["a", "b"]})
        for image in images[:PHOTOS]:
            (embedded,) = pipeline.analyze_sync(image)
            crop = StoredCrop(*pipeline.storage_crop(image, embedded.face)) if crops else None
            gallery.add_faces(subject.id, [NewFace.from_embedded(embedded, crop)])


def _export(gallery: Gallery, path: Path) -> Path:
    with path.open("wb") as handle:
        export_archive_sync(gallery, PackPin(gallery.pack_id, gallery.embedding_size), handle)
    return path


def _probes(pipeline: FacePipeline, johns: dict[str, list[np.ndarray]]) -> np.ndarray:
    images = [images[PROBE] for images in list(johns.values())[:PEOPLE]]
    return np.stack([pipeline.analyze_sync(image)[0].embedding for image in images])


def _answers(gallery: Gallery, probes: np.ndarray) -> list[tuple[str, str, float]]:
    return [(c[0].subject_id, c[0].face_id, c[0].similarity) for c in gallery.identify(probes, top_k=1)]


def _snapshot(gallery: Gallery) -> dict[str, Any]:
    """Everything an archive carries, read back through the gallery."""
    subjects = gallery.list_subjects(limit=500).items
    faces = {}
    for subject in subjects:
        for record, embedding in zip(
            gallery.list_faces(subject.id), gallery.subject_embeddings(subject.id), strict=True
        ):
            crop = gallery.get_crop(record.id)
            faces[record.id] = (
                record.subject_id,
                record.det_score,
                record.quality,
                record.created_at,
                embedding.tobytes(),
                None if crop is None else (crop.image.tobytes(), crop.landmarks.tobytes()),
            )
    return {
        "subjects": {s.id: (s.name, s.metadata, s.created_at, s.updated_at, s.face_count) for s in subjects},
        "faces": faces,
    }


@pytest.fixture(scope="module")
def source(
    tmp_path_factory: pytest.TempPathFactory,
    default_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> Iterator[tuple[Path, dict[str, Any], list[tuple[str, str, float]]]]:
    """A SQLite gallery of real faces exported once: (archive, its content, identify answers)."""
    folder = tmp_path_factory.mktemp("archive-source")
    with _open(folder / "data", default_pipeline) as gallery:
        _enroll(gallery, default_pipeline, johns)
        archive = _export(gallery, folder / "gallery.tar")
        yield archive, _snapshot(gallery), _answers(gallery, _probes(default_pipeline, johns))


@pytest.fixture(scope="module")
def other_pipeline(default_pack_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FacePipeline:
    """Another pack (the default's networks, another id, flip augmentation): its embeddings differ."""
    base = load_pack(default_pack_dir)
    folder = tmp_path_factory.mktemp("other-pack")
    for name in base.manifest.files:
        shutil.copy(default_pack_dir / name, folder / name)
    embedder = base.manifest.embedder.model_copy(update={"flip_augmentation": True})
    write_manifest(
        folder, base.manifest.model_copy(update={"id": "archive-other-pack", "embedder": embedder})
    )
    return FacePipeline.from_pack(load_pack(folder), Settings(device="cpu", intra_op_threads=2))


# ---------------------------------------------------------------------- crafted archives


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers()}  # type: ignore[union-attr]


def _rebuilt(
    archive: Path,
    out: Path,
    replace: dict[str, bytes] | None = None,
    manifest_edit: Callable[[dict[str, Any]], None] | None = None,
    extra: tuple[tarfile.TarInfo, bytes] | None = None,
) -> Path:
    """The archive with members replaced and the manifest's checksums made to match (a consistent forgery)."""
    members = _members(archive) | (replace or {})
    manifest = json.loads(members.pop("manifest.json"))
    manifest["members"] = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in members.items()
    }
    if manifest_edit is not None:
        manifest_edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra[0], io.BytesIO(extra[1]))
    return out


# ---------------------------------------------------------------------- round trips


def test_the_archive_holds_the_gallery_with_checksums(source: tuple[Path, dict[str, Any], Any]) -> None:
    archive, content, _ = source
    with open_archive(archive) as opened:
        manifest = opened.manifest
        assert (manifest.format, manifest.format_version) == ("face-service-gallery", 1)
        assert (manifest.counts.subjects, manifest.counts.faces, manifest.counts.crops) == (
            PEOPLE,
            PEOPLE * PHOTOS,
            PEOPLE * PHOTOS,
        )
        assert {s.id for s in opened.subjects} == set(content["subjects"])
        assert [f.id for f in opened.faces] == list(content["faces"])
        assert opened.embeddings.shape == (PEOPLE * PHOTOS, manifest.pack.embedding_size)
        members = _members(archive)
        assert set(manifest.members) == set(members) - {"manifest.json"}
        for name, digest in manifest.members.items():
            assert hashlib.sha256(members[name]).hexdigest() == digest.sha256
        np.load(io.BytesIO(members["embeddings.npy"]), allow_pickle=False)  # no pickles needed


def test_import_into_either_backend_and_back_gives_the_same_gallery(
    tmp_path: Path,
    database_url: str | None,
    source: tuple[Path, dict[str, Any], list[tuple[str, str, float]]],
    default_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    """SQLite -> this backend (SQLite or PostgreSQL) -> an archive again -> a SQLite gallery."""
    archive, content, answers = source
    probes = _probes(default_pipeline, johns)
    with _open(tmp_path / "target", default_pipeline, database_url) as target:
        report = import_archive_sync(target, default_pipeline, archive, ImportOptions())
        assert (report.subjects, report.faces, report.reembedded) == (PEOPLE, PEOPLE * PHOTOS, 0)
        assert target.index_size == PEOPLE * PHOTOS  # searchable as soon as the import returns
        assert _snapshot(target) == content
        imported = _answers(target, probes)
        again = _export(target, tmp_path / "again.tar")
    for (subject, face, similarity), (subject_b, face_b, similarity_b) in zip(answers, imported, strict=True):
        assert (subject, face) == (subject_b, face_b)
        assert similarity_b == pytest.approx(similarity, abs=1e-6)
    with _open(tmp_path / "back", default_pipeline) as back:
        import_archive_sync(back, default_pipeline, again, ImportOptions())
        assert _snapshot(back) == content
        assert [a[:2] for a in _answers(back, probes)] == [a[:2] for a in answers]


def test_another_packs_archive_is_reembedded_from_its_crops(
    tmp_path: Path,
    source: tuple[Path, dict[str, Any], list[tuple[str, str, float]]],
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    archive, content, answers = source
    with _open(tmp_path, other_pipeline) as target:
        report = import_archive_sync(target, other_pipeline, archive, ImportOptions())
        assert report.source_pack.pack_id != report.pack.pack_id == other_pipeline.pack_id
        assert report.reembedded == report.faces == PEOPLE * PHOTOS
        for subject_id in content["subjects"]:
            assert {face.pack_id for face in target.list_faces(subject_id)} == {other_pipeline.pack_id}
        # The stored embeddings are the new pack's, not the archive's.
        with open_archive(archive) as opened:
            first = opened.faces[0]
            assert not np.allclose(target.subject_embeddings(first.subject_id)[0], opened.embeddings[0])
        imported = _answers(target, _probes(other_pipeline, johns))
    assert [a[0] for a in imported] == [a[0] for a in answers]  # the same people are found


def test_faces_without_a_crop_block_reembedding_unless_skipped(
    tmp_path: Path,
    default_pipeline: FacePipeline,
    other_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    with _open(tmp_path / "source", default_pipeline) as gallery:
        _enroll(gallery, default_pipeline, dict(list(johns.items())[:1]))
        subject = gallery.list_subjects().items[0]
        (embedded,) = default_pipeline.analyze_sync(johns[subject.name][3])
        gallery.add_faces(subject.id, [NewFace.from_embedded(embedded)])  # no crop
        archive = _export(gallery, tmp_path / "g.tar")
        # The same pack needs no crop: everything comes in.
        with _open(tmp_path / "same", default_pipeline) as same:
            assert import_archive_sync(same, default_pipeline, archive, ImportOptions()).faces == PHOTOS + 1
    with _open(tmp_path / "other", other_pipeline) as target:
        with pytest.raises(FacesWithoutCropError, match="1 faces of the archive have no crop"):
            import_archive_sync(target, other_pipeline, archive, ImportOptions())
        assert target.counts().subjects == 0
        report = import_archive_sync(
            target, other_pipeline, archive, ImportOptions(skip_faces_without_crop=True)
        )
        assert (report.faces, report.skipped_without_crop, report.reembedded) == (PHOTOS, 1, PHOTOS)
        assert target.counts().faces == target.index_size == PHOTOS


# ---------------------------------------------------------------------- ids already taken


def test_ids_the_gallery_holds_are_refused_skipped_or_renamed(
    tmp_path: Path,
    source: tuple[Path, dict[str, Any], list[tuple[str, str, float]]],
    default_pipeline: FacePipeline,
    johns: dict[str, list[np.ndarray]],
) -> None:
    archive, content, _ = source
    with _open(tmp_path, default_pipeline) as gallery:
        import_archive_sync(gallery, default_pipeline, archive, ImportOptions())
        seq = gallery.change_seq()
        with pytest.raises(ImportConflictError, match=f"{PEOPLE} subject ids") as refused:
            import_archive_sync(gallery, default_pipeline, archive, ImportOptions())
        assert set(refused.value.subject_ids) == set(content["subjects"])
        assert set(refused.value.face_ids) == set(content["faces"])
        assert gallery.change_seq() == seq  # nothing written

        skipped = import_archive_sync(gallery, default_pipeline, archive, ImportOptions(OnConflict.SKIP))
        assert (skipped.subjects, skipped.faces) == (0, 0)
        assert (skipped.skipped_subjects, skipped.skipped_faces) == (PEOPLE, PEOPLE * PHOTOS)
        assert gallery.counts().faces == PEOPLE * PHOTOS

        renamed = import_archive_sync(gallery, default_pipeline, archive, ImportOptions(OnConflict.NEW_IDS))
        assert (renamed.subjects, renamed.faces) == (PEOPLE, PEOPLE * PHOTOS)
        assert set(renamed.new_subject_ids) == set(content["subjects"])
        assert not set(renamed.new_subject_ids.values()) & set(content["subjects"])
        assert gallery.counts().faces == gallery.index_size == 2 * PEOPLE * PHOTOS
        for old, new in renamed.new_subject_ids.items():
            copy = gallery.get_subject(new)
            assert (copy.name, copy.metadata, copy.face_count) == (*content["subjects"][old][:2], PHOTOS)
        # Each probe now finds its person twice: the original and the copy, at the same similarity.
        probes = _probes(default_pipeline, johns)
        for original, candidates in zip(content["subjects"], gallery.identify(probes, top_k=2), strict=True):
            assert {c.subject_id for c in candidates} == {original, renamed.new_subject_ids[original]}
            assert candidates[0].similarity == pytest.approx(candidates[1].similarity, abs=1e-6)


def test_the_store_import_is_all_or_nothing(tmp_path: Path, database_url: str | None) -> None:
    """A failure half-way (here the faces' iterator raises) leaves no subject, face or index entry."""
    rng = np.random.default_rng(7)
    with Gallery.open(tmp_path, "pack-a", 8, _settings(database_url)) as gallery:
        kept = gallery.create_subject("already here")
        seq = gallery.change_seq()
        subjects = [
            Subject(f"s-{i}", f"n{i}", {"k": i}, "2025-01-01T00:00:00+00:00", "2025-01-02T00:00:00+00:00")
            for i in range(3)
        ]

        def faces(fail_after: int | None) -> Iterator[PortableFace]:
            for i in range(6):
                if fail_after is not None and i == fail_after:
                    raise ArchiveError("crops/f-4.png changed since the archive was verified")
                vector = rng.standard_normal(8).astype(np.float32)
                yield PortableFace(
                    f"f-{i}", f"s-{i % 3}", vector / np.linalg.norm(vector), 0.9, {}, "2025-01-01", None
                )

        with pytest.raises(ArchiveError, match="changed since"):
            gallery.import_faces(subjects, faces(fail_after=4))
        assert (gallery.counts().subjects, gallery.counts().faces, gallery.index_size) == (1, 0, 0)
        assert gallery.change_seq() == seq
        clash = [Subject(kept.id, "dup", {}, kept.created_at, kept.updated_at)]
        with pytest.raises(ImportClashError, match="nothing was changed"):
            gallery.import_faces([*subjects, *clash], faces(fail_after=None))
        assert (gallery.counts().subjects, gallery.counts().faces, gallery.change_seq()) == (1, 0, seq)
        records = gallery.import_faces(subjects, faces(fail_after=None))
        assert [r.id for r in records] == [f"f-{i}" for i in range(6)]
        assert gallery.get_subject("s-1").created_at == "2025-01-01T00:00:00+00:00"
        assert gallery.counts().faces == gallery.index_size == 6
        assert gallery.existing_ids(["s-0", "nope"], ["f-5", "f-9"]) == ({"s-0"}, {"f-5"})


# ---------------------------------------------------------------------- refusals


def _refused_without_writes(
    tmp_path: Path, pipeline: FacePipeline, archive: Path, error: type[Exception], match: str
) -> None:
    with _open(tmp_path / "target", pipeline) as gallery:
        gallery.create_subject("already here")
        before = (gallery.counts(), gallery.change_seq(), gallery.index_size)
        with pytest.raises(error, match=match):
            import_archive_sync(gallery, pipeline, archive, ImportOptions())
        assert (gallery.counts(), gallery.change_seq(), gallery.index_size) == before


def test_a_tampered_member_is_refused(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    archive = source[0]
    tampered = tmp_path / "tampered.tar"
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        crop = next(info for info in tar.getmembers() if info.name.startswith("crops/"))
    data[crop.offset_data + crop.size // 2] ^= 0x01  # one bit of one crop's pixels
    tampered.write_bytes(bytes(data))
    _refused_without_writes(
        tmp_path, default_pipeline, tampered, ArchiveError, f"{crop.name} does not match its SHA-256"
    )


@pytest.mark.parametrize("where", ["half way", "inside the manifest"])
def test_a_truncated_archive_is_refused(
    tmp_path: Path, where: str, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    data = source[0].read_bytes()
    with tarfile.open(source[0]) as tar:
        manifest = tar.getmember("manifest.json")  # the last member
    end = len(data) // 2 if where == "half way" else manifest.offset_data + manifest.size // 2
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:end])
    _refused_without_writes(tmp_path, default_pipeline, cut, ArchiveError, "truncated")


def test_a_gzipped_archive_reads_and_garbage_does_not(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    import gzip

    packed = tmp_path / "g.tar.gz"
    packed.write_bytes(gzip.compress(source[0].read_bytes()))
    with open_archive(packed) as opened:
        assert opened.manifest.counts.faces == PEOPLE * PHOTOS
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    _refused_without_writes(tmp_path, default_pipeline, garbage, ArchiveError, "not a gallery archive")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../escape.png", tarfile.REGTYPE),
        ("crops/../../etc/passwd", tarfile.REGTYPE),
        ("/abs.txt", tarfile.REGTYPE),
    ],
)
def test_member_names_outside_the_format_are_refused(
    tmp_path: Path, name: str, kind: bytes, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 3
    crafted = _rebuilt(source[0], tmp_path / "crafted.tar", extra=(info, b"abc"))
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveError, "unexpected member")


def test_a_link_in_place_of_a_crop_is_refused(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    members = _members(source[0])
    crop_name = next(name for name in members if name.startswith("crops/"))
    link = tarfile.TarInfo(crop_name)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    out = tmp_path / "link.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            if name == crop_name:
                tar.addfile(link)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _refused_without_writes(tmp_path, default_pipeline, out, ArchiveError, "not a regular file")


def test_an_unknown_format_version_is_refused(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    crafted = _rebuilt(source[0], tmp_path / "v2.tar", manifest_edit=lambda m: m.update(format_version=2))
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveVersionError, "format version 2")


def test_embeddings_of_another_size_under_the_same_pack_id_are_refused(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    members = _members(source[0])
    matrix = np.load(io.BytesIO(members["embeddings.npy"]))[:, :64]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    buffer = io.BytesIO()
    np.save(buffer, matrix)

    def smaller(manifest: dict[str, Any]) -> None:
        manifest["pack"]["embedding_size"] = 64

    crafted = _rebuilt(source[0], tmp_path / "d64.tar", {"embeddings.npy": buffer.getvalue()}, smaller)
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveError, "64-d embeddings")
    # And a manifest whose size disagrees with the array itself.
    liar = _rebuilt(source[0], tmp_path / "liar.tar", manifest_edit=smaller)
    _refused_without_writes(
        tmp_path / "2", default_pipeline, liar, ArchiveError, "the manifest needs float32"
    )


def test_inconsistent_records_are_refused(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    members = _members(source[0])
    lines = members["faces.jsonl"].decode().splitlines()
    face = json.loads(lines[0])
    face["subject_id"] = "no-such-subject"
    orphan = "\n".join([json.dumps(face), *lines[1:]]).encode() + b"\n"
    crafted = _rebuilt(source[0], tmp_path / "orphan.tar", {"faces.jsonl": orphan})
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveError, "is not in subjects.jsonl")
    pickled = _rebuilt(
        source[0],
        tmp_path / "pickle.tar",
        {"embeddings.npy": _npy_of_objects(len(lines))},
    )
    _refused_without_writes(tmp_path / "2", default_pipeline, pickled, ArchiveError, "embeddings.npy")


def _npy_of_objects(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": i} for i in range(rows)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("name", "Mallory\x1b[2J", r"control character U\+001B"),
        ("name", "x" * 257, "at most 256 characters"),
        ("metadata", {"blob": "x" * 20_000}, "larger than 16384 bytes"),
    ],
)
def test_subjects_the_api_would_refuse_are_refused(
    tmp_path: Path,
    source: tuple[Path, Any, Any],
    default_pipeline: FacePipeline,
    field: str,
    value: Any,
    why: str,
) -> None:
    # A consistent forgery (checksums match): only the name and metadata rules stop it.
    lines = _members(source[0])["subjects.jsonl"].decode().splitlines()
    subject = json.loads(lines[0]) | {field: value}
    forged = "\n".join([json.dumps(subject), *lines[1:]]).encode() + b"\n"
    crafted = _rebuilt(source[0], tmp_path / "forged.tar", {"subjects.jsonl": forged})
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveError, why)


def test_a_crop_claiming_huge_dimensions_is_refused_before_decoding(
    tmp_path: Path, source: tuple[Path, Any, Any], default_pipeline: FacePipeline
) -> None:
    # A decompression bomb's shape: a small PNG whose header claims 30000x30000 pixels (2.7 GB decoded).
    members = _members(source[0])
    name = next(member for member in members if member.startswith("crops/"))
    png = bytearray(members[name])
    png[16:24] = (30000).to_bytes(4, "big") * 2
    crafted = _rebuilt(source[0], tmp_path / "bomb.tar", {name: bytes(png)})
    _refused_without_writes(tmp_path, default_pipeline, crafted, ArchiveError, "at most 2048 a side")
