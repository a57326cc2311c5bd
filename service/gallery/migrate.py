"""Copy a data dir's SQLite gallery and API keys into PostgreSQL, verified (``face-service migrate``).

The copy keeps everything a client or a replica can see: subject and face ids, index ids (the search
index's ids), timestamps, metadata, detection scores, quality, embeddings, crops with their landmarks,
and the API keys (ids, hashes, scopes, names, revocations). The source is only read: its data-dir lock
is taken (the service must be stopped) so nothing changes it while it is copied.

Only an empty target is accepted: a copy merged into a gallery that already holds faces could not be
verified, and clashing ids would make it half-done. Batches are separate transactions, so an interrupted
run leaves part of a copy behind; the way forward is the same as for any refusal: an empty database.

Verification reads both galleries back through the store protocol and compares per-subject and per-face
fingerprints (record fields, owner, embedding, crop): counts, every index id's subject, and checksums of
all embeddings and crops ordered by index id, and that the target's index-id sequence has moved past
every id the source gave out (deleted faces' too: index ids are never reused). Only when all of it
matches is the migration a success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

from service.auth.keys import KeyStoreError, SqliteKeyStore, StoredKey
from service.auth.postgres_keys import PostgresKeyStore
from service.gallery.data_dir_lock import GalleryLockedError
from service.gallery.postgres_store import ImportedFace, PostgresGalleryStore, open_postgres_store
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore, open_sqlite_store
from service.gallery.store import (
    GalleryError,
    GalleryStore,
    OpenedStore,
    PackPin,
    StoreOptions,
    Subject,
    repair_hint,
)
from service.pipeline.types import FloatArray
from service.postgres.pool import DatabaseUnavailableError, PoolOptions, redact_url

DEFAULT_BATCH_SIZE = 500
_SHOWN_PER_DIFFERENCE = 3  # example ids named per kind of difference

Progress = Callable[[int, int], None]  # (faces copied, faces in all)


class MigrationError(GalleryError):
    """The migration was refused or stopped; the message says why and how to proceed."""


# ---------------------------------------------------------------------- fingerprints


def _hash64(*parts: object) -> int:
    """A 64-bit digest of ``parts`` (JSON, keys sorted): compact enough to keep one per face."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def _bytes64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass
class GalleryFingerprint:
    """What a gallery holds, one digest per subject, face and crop, read through the store protocol."""

    subjects: int = 0
    faces: int = 0  # the store's own count (faces no subject reaches still count here)
    subject_ids: list[str] = field(default_factory=list)  # in listing order (the pagination order)
    subject_digests: array[int] = field(default_factory=lambda: array("Q"))
    face_ids: array[int] = field(default_factory=lambda: array("q"))  # index ids, in listing order
    owner_digests: array[int] = field(default_factory=lambda: array("Q"))  # the face's subject id
    record_digests: array[int] = field(default_factory=lambda: array("Q"))  # public id, scores, times
    embedding_digests: array[int] = field(default_factory=lambda: array("Q"))  # float32 bytes
    crop_ids: array[int] = field(default_factory=lambda: array("q"))  # index ids, ascending
    crop_digests: array[int] = field(default_factory=lambda: array("Q"))  # pixels, shape, landmarks

    @property
    def crops(self) -> int:
        return len(self.crop_ids)

    def embeddings_sha256(self) -> str:
        return _ordered_sha256(self.face_ids, self.embedding_digests)

    def crops_sha256(self) -> str:
        return _ordered_sha256(self.crop_ids, self.crop_digests)


def _ordered_sha256(ids: array[int], digests: array[int]) -> str:
    """SHA-256 over (index id, digest) pairs ordered by index id: the same on both sides iff all match."""
    id_array = np.frombuffer(ids, dtype=np.int64) if len(ids) else np.empty(0, np.int64)
    digest_array = np.frombuffer(digests, dtype=np.uint64) if len(digests) else np.empty(0, np.uint64)
    order = np.argsort(id_array, kind="stable")
    pairs = np.stack([id_array[order].astype("<i8").view("<u8"), digest_array[order].astype("<u8")], axis=1)
    return hashlib.sha256(pairs.tobytes()).hexdigest()


