"""The gallery store's contract: what any backend keeps (subjects, faces, crops, the pack pin).

``GalleryStore`` is the protocol the ``Gallery`` and re-embedding use; ``SqliteGalleryStore``
(``service/gallery/sqlite_store.py``) is today's one implementation, chosen in
``service/gallery/backends.py``. The data classes, errors and backend-neutral helpers (PNG crop
codec, storage-full detection) live here so callers import them without naming a backend.

Every face has an integer ``index_id``, the search index's id: a backend never reuses one, even
after deletes, so a stale index entry can never be mistaken for a newer face.

The change sequence (``change_seq``) counts committed write transactions: it grows by exactly one with
each one, in the same transaction, never on a rolled-back write, and survives restarts. A replica that
has applied sequence N has seen every change up to N (what a shared backend's change feed tails).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import re
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from service.gallery.index import SearchIndex
from service.pipeline.types import EmbeddedFace, FloatArray, ImageArray

SCHEMA_VERSION = 1

IntArray = npt.NDArray[np.int64]


class GalleryError(Exception):
    """Base of the gallery's errors."""


class SubjectNotFoundError(GalleryError, LookupError):
    def __init__(self, subject_id: str) -> None:
        super().__init__(f"no subject with id {subject_id!r}")
        self.subject_id = subject_id


class FaceNotFoundError(GalleryError, LookupError):
    def __init__(self, face_id: str) -> None:
        super().__init__(f"no face with id {face_id!r}")
        self.face_id = face_id


# The one key of the object shown in place of stored metadata that can't be read back.
UNREADABLE_METADATA_KEY = "_unreadable"


class InvalidCursorError(GalleryError, ValueError):
    pass


class DuplicateNameError(GalleryError, ValueError):
    """Another subject already has this name (compared as ``name_key`` compares); nothing was written."""

    def __init__(self, name: str, other_id: str) -> None:
        super().__init__(f"another subject ({other_id}) is already named {name!r} (ignoring case and spaces)")
        self.name = name
        self.other_id = other_id


class EmbeddingSizeError(GalleryError, ValueError):
    pass


class SchemaVersionError(GalleryError):
    pass


def repair_hint(data_dir: Path) -> str:
    """What to do about a damaged gallery file in ``data_dir``: a command that works when pasted."""
    from service.command_hints import command_hint

    command = command_hint("face-service", "check", "--repair", data_dir=data_dir)
    return (
        f"stop the service and run `{command}` (it moves bad rows, or an unreadable file, aside and "
        "deletes nothing), or restore the file from a backup"
    )


