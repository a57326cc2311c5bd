"""The portable gallery archive: one tar file holding a gallery's subjects, faces, embeddings and crops.

Format version 1 (docs/api.md, "Export and import a gallery"), members written in this order:

    crops/<face_id>.png   a face's stored crop (RGB PNG), for each face that has one
    subjects.jsonl        one JSON object a line: id, name, metadata, created_at, updated_at
    faces.jsonl           one a line: id, subject_id, det_score, quality, created_at, crop (its member
                          name, or null), landmarks (the five points in the crop, or null)
    embeddings.npy        float32 (faces, D), row i belongs to line i of faces.jsonl (.npy, no pickles)
    manifest.json         format, format_version, created_at, pack {id, embedding_size},
                          counts {subjects, faces, crops}, members {name: {size, sha256}} for every
                          other member

Reading never extracts anything to disk: members are looked up by the exact names the manifest and
``faces.jsonl`` give, and anything else in the tar (another name, a link, a directory, a second copy
of a name) refuses the archive. ``open_archive`` verifies every member's size and SHA-256, the
manifest, every line and the embeddings (shape, finite, unit norm) before it returns; crops are read
later, one at a time, and checked against their SHA-256 again as they are read.

A tar is written uncompressed (crops are PNGs already); a gzip-compressed copy reads as well.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Protocol, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from service.gallery.input_limits import MAX_NAME_CHARS, check_metadata, check_name
from service.gallery.rows import utc_timestamp
from service.gallery.store import (
    FaceNotFoundError,
    FaceRecord,
    GalleryError,
    PackPin,
    StoredCrop,
    SubjectNotFoundError,
    SubjectPage,
    decode_png,
)
from service.pipeline.types import FloatArray

FORMAT = "face-service-gallery"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUBJECTS = "subjects.jsonl"
FACES = "faces.jsonl"
EMBEDDINGS = "embeddings.npy"
MEDIA_TYPE = "application/x-tar"

_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_CROP_MEMBER = re.compile(rf"crops/({_ID})\.png")
_MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # one entry (~130 bytes) per crop: room for ~2M faces
_MAX_MEMBERS = 4_000_000
# A stored crop is the face box with margin, resized (~170 px a side): anything far larger is no crop of
# ours, and a tiny PNG can claim huge dimensions (a decompression bomb), so the header is read first.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CROP_SIDE = 2048
_UNIT_NORM_TOLERANCE = 1e-3
_CHUNK = 1024 * 1024
_SPOOL_BYTES = 8 * 1024 * 1024  # members built in memory up to this size, then in a temp file
_PAGE = 200  # subjects read per page while exporting
_SUBJECT_READ_TRIES = 3


class ArchiveError(GalleryError):
    """The archive is unreadable, incomplete, tampered with or inconsistent: nothing was imported."""


class ArchiveVersionError(ArchiveError):
    """The archive is of a format version this service does not read."""


# ---------------------------------------------------------------------- the format's records


def _finite(value: float) -> float:
    if not np.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _iso_time(value: str) -> str:
    datetime.datetime.fromisoformat(value)  # a ValueError names a time that is none; kept as written
    return value


Id = Annotated[str, Field(pattern=rf"^{_ID}$")]
Finite = Annotated[float, AfterValidator(_finite)]
Time = Annotated[str, AfterValidator(_iso_time)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchivedSubject(_Record):
    """A subject as the API would have stored it: the same name and metadata rules."""

    id: Id
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(check_name)]
    metadata: Annotated[dict[str, Any], AfterValidator(check_metadata)]
    created_at: Time
    updated_at: Time


class ArchivedFace(_Record):
    id: Id
    subject_id: Id
    det_score: Finite
    quality: dict[str, Finite]
    created_at: Time
    crop: str | None  # the member holding its crop: crops/<id>.png
    landmarks: (
        tuple[
            tuple[Finite, Finite],
            tuple[Finite, Finite],
            tuple[Finite, Finite],
            tuple[Finite, Finite],
            tuple[Finite, Finite],
        ]
        | None
    )


class MemberDigest(_Record):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ArchivePack(_Record):
    id: str = Field(min_length=1)
    embedding_size: int = Field(ge=1, le=65536)


class ArchiveCounts(_Record):
    subjects: int = Field(ge=0)
    faces: int = Field(ge=0)
    crops: int = Field(ge=0)


class Manifest(_Record):
    format: Literal["face-service-gallery"]
    format_version: Literal[1]
    created_at: Time
    pack: ArchivePack
    counts: ArchiveCounts
    members: dict[str, MemberDigest]


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the value"
    return f"{where}: {first['msg']}"


# ---------------------------------------------------------------------- writing


class GalleryReader(Protocol):
    """What an export reads: a ``Gallery`` or any ``GalleryStore``."""

    def list_subjects(self, cursor: str | None = None, limit: int = 50) -> SubjectPage: ...

    def list_faces(self, subject_id: str) -> list[FaceRecord]: ...

    def subject_embeddings(self, subject_id: str) -> FloatArray: ...

    def get_crop(self, face_id: str) -> StoredCrop | None: ...


@dataclass(frozen=True)
class ArchiveSummary:
    pack: PackPin
    subjects: int
    faces: int
    crops: int
    created_at: str


@dataclass(frozen=True)
class _SubjectFaces:
    records: list[FaceRecord]
    embeddings: FloatArray
    crops: list[StoredCrop | None]


def _read_subject(source: GalleryReader, subject_id: str) -> _SubjectFaces | None:
    """One subject's faces, embeddings and crops read consistently (None: deleted meanwhile).

    The reads are separate queries, so a write in between (a face added or deleted) is retried.
    """
    for _ in range(_SUBJECT_READ_TRIES):
        try:
            records = source.list_faces(subject_id)
            embeddings = source.subject_embeddings(subject_id)
            crops = [source.get_crop(record.id) if record.has_crop else None for record in records]
        except SubjectNotFoundError:
            return None
        except FaceNotFoundError:
            continue
        if len(embeddings) == len(records):
            return _SubjectFaces(records, embeddings, crops)
    raise ArchiveError(f"subject {subject_id} kept changing while it was exported; export again")


class _Digests:
    def __init__(self) -> None:
        self.members: dict[str, MemberDigest] = {}

    def add(self, tar: tarfile.TarFile, name: str, data: IO[bytes], size: int, mtime: float) -> None:
        digest = hashlib.sha256()
        data.seek(0)
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
        data.seek(0)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, int(mtime), 0o600
        tar.addfile(info, data)
        self.members[name] = MemberDigest(size=size, sha256=digest.hexdigest())

    def add_bytes(self, tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
        self.add(tar, name, io.BytesIO(data), len(data), mtime)


def _json_line(model: type[_Record], **fields: Any) -> bytes:
    """One record of the format as a line; a stored row the format cannot carry is an ArchiveError."""
    try:
        record = model(**fields)
    except ValidationError as error:
        raise ArchiveError(
            f"{model.__name__} {fields.get('id')!r} cannot be exported: {_problem(error)}"
        ) from None
    return record.model_dump_json().encode("utf-8") + b"\n"


def write_archive(source: GalleryReader, pack: PackPin, out: IO[bytes]) -> ArchiveSummary:
    """Write every subject and face of ``source`` (pinned to ``pack``) as an archive into ``out``.

    Subjects are read a page at a time, crops go straight into the tar; the embeddings are held in
    memory once (for the .npy header's shape). Each subject is read consistently; the archive as a
    whole is a point-in-time copy only when nothing writes meanwhile (stop writers for that).
    """
    now = time.time()
    created_at = utc_timestamp()
    digests = _Digests()
    embeddings: list[FloatArray] = []
    subjects = faces = crops = 0
    with (
        tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as subject_lines,
        tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as face_lines,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        cursor: str | None = None
        while True:
            page = source.list_subjects(cursor, limit=_PAGE)
            for subject in page.items:
                read = _read_subject(source, subject.id)
                if read is None:
                    continue
                subject_lines.write(
                    _json_line(
                        ArchivedSubject,
                        id=subject.id,
                        name=subject.name,
                        metadata=subject.metadata,
                        created_at=subject.created_at,
                        updated_at=subject.updated_at,
                    )
                )
                subjects += 1
                for record, crop in zip(read.records, read.crops, strict=True):
                    if record.pack_id != pack.pack_id:
                        raise ArchiveError(
                            f"face {record.id} was made by pack {record.pack_id!r}, not the gallery's "
                            f"{pack.pack_id!r} (re-embedded meanwhile?); export again"
                        )
                    member = None
                    if crop is not None:
                        member = f"crops/{record.id}.png"
                        digests.add_bytes(tar, member, crop.png_bytes(), now)
                        crops += 1
                    landmarks = None if crop is None else np.asarray(crop.landmarks, np.float64).tolist()
                    face_lines.write(
                        _json_line(
                            ArchivedFace,
                            id=record.id,
                            subject_id=subject.id,
                            det_score=record.det_score,
                            # Measurements only: one JSON cannot carry (NaN, inf) is left out.
                            quality={k: v for k, v in record.quality.items() if np.isfinite(v)},
                            created_at=record.created_at,
                            crop=member,
                            landmarks=landmarks,
                        )
                    )
                faces += len(read.records)
                embeddings.append(np.asarray(read.embeddings, dtype="<f4").reshape(-1, pack.embedding_size))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        digests.add(tar, SUBJECTS, subject_lines, subject_lines.tell(), now)
        digests.add(tar, FACES, face_lines, face_lines.tell(), now)
        matrix = np.concatenate(embeddings) if embeddings else np.empty((0, pack.embedding_size), "<f4")
        del embeddings
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as npy:
            np.save(npy, matrix, allow_pickle=False)
            digests.add(tar, EMBEDDINGS, npy, npy.tell(), now)
        manifest = Manifest(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created_at=created_at,
            pack=ArchivePack(id=pack.pack_id, embedding_size=pack.embedding_size),
            counts=ArchiveCounts(subjects=subjects, faces=faces, crops=crops),
            members=digests.members,
        )
        digests.add_bytes(tar, MANIFEST, manifest.model_dump_json(indent=1).encode("utf-8"), now)
    return ArchiveSummary(pack, subjects, faces, crops, created_at)


# ---------------------------------------------------------------------- reading


@dataclass
class OpenArchive:
    """A verified archive, open: its manifest, subjects, faces and embeddings; crops on demand."""

    manifest: Manifest
    subjects: list[ArchivedSubject]
    faces: list[ArchivedFace]  # in embeddings row order
    embeddings: FloatArray  # (faces, D) float32, unit rows
    _tar: tarfile.TarFile
    _members: dict[str, tarfile.TarInfo]

    @property
    def pack(self) -> PackPin:
        return PackPin(self.manifest.pack.id, self.manifest.pack.embedding_size)

    def read_crop(self, face: ArchivedFace) -> StoredCrop | None:
        """The face's crop, checked against its SHA-256 again (the file may have changed since)."""
        if face.crop is None or face.landmarks is None:
            return None
        with _reading(face.crop):
            data = _read_member(self._tar, self._members[face.crop])
        expected = self.manifest.members[face.crop]
        if len(data) != expected.size or hashlib.sha256(data).hexdigest() != expected.sha256:
            raise ArchiveError(f"{face.crop} changed since the archive was verified; nothing was imported")
        _check_png_size(face.crop, data)
        try:
            image = decode_png(data)
        except ValueError as error:
            raise ArchiveError(f"{face.crop}: {error}") from None
        return StoredCrop(image, np.asarray(face.landmarks, dtype=np.float32), png=data)

    def iter_crops(self, faces: Sequence[ArchivedFace]) -> Iterator[StoredCrop | None]:
        for face in faces:
            yield self.read_crop(face)


_RecordT = TypeVar("_RecordT", bound=_Record)

_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """A truncated or garbled tar (or gzip stream) is an ArchiveError naming where it broke."""
    try:
        yield
    except _READ_ERRORS as error:
        raise ArchiveError(
            f"the archive is truncated or not a gallery archive (reading {what}: "
            f"{error or type(error).__name__})"
        ) from None


def _check_png_size(member: str, data: bytes) -> None:
    """Refuse a crop that is not a PNG, or whose header claims more than MAX_CROP_SIDE a side."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ArchiveError(f"{member} is not a PNG image")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not 0 < width <= MAX_CROP_SIDE or not 0 < height <= MAX_CROP_SIDE:
        raise ArchiveError(f"{member} is {width}x{height} pixels; a crop is at most {MAX_CROP_SIDE} a side")


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int | None = None) -> bytes:
    if limit is not None and info.size > limit:
        raise ArchiveError(f"{info.name} is {info.size} bytes; at most {limit} are accepted")
    handle = tar.extractfile(info)
    if handle is None:  # only regular files are let through, so this is a tar the module misread
        raise ArchiveError(f"{info.name} cannot be read")
    with handle:
        data = handle.read()
    if len(data) != info.size:
        raise ArchiveError(
            f"the archive is truncated ({info.name} ends after {len(data)} of {info.size} bytes)"
        )
    return data


def _listed_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by name, refusing what no archive of ours holds (links, other names, duplicates)."""
    members: dict[str, tarfile.TarInfo] = {}
    fixed = {MANIFEST, SUBJECTS, FACES, EMBEDDINGS}
    with _reading("the member list"):
        while (info := tar.next()) is not None:
            name = info.name
            if name in members:
                raise ArchiveError(f"the archive holds {name!r} twice")
            if name not in fixed and _CROP_MEMBER.fullmatch(name) is None:
                raise ArchiveError(f"unexpected member {name!r}: not part of a gallery archive")
            if not info.isreg():
                raise ArchiveError(f"member {name!r} is not a regular file")
            members[name] = info
            if len(members) > _MAX_MEMBERS:
                raise ArchiveError(f"the archive holds more than {_MAX_MEMBERS} members")
    if MANIFEST not in members:
        raise ArchiveError(f"no {MANIFEST}: not a gallery archive (or truncated)")
    return members


def _manifest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Manifest:
    with _reading(MANIFEST):
        data = _read_member(tar, info, _MAX_MANIFEST_BYTES)
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise ArchiveError(f"{MANIFEST} is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArchiveError(f"{MANIFEST} does not describe a {FORMAT} archive")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArchiveVersionError(
            f"the archive is format version {raw.get('format_version')!r}; this service reads version "
            f"{FORMAT_VERSION} (export it again with a matching service)"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        raise ArchiveError(f"{MANIFEST}: {_problem(error)}") from None


def _check_digests(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], manifest: Manifest) -> None:
    present = set(members) - {MANIFEST}
    listed = set(manifest.members)
    missing, extra = sorted(listed - present), sorted(present - listed)
    if missing:
        raise ArchiveError(
            f"{len(missing)} members the manifest lists are missing (truncated?): {missing[:3]}"
        )
    if extra:
        raise ArchiveError(f"{len(extra)} members are not in the manifest: {extra[:3]}")
    for name in sorted(listed, key=lambda n: members[n].offset):  # file order: no seeking back
        expected, info = manifest.members[name], members[name]
        if info.size != expected.size:
            raise ArchiveError(f"{name} is {info.size} bytes; the manifest says {expected.size}")
        digest = hashlib.sha256()
        read = 0
        with _reading(name):
            handle = tar.extractfile(info)
            if handle is None:
                raise ArchiveError(f"{name} cannot be read")
            with handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
        if read != expected.size:
            raise ArchiveError(
                f"the archive is truncated ({name} ends after {read} of {expected.size} bytes)"
            )
        if digest.hexdigest() != expected.sha256:
            raise ArchiveError(f"{name} does not match its SHA-256 in the manifest (damaged or altered)")


def _lines(tar: tarfile.TarFile, info: tarfile.TarInfo, model: type[_RecordT]) -> list[_RecordT]:
    records: list[_RecordT] = []
    with _reading(info.name):
        handle = tar.extractfile(info)
        if handle is None:
            raise ArchiveError(f"{info.name} cannot be read")
        with handle:
            for number, line in enumerate(handle, start=1):
                try:
                    records.append(model.model_validate_json(line))
                except ValidationError as error:
                    raise ArchiveError(f"{info.name} line {number}: {_problem(error)}") from None
    return records


def _check_records(manifest: Manifest, subjects: list[ArchivedSubject], faces: list[ArchivedFace]) -> None:
    counts = manifest.counts
    if len(subjects) != counts.subjects or len(faces) != counts.faces:
        raise ArchiveError(
            f"the archive holds {len(subjects)} subjects and {len(faces)} faces; the manifest counts "
            f"{counts.subjects} and {counts.faces}"
        )
    subject_ids = {subject.id for subject in subjects}
    if len(subject_ids) != len(subjects):
        raise ArchiveError(f"{SUBJECTS} names a subject id twice")
    if len({face.id for face in faces}) != len(faces):
        raise ArchiveError(f"{FACES} names a face id twice")
    crop_members = {name for name in manifest.members if _CROP_MEMBER.fullmatch(name)}
    referenced = 0
    for number, face in enumerate(faces, start=1):
        if face.subject_id not in subject_ids:
            raise ArchiveError(f"{FACES} line {number}: subject {face.subject_id} is not in {SUBJECTS}")
        if (face.crop is None) != (face.landmarks is None):
            raise ArchiveError(f"{FACES} line {number}: a crop needs its landmarks, and landmarks a crop")
        if face.crop is not None:
            if face.crop != f"crops/{face.id}.png" or face.crop not in crop_members:
                raise ArchiveError(f"{FACES} line {number}: crop {face.crop!r} is not this face's member")
            referenced += 1
    if referenced != len(crop_members) or referenced != counts.crops:
        raise ArchiveError(
            f"{FACES} names {referenced} crops; the archive holds {len(crop_members)} and the manifest "
            f"counts {counts.crops}"
        )


def _embeddings(tar: tarfile.TarFile, info: tarfile.TarInfo, manifest: Manifest) -> FloatArray:
    with _reading(EMBEDDINGS):
        handle = tar.extractfile(info)
        if handle is None:
            raise ArchiveError(f"{EMBEDDINGS} cannot be read")
        with handle:
            try:
                # Read whole: numpy takes a tar member for a real file (fileno) and fails.
                matrix = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            except ValueError as error:
                raise ArchiveError(f"{EMBEDDINGS} is not a numpy array file: {error}") from None
    shape = (manifest.counts.faces, manifest.pack.embedding_size)
    if not isinstance(matrix, np.ndarray) or matrix.dtype != np.float32 or matrix.shape != shape:
        found = f"{matrix.dtype} {matrix.shape}" if isinstance(matrix, np.ndarray) else type(matrix).__name__
        raise ArchiveError(
            f"{EMBEDDINGS} holds {found}; the manifest needs float32 {shape} "
            f"({manifest.pack.embedding_size}-d embeddings of pack {manifest.pack.id!r})"
        )
    if not np.all(np.isfinite(matrix)):
        raise ArchiveError(f"{EMBEDDINGS} holds non-finite values")
    norms = np.linalg.norm(matrix, axis=1) if len(matrix) else np.empty(0)
    if np.any(np.abs(norms - 1.0) > _UNIT_NORM_TOLERANCE):
        raise ArchiveError(f"{EMBEDDINGS} holds rows that are not unit vectors")
    return np.ascontiguousarray(matrix, dtype=np.float32)


@contextmanager
def open_archive(source: Path | IO[bytes]) -> Iterator[OpenArchive]:
    """Open and verify an archive (a path, or a seekable binary file); raises ArchiveError."""
    with _reading("the archive"):
        # Closed by the ``with tar`` below; opened apart so that its errors read as archive errors.
        tar = tarfile.open(  # noqa: SIM115
            **({"name": source} if isinstance(source, Path) else {"fileobj": source}), mode="r:*"
        )
    with tar:
        members = _listed_members(tar)
        manifest = _manifest(tar, members[MANIFEST])
        for name in (SUBJECTS, FACES, EMBEDDINGS):
            if name not in members or name not in manifest.members:
                raise ArchiveError(f"no {name} in the archive")
        _check_digests(tar, members, manifest)
        subjects = _lines(tar, members[SUBJECTS], ArchivedSubject)
        faces = _lines(tar, members[FACES], ArchivedFace)
        _check_records(manifest, subjects, faces)
        embeddings = _embeddings(tar, members[EMBEDDINGS], manifest)
        yield OpenArchive(manifest, subjects, faces, embeddings, tar, members)