def _subjects(store: GalleryStore, page_size: int) -> Iterator[Subject]:
    cursor: str | None = None
    while True:
        page = store.list_subjects(cursor, limit=page_size)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _embedding_bytes(embedding: FloatArray) -> bytes:
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def fingerprint(store: GalleryStore, page_size: int = DEFAULT_BATCH_SIZE) -> GalleryFingerprint:
    """Every subject, face and crop of ``store`` as digests (both galleries are read the same way)."""
    counts = store.counts()
    result = GalleryFingerprint(subjects=counts.subjects, faces=counts.faces)
    for subject in _subjects(store, page_size):
        result.subject_ids.append(subject.id)
        result.subject_digests.append(
            _hash64(
                subject.name, subject.metadata, subject.created_at, subject.updated_at, subject.face_count
            )
        )
        records = store.list_faces(subject.id)
        embeddings = store.subject_embeddings(subject.id)  # in index-id order, as list_faces
        owner = _hash64(subject.id)
        for record, embedding in zip(records, embeddings, strict=True):
            result.face_ids.append(record.index_id)
            result.owner_digests.append(
                owner if record.subject_id == subject.id else _hash64(record.subject_id)
            )
            result.record_digests.append(
                _hash64(
                    record.id,
                    record.pack_id,
                    repr(float(record.det_score)),
                    {key: repr(float(value)) for key, value in record.quality.items()},
                    record.created_at,
                    record.has_crop,
                )
            )
            result.embedding_digests.append(_bytes64(_embedding_bytes(embedding)))
    for batch in store.iter_crops(page_size):
        for index_id, crop in batch:
            image = np.ascontiguousarray(crop.image, dtype=np.uint8)
            landmarks = np.ascontiguousarray(crop.landmarks, dtype="<f4")
            result.crop_ids.append(index_id)
            result.crop_digests.append(
                _bytes64(repr(image.shape).encode() + image.tobytes() + landmarks.tobytes())
            )
    return result


def _examples(ids: Sequence[object]) -> str:
    shown = ", ".join(f"#{i}" if isinstance(i, int) else str(i) for i in ids[:_SHOWN_PER_DIFFERENCE])
    more = f" and {len(ids) - _SHOWN_PER_DIFFERENCE} more" if len(ids) > _SHOWN_PER_DIFFERENCE else ""
    return shown + more


def _keyed(ids: array[int], *columns: array[int]) -> dict[int, tuple[int, ...]]:
    """Index id -> its digests (one per column)."""
    return {int(row[0]): tuple(row[1:]) for row in zip(ids, *columns, strict=True)}


def _differences_by_key(
    what: str, source: dict[int, tuple[int, ...]], target: dict[int, tuple[int, ...]], fields: Sequence[str]
) -> list[str]:
    found: list[str] = []
    missing = sorted(source.keys() - target.keys())
    extra = sorted(target.keys() - source.keys())
    if missing:
        found.append(f"{len(missing)} {what} missing from the target: {_examples(missing)}")
    if extra:
        found.append(f"{len(extra)} {what} in the target that the source lacks: {_examples(extra)}")
    common = sorted(source.keys() & target.keys())
    for position, name in enumerate(fields):
        differing = [key for key in common if source[key][position] != target[key][position]]
        if differing:
            found.append(f"{len(differing)} {what} with a different {name}: {_examples(differing)}")
    return found


def compare(source: GalleryFingerprint, target: GalleryFingerprint) -> list[str]:
    """What differs between two fingerprints, one line per kind of difference (empty: identical)."""
    found: list[str] = []
    for what, left, right in (
        ("subjects", source.subjects, target.subjects),
        ("faces", source.faces, target.faces),
        ("crops", source.crops, target.crops),
    ):
        if left != right:
            found.append(f"{what}: {left} in the source, {right} in the target")
    source_subjects = dict(zip(source.subject_ids, source.subject_digests, strict=True))
    target_subjects = dict(zip(target.subject_ids, target.subject_digests, strict=True))
    missing = [s for s in source.subject_ids if s not in target_subjects]
    extra = [s for s in target.subject_ids if s not in source_subjects]
    changed = [
        s for s in source.subject_ids if s in target_subjects and source_subjects[s] != target_subjects[s]
    ]
    if missing:
        found.append(f"{len(missing)} subjects missing from the target: {_examples(missing)}")
    if extra:
        found.append(f"{len(extra)} subjects in the target that the source lacks: {_examples(extra)}")
    if changed:
        found.append(
            f"{len(changed)} subjects with a different name, metadata, time or face count: "
            f"{_examples(changed)}"
        )
    if not (missing or extra) and source.subject_ids != target.subject_ids:
        found.append("the subjects are listed in another order (pagination order differs)")
    found += _differences_by_key(
        "faces",
        _keyed(source.face_ids, source.owner_digests, source.record_digests, source.embedding_digests),
        _keyed(target.face_ids, target.owner_digests, target.record_digests, target.embedding_digests),
        ("subject", "id, pack, score, quality, time or crop flag", "embedding"),
    )
    found += _differences_by_key(
        "crops",
        _keyed(source.crop_ids, source.crop_digests),
        _keyed(target.crop_ids, target.crop_digests),
        ("image or landmarks",),
    )
    return found