class GalleryCorruptError(GalleryError):
    """The gallery file cannot be read, or holds rows that cannot be searched."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"the gallery file {path} is damaged ({why}): {repair_hint(path.parent)}")
        self.path = path
        self.why = why


class PackPinMissingError(GalleryError):
    """Faces are stored but the row saying which pack made them is gone: they cannot be re-pinned."""

    # ``path``: the gallery file, or a shared database's URL (password redacted).
    def __init__(self, path: Path | str, faces: int) -> None:
        super().__init__(
            f"the gallery at {path} holds {faces} faces but its pack pin (the meta row) is missing, so "
            "the pack that made their embeddings is unknown and the service will not guess: restore "
            "the gallery from a backup"
        )


@dataclass(frozen=True)
class BadRow:
    """A stored face that cannot be searched, and why."""

    index_id: int
    reason: str


# Galleries made with a former default pack are pinned to ids with these prefixes:
# prefix -> (FACE_PACK folder, face-export subcommand, what it was).
_FORMER_DEFAULT_PACKS: dict[str, tuple[str, str, str]] = {
    "default-dlib-r34-": ("dlib", "dlib-pack", "the former default dlib pack"),
    "sface-retinaface-": ("fp32", "fp32-pack", "the former fp32 default pack"),
}


def _former_default_hint(gallery_pack: str) -> str:
    for prefix, (folder, command, what) in _FORMER_DEFAULT_PACKS.items():
        if gallery_pack.startswith(prefix):
            return f" ({what}: `face-export {command}`, then FACE_PACK={folder})"
    return ""


class PackMismatchError(GalleryError):
    """The gallery's embeddings come from another pack: they are not comparable with this one's."""

    # ``path``: the gallery file, or a shared database's URL (password redacted).
    def __init__(
        self, path: Path | str, gallery_pack: str, service_pack: str, detail: str = "", advice: str = ""
    ) -> None:
        former_default = _former_default_hint(gallery_pack)
        # ``advice``: pasteable commands from a caller that knows the pack folders (start-up does).
        advice = advice or (
            "stop the service and run `face-service reembed` to re-embed the gallery's stored crops with "
            "the pack FACE_PACK names, or set FACE_PACK to the folder holding the pack "
            f"{gallery_pack!r} to keep using it{former_default}"
        )
        message = (
            f"the gallery at {path} holds embeddings from pack {gallery_pack!r}, but the service runs "
            f"pack {service_pack!r}{detail}. Embeddings of different packs cannot be compared: {advice}."
        )
        super().__init__(message)
        self.path = path
        self.gallery_pack = gallery_pack
        self.service_pack = service_pack
        self.detail = detail

    def with_advice(self, advice: str) -> PackMismatchError:
        return PackMismatchError(self.path, self.gallery_pack, self.service_pack, self.detail, advice)


@dataclass(frozen=True)
class PackPin:
    pack_id: str
    embedding_size: int
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    face_count: int = 0
    # Whether another subject has the same name now (see ``name_key``), worked out at every read.
    duplicate_name: bool = False


def name_key(name: object) -> str:
    """What subject names are compared by (duplicates, prefix search): trimmed, Unicode case-folded.

    Computed here, in Python, and stored beside the name by every backend, so that SQLite (whose
    ``lower`` knows ASCII only) and PostgreSQL (whose ``lower`` follows the database's locale) agree.
    """
    if isinstance(name, bytes):  # a hand-written SQLite row may hold a BLOB: keyed as it is shown
        name = name.decode("utf-8", "backslashreplace")
    return str(name).strip().casefold()


# Characters LIKE treats specially, escaped with the one ESCAPE character both backends' queries name.
LIKE_ESCAPE = "\\"


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching keys that start with ``prefix``'s key, its ``%`` and ``_`` taken literally."""
    key = prefix.lstrip().casefold()
    escaped = key.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%")
    return escaped.replace("_", LIKE_ESCAPE + "_") + "%"


@dataclass(frozen=True)
class SubjectFilter:
    """Which subjects a listing keeps; every criterion given must hold (AND). None: no criterion.

    - ``name_prefix``: the name, trimmed and case-folded (``name_key``), starts with the prefix (its
      leading spaces dropped, case-folded); ``%`` and ``_`` are plain characters.
    - ``metadata_key``: the metadata object has this top-level key (exact, case-sensitive).
    - ``metadata_value`` (only with ``metadata_key``): that key's value equals it as JSON values
      compare: a string value of exactly this text; a number equal to it when it is spelled as a JSON
      number (``"42"`` matches 42 and 42.0); ``true``, ``false`` and ``null`` match those literals too.
      Objects and arrays never match.
    """

    name_prefix: str | None = None
    metadata_key: str | None = None
    metadata_value: str | None = None

    def __post_init__(self) -> None:
        if self.metadata_value is not None and self.metadata_key is None:
            raise ValueError("metadata_value needs metadata_key")

    def value_candidates(self) -> list[object]:
        """The JSON values ``metadata_value`` matches: itself as a string, and the scalar it spells."""
        if self.metadata_value is None:
            return []
        text = self.metadata_value
        candidates: list[object] = [text]
        if text in _JSON_LITERALS:
            candidates.append(_JSON_LITERALS[text])
        elif _JSON_NUMBER.fullmatch(text):
            number = _json_number(text)
            if number is not None:
                candidates.append(number)
        return candidates


_JSON_LITERALS: dict[str, object] = {"true": True, "false": False, "null": None}
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT64 = range(-(2**63), 2**63)


def _json_number(text: str) -> int | float | None:
    """The number a JSON number spells: an int when it is one that fits 64 bits, else a finite float."""
    if re.fullmatch(r"-?[0-9]+", text) and int(text) in _INT64:
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SubjectPage:
    items: list[Subject]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class StoredCrop:
    image: ImageArray  # RGB uint8
    landmarks: FloatArray  # (5, 2): the face's five points in crop pixels (manifest order)
    # The PNG ``image`` was decoded from, when it was (a store's row, an archive's member): written
    # and served as it is, so a crop that only passes through (export, import, GET .../crop) is not
    # encoded again (a PNG encode costs ~1 ms, twice its decode).
    png: bytes | None = field(default=None, repr=False, compare=False)

    def png_bytes(self) -> bytes:
        """The crop as PNG: the bytes it came from, or ``image`` encoded now."""
        return self.png if self.png is not None else encode_png(self.image)


@dataclass(frozen=True)
class NewFace:
    """A face to enroll: its embedding and, optionally, a crop that can be re-embedded later."""

    embedding: FloatArray  # (D,) float32, unit norm
    det_score: float
    quality: Mapping[str, float] = field(default_factory=dict)
    crop: StoredCrop | None = None

    @classmethod
    def from_embedded(cls, face: EmbeddedFace, crop: StoredCrop | None = None) -> NewFace:
        return cls(face.embedding, face.face.score, dataclasses.asdict(face.quality), crop)


@dataclass(frozen=True)
class PortableFace:
    """A face brought in from another gallery (an archive) by ``import_gallery``.

    It keeps its public id, subject, scores and time; its embedding is in this gallery's pack; the
    index id is this gallery's to give (another gallery's index ids mean nothing here).
    """

    id: str
    subject_id: str
    embedding: FloatArray  # (D,) float32, unit norm
    det_score: float
    quality: Mapping[str, float]
    created_at: str
    crop: StoredCrop | None


class ImportClashError(GalleryError):
    """An import names subject or face ids the gallery already holds: nothing was changed."""


@dataclass(frozen=True)
class FaceRecord:
    id: str
    index_id: int
    subject_id: str
    pack_id: str
    det_score: float
    quality: dict[str, float]
    created_at: str
    has_crop: bool


@dataclass(frozen=True)
class FaceRef:
    id: str
    index_id: int


@dataclass(frozen=True)
class FaceOwner:
    """Who a FAISS id belongs to (for turning search hits into candidates)."""

    index_id: int
    face_id: str
    subject_id: str
    subject_name: str


@dataclass(frozen=True)
class GalleryCounts:
    subjects: int
    faces: int


def encode_png(image: ImageArray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not PNG-encode an image of shape {image.shape}")
    return encoded.tobytes()


def decode_png(data: bytes) -> ImageArray:
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("stored crop is not a readable PNG")
    return np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), dtype=np.uint8)


