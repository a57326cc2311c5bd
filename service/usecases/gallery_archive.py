"""Export the gallery as a portable archive, and import one (verified, all or nothing).

The archive format is ``service/gallery/archive.py``. An import:

1. verifies the whole archive (manifest, every member's SHA-256, every line, the embeddings) before
   anything is written;
2. applies the id rule (``OnConflict``): subject and face ids are kept; ids this gallery already
   holds are refused (``refuse``, the default: 409 listing them), left out with their faces
   (``skip``), or replaced by new ids (``new-ids``; a subject's faces follow it);
3. takes the embeddings as they are when the archive comes from this gallery's pack, or computes
   them again from the stored crops with this gallery's pack (faces without a crop cannot be: the
   import is refused unless ``skip_faces_without_crop``), before the write starts;
4. writes everything in ONE store transaction and only then makes the faces searchable
   (``Gallery.import_faces``): a failure at any point leaves the gallery as it was.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

import numpy as np

from service.gallery.archive import (
    ArchivedFace,
    ArchivedSubject,
    ArchiveError,
    ArchiveSummary,
    GalleryReader,
    OpenArchive,
    open_archive,
    write_archive,
)
from service.gallery.gallery import Gallery
from service.gallery.reembed import ChipEmbedder
from service.gallery.store import PackPin, PortableFace, Subject
from service.pipeline.align import align_to_template
from service.pipeline.types import FloatArray
from service.usecases.errors import FacesWithoutCropError, ImportConflictError
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker

REEMBED_BATCH = 64


class OnConflict(StrEnum):
    """What an import does with subject or face ids the gallery already holds."""

    REFUSE = "refuse"  # nothing is imported; the answer lists them
    SKIP = "skip"  # such subjects are left out with all their faces; such faces are left out
    NEW_IDS = "new-ids"  # such subjects and faces get new ids (a subject's faces follow it)


@dataclass(frozen=True)
class ImportOptions:
    on_conflict: OnConflict = OnConflict.REFUSE
    skip_faces_without_crop: bool = False
    # The names the front end gave these options (for its error fields).
    on_conflict_field: str = "on_conflict"
    skip_field: str = "skip_faces_without_crop"


@dataclass(frozen=True)
class ImportReport:
    source_pack: PackPin
    pack: PackPin
    subjects: int  # imported
    faces: int  # imported
    reembedded: int  # of those, re-embedded from their crops (0: same pack, taken as they are)
    skipped_subjects: int  # ids taken (on_conflict=skip)
    skipped_faces: int  # ids taken, or of a skipped subject (on_conflict=skip)
    skipped_without_crop: int  # not re-embeddable (skip_faces_without_crop)
    new_subject_ids: dict[str, str] = field(default_factory=dict)  # archive id -> id here (new-ids)
    new_face_ids: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Plan:
    subjects: list[Subject]
    faces: list[tuple[int, ArchivedFace, str, str]]  # (row, face, its id here, its subject's id here)
    skipped_subjects: int = 0
    skipped_faces: int = 0
    new_subject_ids: dict[str, str] = field(default_factory=dict)
    new_face_ids: dict[str, str] = field(default_factory=dict)


def _new_id() -> str:
    return str(uuid.uuid4())


def _plan(gallery: Gallery, archive: OpenArchive, options: ImportOptions) -> _Plan:
    """Which subjects and faces go in, under which ids (the ``OnConflict`` rule)."""
    taken_subjects, taken_faces = gallery.existing_ids(
        [subject.id for subject in archive.subjects], [face.id for face in archive.faces]
    )
    if (taken_subjects or taken_faces) and options.on_conflict is OnConflict.REFUSE:
        raise ImportConflictError(sorted(taken_subjects), sorted(taken_faces), options.on_conflict_field)
    plan = _Plan([], [])
    subject_ids: dict[str, str] = {}
    for subject in archive.subjects:
        here = subject.id
        if subject.id in taken_subjects:
            if options.on_conflict is OnConflict.SKIP:
                plan.skipped_subjects += 1
                continue
            here = plan.new_subject_ids[subject.id] = _new_id()
        subject_ids[subject.id] = here
        plan.subjects.append(_subject(subject, here))
    for row, face in enumerate(archive.faces):
        subject_here = subject_ids.get(face.subject_id)
        if subject_here is None:
            plan.skipped_faces += 1
            continue
        here = face.id
        if face.id in taken_faces:
            if options.on_conflict is OnConflict.SKIP:
                plan.skipped_faces += 1
                continue
            here = plan.new_face_ids[face.id] = _new_id()
        plan.faces.append((row, face, here, subject_here))
    return plan


def _subject(subject: ArchivedSubject, subject_id: str) -> Subject:
    return Subject(subject_id, subject.name, dict(subject.metadata), subject.created_at, subject.updated_at)


def _reembedded(
    archive: OpenArchive, faces: Sequence[tuple[int, ArchivedFace, str, str]], embedder: ChipEmbedder
) -> FloatArray:
    """The faces' embeddings in ``embedder``'s pack, from their crops (re-aligned onto its template)."""
    result = np.empty((len(faces), embedder.embedding_size), dtype=np.float32)
    for start in range(0, len(faces), REEMBED_BATCH):
        chips = []
        for _, face, _, _ in faces[start : start + REEMBED_BATCH]:
            crop = archive.read_crop(face)
            if crop is None:  # the plan only keeps faces with a crop here
                raise ArchiveError(f"face {face.id} has no crop to re-embed")
            chips.append(align_to_template(crop.image, crop.landmarks, embedder.template, embedder.chip_size))
        result[start : start + len(chips)] = embedder.embed_chips_sync(chips)
    return result


def import_archive_sync(
    gallery: Gallery, embedder: ChipEmbedder, source: Path | IO[bytes], options: ImportOptions
) -> ImportReport:
    """Import an archive into ``gallery`` (see the module docstring); ``embedder`` is the gallery's pack."""
    started = time.perf_counter()
    pack = PackPin(gallery.pack_id, gallery.embedding_size)
    with open_archive(source) as archive:
        source_pack = archive.pack
        same_pack = source_pack.pack_id == pack.pack_id
        if same_pack and source_pack.embedding_size != pack.embedding_size:
            raise ArchiveError(
                f"the archive's pack {source_pack.pack_id!r} has {source_pack.embedding_size}-d embeddings; "
                f"this gallery's pack of that id has {pack.embedding_size}-d ones"
            )
        if not same_pack and embedder.pack_id != pack.pack_id:
            raise ArchiveError(
                f"re-embedding needs the gallery's pack {pack.pack_id!r}, not {embedder.pack_id!r}"
            )
        plan = _plan(gallery, archive, options)
        skipped_without_crop = 0
        if same_pack:
            embeddings = archive.embeddings[[row for row, _, _, _ in plan.faces]]
        else:
            without_crop = [entry for entry in plan.faces if entry[1].crop is None]
            if without_crop and not options.skip_faces_without_crop:
                raise FacesWithoutCropError(
                    len(without_crop), source_pack.pack_id, pack.pack_id, options.skip_field
                )
            skipped_without_crop = len(without_crop)
            plan.faces = [entry for entry in plan.faces if entry[1].crop is not None]
            embeddings = _reembedded(archive, plan.faces, embedder)

        def portable() -> Iterator[PortableFace]:
            for (_, face, face_id, subject_id), embedding in zip(plan.faces, embeddings, strict=True):
                yield PortableFace(
                    face_id,
                    subject_id,
                    embedding,
                    face.det_score,
                    dict(face.quality),
                    face.created_at,
                    archive.read_crop(face),
                )

        records = gallery.import_faces(plan.subjects, portable())
    return ImportReport(
        source_pack=source_pack,
        pack=pack,
        subjects=len(plan.subjects),
        faces=len(records),
        reembedded=0 if same_pack else len(records),
        skipped_subjects=plan.skipped_subjects,
        skipped_faces=plan.skipped_faces,
        skipped_without_crop=skipped_without_crop,
        new_subject_ids=plan.new_subject_ids,
        new_face_ids=plan.new_face_ids,
        seconds=time.perf_counter() - started,
    )


def export_archive_sync(source: GalleryReader, pack: PackPin, out: IO[bytes]) -> ArchiveSummary:
    """Write ``source``'s subjects and faces (a gallery, or a store pinned to ``pack``) into ``out``."""
    return write_archive(source, pack, out)


@dataclass(frozen=True)
class ExportedArchive:
    """An archive in an anonymous temp file (no name on disk: nothing is left behind), at its start."""

    file: IO[bytes]  # the caller closes it
    size: int
    summary: ArchiveSummary


def export_to_temp_file(gallery: Gallery) -> ExportedArchive:
    """The gallery's archive, written to a private temp file before anything is sent."""
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    try:
        summary = write_archive(gallery, PackPin(gallery.pack_id, gallery.embedding_size), handle)
        size = handle.tell()
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return ExportedArchive(handle, size, summary)


async def export_gallery(resources: ServiceResources) -> ExportedArchive:
    return await in_worker(export_to_temp_file, resources.gallery)


async def import_gallery(
    resources: ServiceResources, source: IO[bytes], options: ImportOptions
) -> ImportReport:
    return await in_worker(import_archive_sync, resources.gallery, resources.pipeline, source, options)