# ---------------------------------------------------------------------- API keys


def _source_keys(data_dir: Path) -> list[StoredKey]:
    """The data dir's keys with their hashes (none when the key file was never made); read-only."""
    store = SqliteKeyStore.in_data_dir(data_dir)
    if not store.path.exists():
        return []
    store.check()  # a damaged or tampered file is refused (KeyStoreCorruptError), not copied
    return store.export_keys()


def compare_keys(source: Sequence[StoredKey], target: Sequence[StoredKey]) -> list[str]:
    left = {key.record.id: key for key in source}
    right = {key.record.id: key for key in target}
    found: list[str] = []
    missing = sorted(left.keys() - right.keys())
    extra = sorted(right.keys() - left.keys())
    if missing:
        found.append(f"{len(missing)} API keys missing from the target: {_examples(missing)}")
    if extra:
        found.append(f"{len(extra)} API keys in the target that the source lacks: {_examples(extra)}")
    changed = sorted(key_id for key_id in left.keys() & right.keys() if left[key_id] != right[key_id])
    if changed:
        found.append(
            f"{len(changed)} API keys with a different hash, name, scopes, collections or time: "
            f"{_examples(changed)}"
        )
    return found


# ---------------------------------------------------------------------- the migration


@dataclass(frozen=True)
class MigrationReport:
    source: Path  # the gallery file
    target: str  # the database URL, password hidden
    pack: PackPin
    source_gallery: GalleryFingerprint
    target_gallery: GalleryFingerprint
    source_keys: int
    target_keys: int
    differences: tuple[str, ...]  # empty: verified
    quarantined_left: int  # faces a repair moved aside in the source (not searchable, not copied)
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> list[str]:
        """The lines ``face-service migrate`` prints: source and target side by side."""
        source, target = self.source_gallery, self.target_gallery
        rows = [
            ("subjects", str(source.subjects), str(target.subjects)),
            ("faces", str(source.faces), str(target.faces)),
            ("crops", str(source.crops), str(target.crops)),
            ("embeddings sha256", source.embeddings_sha256()[:16], target.embeddings_sha256()[:16]),
            ("crops sha256", source.crops_sha256()[:16], target.crops_sha256()[:16]),
            ("API keys", str(self.source_keys), str(self.target_keys)),
        ]
        lines = [
            f"{self.source} -> {self.target} (pack {self.pack.pack_id}, {self.pack.embedding_size}-d, "
            f"{self.seconds:.1f} s)",
            f"  {'':<18}{'source':>18}{'target':>18}",
        ]
        lines += [f"  {name:<18}{left:>18}{right:>18}" for name, left, right in rows]
        if self.quarantined_left:
            lines.append(f"  not copied: {self.quarantined_left} quarantined faces (kept in the source file)")
        return lines


def hide_password(text: str, url: str) -> str:
    """``text`` with ``url``'s password hidden: in URL form, as ``password=``, and as the bare value."""
    hidden = redact_url(text)
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:  # not a parseable URL: the pattern redaction is what there is
        password = None
    return hidden.replace(str(password), "***") if password else hidden


# What a failed step raises: turned into one MigrationError with the password hidden.
_STEP_ERRORS: tuple[type[Exception], ...] = (
    GalleryError,
    KeyStoreError,
    DatabaseUnavailableError,
    psycopg.Error,
    sqlite3.Error,
    OSError,
    ValueError,  # a row that cannot be encoded again (a crop, landmarks)
)

EMPTY_DATABASE_ADVICE = (
    "migrate only into an empty database: drop and recreate it (`dropdb` then `createdb`), or give "
    "--to another, empty one, and run migrate again"
)