class EmbeddingWriter(Protocol):
    """Writes re-embedded faces inside ``GalleryStore.repinning`` (its transaction is open)."""

    written: int

    def write(self, index_ids: Sequence[int], embeddings: FloatArray) -> None: ...


class GalleryStore(Protocol):
    """A gallery backend: the source of truth for subjects, faces, crops and the pack pin.

    Writes are atomic (all or nothing) and durable once they return. Content that cannot be read
    back at open (``pin``, ``searchable_embeddings``) is reported as a ``GalleryCorruptError``.
    """

    def close(self) -> None: ...

    def change_seq(self) -> int:
        """Committed write transactions so far (see the module docstring)."""
        ...

    def damaged(self, why: str) -> GalleryError:
        """The error saying this store's content is damaged, with what to do about it."""
        ...

    # integrity
    def quick_check(self) -> str | None:
        """None when a fast integrity check passes, else its first complaint."""
        ...

    def bad_rows(self) -> list[BadRow]: ...

    def searchable_embeddings(self) -> tuple[IntArray, FloatArray, list[BadRow]]: ...

    # pack pin
    def pinned_pack(self) -> PackPin | None: ...

    def pin(self, pack_id: str, embedding_size: int) -> PackPin: ...

    # subjects
    def create_subject(
        self, name: str, metadata: Mapping[str, Any] | None = None, *, unique_name: bool = False
    ) -> Subject:
        """A new subject; with ``unique_name``, ``DuplicateNameError`` when another has the same
        ``name_key`` (checked and inserted in one serialized write transaction: no race lets two in)."""
        ...

    def get_subject(self, subject_id: str) -> Subject: ...

    def list_subjects(
        self, cursor: str | None = None, limit: int = 50, where: SubjectFilter | None = None
    ) -> SubjectPage:
        """Subjects in creation order, those ``where`` keeps; the cursor is a position in that order,
        so a cursor from any listing works with any filter (the filter is applied again)."""
        ...

    def update_subject(
        self,
        subject_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        unique_name: bool = False,
    ) -> Subject:
        """Rename and/or replace the metadata; ``unique_name`` as for ``create_subject`` (a rename only)."""
        ...

    def delete_subject(self, subject_id: str) -> list[FaceRef]: ...

    def merge_subject(self, source_id: str, target_id: str) -> Subject:
        """Move every face (crops too) of ``source_id`` to ``target_id``, then delete the source, in one
        transaction; returns the target as it is after the merge.

        Metadata: the target's top-level keys win; keys only the source has are added (a side whose
        stored metadata is not a readable object contributes nothing, and an unreadable target's is
        kept as it is). The target's ``updated_at`` changes. Index ids do not change (searches resolve
        hits to subjects through the store). Raises ``SubjectNotFoundError`` naming the missing one
        (the source first), and ``ValueError`` when both are the same subject.
        """
        ...

    # faces
    def add_faces(self, subject_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]: ...

    def list_faces(self, subject_id: str) -> list[FaceRecord]: ...

    def get_face(self, face_id: str) -> FaceRecord: ...

    def get_crop(self, face_id: str) -> StoredCrop | None: ...

    def delete_face(self, face_id: str, subject_id: str | None = None) -> FaceRef: ...

    def move_face(self, face_id: str, subject_id: str) -> FaceRecord:
        """Make one face (and its crop) ``subject_id``'s, in one transaction; returns the moved face.

        Both subjects' ``updated_at`` change; the face keeps its ids. Raises ``FaceNotFoundError`` or
        ``SubjectNotFoundError``.
        """
        ...

    def subject_embeddings(self, subject_id: str) -> FloatArray: ...

    def all_embeddings(self) -> tuple[IntArray, FloatArray]: ...

    def owners(self, index_ids: Sequence[int]) -> dict[int, FaceOwner]: ...

    def counts(self) -> GalleryCounts: ...

    # re-embedding
    def iter_crops(self, batch_size: int = 256) -> Iterator[list[tuple[int, StoredCrop]]]: ...

    def faces_without_crop(self) -> list[FaceRef]: ...

    def repinning(
        self, new_pin: PackPin, *, delete_unconverted: bool = False
    ) -> AbstractContextManager[EmbeddingWriter]: ...

    # import from another gallery (service/gallery/archive.py)
    def existing_ids(
        self, subject_ids: Collection[str], face_ids: Collection[str]
    ) -> tuple[set[str], set[str]]:
        """Which of ``subject_ids`` and ``face_ids`` this gallery holds already."""
        ...

    def import_gallery(self, subjects: Sequence[Subject], faces: Iterable[PortableFace]) -> list[FaceRecord]:
        """Insert ``subjects`` (ids, names, metadata and times as given) and ``faces`` (ids as given,
        new index ids, this gallery's pack) in ONE transaction, consuming ``faces`` inside it.

        All or nothing: an id already taken (``ImportClashError``), a face of a subject that is neither
        imported nor present, or an error raised by the ``faces`` iterator leaves the gallery as it was.
        Returns the faces' records in the order given.
        """
        ...