# What a step that failed leaves behind, and what to do about it.
_AFTER_A_FAILED = {
    "check": "nothing was copied",
    "copy": f"the database now holds part of a copy: {EMPTY_DATABASE_ADVICE}",
    "verify": f"the copy was made but could not be verified: {EMPTY_DATABASE_ADVICE}",
}


@dataclass
class _BatchCopier:
    """Collects subjects and faces and writes them with ``import_batch``, one transaction per batch."""

    target: PostgresGalleryStore
    batch_size: int
    total_faces: int
    progress: Progress | None
    subjects: list[Subject] = field(default_factory=list)
    faces: list[ImportedFace] = field(default_factory=list)
    copied_faces: int = 0

    def add_subject(self, subject: Subject) -> None:
        self.subjects.append(subject)
        if len(self.subjects) >= self.batch_size:
            self.flush()

    def add_face(self, face: ImportedFace) -> None:
        self.faces.append(face)
        if len(self.faces) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.subjects and not self.faces:
            return
        # A subject is written no later than its first face: its batch, or an earlier one.
        self.target.import_batch(self.subjects, self.faces)
        self.copied_faces += len(self.faces)
        self.subjects, self.faces = [], []
        if self.progress is not None:
            self.progress(self.copied_faces, self.total_faces)


def _copy_gallery(source: GalleryStore, copier: _BatchCopier, page_size: int) -> None:
    for subject in _subjects(source, page_size):
        copier.add_subject(subject)
        records = source.list_faces(subject.id)
        embeddings = source.subject_embeddings(subject.id)  # index-id order, as list_faces
        for record, embedding in zip(records, embeddings, strict=True):
            crop = source.get_crop(record.id) if record.has_crop else None
            copier.add_face(ImportedFace(record, np.asarray(embedding, dtype=np.float32), crop))
    copier.flush()


def _open_source(data_dir: Path) -> OpenedStore:
    try:
        return open_sqlite_store(data_dir, StoreOptions(), must_exist=True)
    except GalleryLockedError as error:
        raise MigrationError(
            f"stop the service (every process using {data_dir}) before migrating: {error}"
        ) from None


def _checked_source(source: GalleryStore, data_dir: Path) -> PackPin:
    pin = source.pinned_pack()
    if pin is None:
        raise MigrationError(
            f"the gallery in {data_dir} is not pinned to a pack (nothing was ever enrolled): there is "
            "nothing to migrate; start the service with FACE_DATABASE_URL instead"
        )
    problem = source.quick_check()
    if problem is not None:
        raise MigrationError(
            f"the source gallery fails its integrity check ({problem}): {repair_hint(data_dir)}"
        )
    bad = source.bad_rows()
    if bad:
        shown = "; ".join(f"face #{row.index_id}: {row.reason}" for row in bad[:_SHOWN_PER_DIFFERENCE])
        raise MigrationError(
            f"the source gallery holds {len(bad)} unusable faces ({shown}): {repair_hint(data_dir)}"
        )
    return pin


def _checked_target(target: PostgresGalleryStore, keys: PostgresKeyStore, pin: PackPin) -> None:
    """Refuse a target that holds anything, or is pinned to another pack: no merging into a live gallery."""
    counts = target.counts()
    if counts.subjects or counts.faces:
        raise MigrationError(
            f"the database at {target.url} already holds a gallery ({counts.subjects} subjects, "
            f"{counts.faces} faces; a migrate stopped part way leaves some behind): {EMPTY_DATABASE_ADVICE}"
        )
    pinned = target.pinned_pack()
    if pinned is not None and (pinned.pack_id, pinned.embedding_size) != (pin.pack_id, pin.embedding_size):
        raise MigrationError(
            f"the database at {target.url} is pinned to pack {pinned.pack_id!r} ({pinned.embedding_size}-d), "
            f"the source gallery to {pin.pack_id!r} ({pin.embedding_size}-d): {EMPTY_DATABASE_ADVICE}"
        )
    existing = keys.count()
    if existing:
        raise MigrationError(
            f"the database at {target.url} already holds {existing} API keys (a service started on it "
            f"makes a bootstrap admin key): {EMPTY_DATABASE_ADVICE}"
        )