class StoreUnavailableError(GalleryError):
    """The backend cannot be reached now (a shared database is down): nothing changed; retry later."""


@dataclass(frozen=True)
class FaceChange:
    """What one committed write transaction did to the searchable faces (a change-feed entry)."""

    seq: int
    committed_at: float  # Unix time of the commit, from the database's clock
    added_ids: IntArray  # faces this transaction added that still exist when the feed is read
    added: FloatArray  # (len(added_ids), D) their embeddings
    removed_ids: IntArray
    reset: bool = False  # embeddings rewritten wholesale (re-embedding): rebuild from a snapshot


@dataclass(frozen=True)
class GallerySnapshot:
    """Every searchable face and the change sequence they reflect, read in one transaction."""

    seq: int
    ids: IntArray
    embeddings: FloatArray


class ChangeFeed(Protocol):
    """A shared backend's ordered log of committed changes, which replicas tail to keep their index.

    Sequence numbers are dense (1, 2, 3, ...) and commit in order, so "everything after N" never
    misses a transaction that commits late. The log keeps recent entries only; a replica further
    behind than the log reaches gets ``None`` and rebuilds from a snapshot.
    """

    def snapshot(self) -> GallerySnapshot: ...

    def changes_since(self, seq: int, limit: int = 1000) -> list[FaceChange] | None:
        """Entries after ``seq``, oldest first, at most ``limit``; ``None`` when some were trimmed."""
        ...

    def oldest_unapplied_age_s(self, applied_seq: int) -> float:
        """Seconds since the first entry after ``applied_seq`` committed (0.0 when there is none)."""
        ...

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until a change is announced (LISTEN/NOTIFY) or ``timeout_s`` passes; True if announced.

        Raises ``StoreUnavailableError`` when the database cannot be reached (the caller backs off).
        """
        ...

    def close(self) -> None: ...


class GalleryLock(Protocol):
    """What keeps other processes off a gallery while it is open (a backend may bring none)."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class StoreOptions:
    """Which backend holds the gallery, and its settings (SQLite needs none beyond the data dir)."""

    backend: str = "sqlite"
    database_url: str | None = None  # postgresql: the libpq URL
    pool_min_size: int = 1
    pool_max_size: int = 8
    timeout_s: float = 3.0  # wait for a connection this long, then StoreUnavailableError
    vector_index: bool = False  # postgresql: keep a pgvector HNSW index on the embeddings
    # postgresql with vector_index: the pgvector HNSW graph, as FAISS's (FACE_HNSW_*): at 1M faces
    # m=16/ef_construction=64 reached recall@1 0.982 only, m=32/80 0.998 at 100k (docs/scaling.md)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    ef_search: int = 256  # pgvector's hnsw.ef_search per query


@dataclass(frozen=True)
class OpenedStore:
    """A backend's store, the lock it took and, for a shared backend, its change feed.

    ``feed`` is None for a backend only this process writes (SQLite): the gallery then updates its
    index inline. ``close`` releases the store, the feed and the lock.
    """

    store: GalleryStore
    lock: GalleryLock | None
    feed: ChangeFeed | None = None
    # The backend's own search (pgvector inside PostgreSQL) for a pinned embedding size, when the
    # options asked for it: the gallery then searches there and keeps no index of its own.
    in_database_search: Callable[[int], SearchIndex] | None = None

    def close(self) -> None:
        try:
            if self.feed is not None:
                self.feed.close()
            self.store.close()
        finally:
            if self.lock is not None:
                self.lock.release()


# SQLite's primary result code for "the disk (or the file-size limit) is full".
_SQLITE_FULL = 13
_STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def is_storage_full(error: BaseException) -> bool:
    """Whether ``error`` means the gallery's disk, quota or file-size limit is exhausted.

    The data dir's (SQLite, the OS) or the database server's (PostgreSQL's SQLSTATE 53100, disk_full).
    """
    from psycopg.errors import DiskFull  # here, not at the top: SQLite-only callers never load psycopg

    if isinstance(error, DiskFull):
        return True
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == _SQLITE_FULL) or "database or disk is full" in str(error)
    return isinstance(error, OSError) and error.errno in _STORAGE_FULL_ERRNOS