@dataclass(frozen=True)
class _Sides:
    """The open source and target of one migration, checked (the source sound, the target empty)."""

    data_dir: Path
    url: str
    source: SqliteGalleryStore
    target: PostgresGalleryStore
    target_keys: PostgresKeyStore
    pin: PackPin
    source_keys: list[StoredKey]


def _open_sides(stack: contextlib.ExitStack, data_dir: Path, url: str, timeout_s: float) -> _Sides:
    """Open and check both sides (closed by ``stack``); nothing is written yet, only the target's schema."""
    opened_source = _open_source(data_dir)
    stack.callback(opened_source.close)
    source = opened_source.store
    if not isinstance(source, SqliteGalleryStore):
        raise MigrationError(f"the sqlite backend opened a {type(source).__name__}, not a gallery file store")
    pin = _checked_source(source, data_dir)
    source_keys = _source_keys(data_dir)
    options = StoreOptions(
        backend="postgresql", database_url=url, pool_min_size=1, pool_max_size=2, timeout_s=timeout_s
    )
    opened_target = open_postgres_store(data_dir, options, must_exist=False)
    stack.callback(opened_target.close)
    target = opened_target.store
    if not isinstance(target, PostgresGalleryStore):
        raise MigrationError(f"the postgresql backend opened a {type(target).__name__}, not a database store")
    target_keys = PostgresKeyStore.open(url, PoolOptions(1, 2, timeout_s))
    stack.callback(target_keys.close)
    _checked_target(target, target_keys, pin)
    return _Sides(data_dir, url, source, target, target_keys, pin, source_keys)


def _copy(sides: _Sides, batch_size: int, progress: Progress | None) -> int:
    """Pin the target, copy the gallery and the keys; returns the largest index id the source gave out."""
    sides.target.pin(sides.pin.pack_id, sides.pin.embedding_size)
    copier = _BatchCopier(sides.target, batch_size, sides.source.counts().faces, progress)
    _copy_gallery(sides.source, copier, batch_size)
    last_index_id = sides.source.last_index_id()  # deleted faces' ids too: never to be handed out again
    sides.target.reserve_index_ids(last_index_id)
    sides.target_keys.import_keys(sides.source_keys)
    return last_index_id


def _verify(sides: _Sides, last_index_id: int, batch_size: int, started: float) -> MigrationReport:
    """Read both sides back and compare everything (see the module docstring)."""
    source_print = fingerprint(sides.source, batch_size)
    target_print = fingerprint(sides.target, batch_size)
    target_keys = sides.target_keys.export_keys()
    differences = compare(source_print, target_print) + compare_keys(sides.source_keys, target_keys)
    target_last = sides.target.last_index_id()
    if target_last < last_index_id:
        differences.append(
            f"index ids: the source gave out ids up to {last_index_id}, the target's sequence is at "
            f"{target_last} (ids of deleted faces would be reused)"
        )
    return MigrationReport(
        source=sides.data_dir / GALLERY_FILE,
        target=hide_password(sides.url, sides.url),
        pack=sides.pin,
        source_gallery=source_print,
        target_gallery=target_print,
        source_keys=len(sides.source_keys),
        target_keys=len(target_keys),
        differences=tuple(differences),
        quarantined_left=sides.source.quarantined_count(),
        seconds=time.perf_counter() - started,
    )


def migrate_to_postgres(
    data_dir: Path,
    database_url: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_s: float = 10.0,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy the gallery and API keys of ``data_dir`` into the empty database at ``database_url``, verified.

    Raises MigrationError when refused (target not empty, another pack, service running, damaged source)
    or when a step fails; returns the report, whose ``differences`` are empty only when the copy matches.
    """
    if batch_size < 1:
        raise MigrationError(f"the batch size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    stage = "check"
    try:
        with contextlib.ExitStack() as stack:
            sides = _open_sides(stack, Path(data_dir), database_url, timeout_s)
            stage = "copy"
            last_index_id = _copy(sides, batch_size, progress)
            stage = "verify"
            return _verify(sides, last_index_id, batch_size, started)
    except MigrationError as error:
        raise MigrationError(hide_password(str(error), database_url)) from None
    except _STEP_ERRORS as error:
        what = str(error).strip() or type(error).__name__
        message = f"{what}; {_AFTER_A_FAILED[stage]} (the source is unchanged)"
        raise MigrationError(hide_password(message, database_url)) from None
