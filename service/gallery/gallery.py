"""Gallery: a store (the truth) and a search index derived from it, changed together under one lock.

Consistency rule, for every backend: the store is the source of truth; the index is derived from
it. Writers commit to the store first, then update the index, both while holding the gallery's
lock; readers search while holding it, so a reader never sees a face that is not committed and
never misses one this process committed. On any doubt the index is rebuilt from the store: at every
start, and whenever an index update fails after a commit (before the lock is released).

A shared backend (PostgreSQL, several replicas) brings a change feed: then the index follows the
feed instead, in sequence order, both after this replica's own writes (read-your-writes) and from a
follower thread for other replicas' writes (LISTEN/NOTIFY, polling as the fallback). A gap in the
feed, a wholesale re-embedding or a failed update rebuilds the index from a consistent snapshot.
Search results are resolved through the store, so a face deleted on any replica is never returned,
even before the feed removes it here. A backend that searches by itself (pgvector) needs neither.

Embeddings arrive unit-norm (the embedder owns that); the gallery checks shape, dtype and size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from service.gallery.backends import open_store, store_options
from service.gallery.change_follower import ChangeFollower
from service.gallery.faiss_index import FaissIndex
from service.gallery.index import MISSING_ID, IndexKind, IndexOptions, SearchIndex
from service.gallery.store import (
    ChangeFeed,
    EmbeddingSizeError,
    FaceChange,
    FaceRecord,
    FaceRef,
    GalleryCounts,
    GalleryError,
    GalleryLock,
    GalleryStore,
    IntArray,
    NewFace,
    OpenedStore,
    PackMismatchError,
    PortableFace,
    StoredCrop,
    StoreUnavailableError,
    Subject,
    SubjectFilter,
    SubjectPage,
)
from service.pipeline.types import FloatArray
from service.private_files import ensure_private_dir
from service.settings import SubjectScore

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

CATCH_UP_BATCH = 1000  # feed entries read per round trip while catching up


class EmptySubjectError(GalleryError, LookupError):
    """The subject has no enrolled faces to compare with."""


class IndexUnavailableError(GalleryError):
    """The search index could not be rebuilt from the store; searching would miss faces."""


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    name: str
    similarity: float  # the subject's score (max or mean of its faces' cosine similarities)
    face_id: str  # the subject's best-matching face


@dataclass(frozen=True)
class GallerySizes:
    """Store counts and index size read together (under the gallery lock).

    faces == indexed_faces for a gallery only this process writes; a replica of a shared gallery may
    trail by the changes it has not applied yet (see ``ReplicationStatus``).
    """

    subjects: int
    faces: int
    indexed_faces: int


@dataclass(frozen=True)
class ReplicationStatus:
    """Where this replica's index stands in the shared store's change feed."""

    applied_seq: int  # the last change applied to this replica's index
    database_seq: int  # the last change committed to the shared store
    lag_changes: int
    lag_s: float  # age of the oldest change not applied yet (0.0 when caught up)
    following: bool  # False while the follower cannot reach the database


def verify_store(store: GalleryStore) -> None:
    """Raise the store's damage error when its integrity check fails (before anything reads it)."""
    problem = store.quick_check()
    if problem is not None:
        raise store.damaged(f"integrity check: {problem}")


def _searchable_embeddings(store: GalleryStore) -> tuple[IntArray, FloatArray]:
    """All (ids, embeddings), refusing rows that would poison the index (wrong length, NaN)."""
    ids, vectors, bad = store.searchable_embeddings()
    if bad:
        shown = "; ".join(f"face #{row.index_id}: {row.reason}" for row in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise store.damaged(f"{len(bad)} unusable face rows ({shown}{more})")
    return ids, vectors


class Gallery:
    """Subjects and their faces, searchable. Thread-safe; open with ``Gallery.open``."""

    def __init__(
        self,
        store: GalleryStore,
        index: SearchIndex,
        *,
        subject_score: SubjectScore = SubjectScore.MAX,
        dir_lock: GalleryLock | None = None,
        feed: ChangeFeed | None = None,
        applied_seq: int = 0,
    ) -> None:
        """``feed``: the shared store's change feed this index follows (from ``applied_seq`` on)."""
        pin = store.pinned_pack()
        if pin is None:
            raise GalleryError("the store is not pinned to a pack")
        self._store = store
        self._index = index
        self._subject_score = subject_score
        self._dir_lock = dir_lock
        self._pack_id = pin.pack_id
        self._embedding_size = pin.embedding_size
        self._lock = threading.RLock()
        self._index_stale = False
        self._feed = feed
        self._applied_seq = applied_seq
        self._follower: ChangeFollower | None = None
        self._repinned_to: str | None = None  # another pack re-embedded the shared gallery meanwhile

    @classmethod
    def open(cls, data_dir: Path, pack_id: str, embedding_size: int, settings: Settings) -> Gallery:
        """Open (or create) the gallery, pinned to ``pack_id``; builds the index from the store.

        The store is the SQLite file in ``data_dir``, or the shared database ``settings`` name.
        """
        data_dir = ensure_private_dir(Path(data_dir))
        opened = open_store(data_dir, store_options(settings))
        try:
            verify_store(opened.store)
            opened.store.pin(pack_id, embedding_size)
            index, feed, applied_seq = _initial_index(opened, embedding_size, settings)
        except BaseException:
            opened.close()
            raise
        logger.info("gallery: %d faces, %s index, change %d", index.size, index.kind, applied_seq)
        gallery = cls(
            opened.store,
            index,
            subject_score=settings.subject_score,
            dir_lock=opened.lock,
            feed=feed,
            applied_seq=applied_seq,
        )
        if feed is not None:
            gallery.follow(settings.feed_poll_interval_s)
        elif opened.feed is not None:  # searched in the database: the feed has nothing to feed
            opened.feed.close()
        return gallery

    def follow(self, poll_interval_s: float) -> None:
        """Start the thread that applies other replicas' changes (a shared store only)."""
        if self._feed is None or self._follower is not None:
            return
        self._follower = ChangeFollower(self._feed, self.catch_up, poll_interval_s=poll_interval_s)
        self._follower.start()

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        with self._lock:
            try:
                if self._feed is not None:
                    self._feed.close()
                self._store.close()
            finally:
                if self._dir_lock is not None:
                    self._dir_lock.release()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ facts

    @property
    def pack_id(self) -> str:
        return self._pack_id

    @property
    def embedding_size(self) -> int:
        return self._embedding_size

    @property
    def index_kind(self) -> IndexKind:
        return self._index.kind

    @property
    def index_size(self) -> int:
        with self._lock:
            return self._index.size

    def counts(self) -> GalleryCounts:
        return self._store.counts()

    def change_seq(self) -> int:
        """The store's change sequence: committed write transactions so far."""
        return self._store.change_seq()

    @property
    def follows_feed(self) -> bool:
        """Whether this gallery's index follows a shared store's change feed (a FAISS replica)."""
        return self._feed is not None

    def replication(self) -> ReplicationStatus | None:
        """This replica's place in the shared store's feed; None for a gallery no one else writes."""
        if self._feed is None:
            return None
        applied = self._applied_seq  # an int read without the lock: a catch-up may hold it a while
        database_seq = self._store.change_seq()
        lag_s = self._feed.oldest_unapplied_age_s(applied) if database_seq > applied else 0.0
        following = self._follower is None or self._follower.failing_since is None
        return ReplicationStatus(applied, database_seq, max(0, database_seq - applied), lag_s, following)

    def sizes(self) -> GallerySizes:
        """Subjects and faces in the store and faces in the index, as one consistent snapshot."""
        with self._lock:
            counts = self._store.counts()
            return GallerySizes(counts.subjects, counts.faces, self._index.size)

    # ------------------------------------------------------------------ subjects (store only)

    def create_subject(
        self, name: str, metadata: Mapping[str, Any] | None = None, *, unique_name: bool = False
    ) -> Subject:
        return self._store.create_subject(name, metadata, unique_name=unique_name)

    def get_subject(self, subject_id: str) -> Subject:
        return self._store.get_subject(subject_id)

    def list_subjects(
        self, cursor: str | None = None, limit: int = 50, where: SubjectFilter | None = None
    ) -> SubjectPage:
        return self._store.list_subjects(cursor, limit, where)

    def update_subject(
        self,
        subject_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        unique_name: bool = False,
    ) -> Subject:
        return self._store.update_subject(subject_id, name=name, metadata=metadata, unique_name=unique_name)

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        return self._store.list_faces(subject_id)

    def get_face(self, face_id: str) -> FaceRecord:
        return self._store.get_face(face_id)

    def get_crop(self, face_id: str) -> StoredCrop | None:
        return self._store.get_crop(face_id)

    def subject_embeddings(self, subject_id: str) -> FloatArray:
        """(n, D) embeddings of one subject's faces, in ``list_faces`` order (index-id order)."""
        return self._store.subject_embeddings(subject_id)

    def existing_ids(
        self, subject_ids: Collection[str], face_ids: Collection[str]
    ) -> tuple[set[str], set[str]]:
        return self._store.existing_ids(subject_ids, face_ids)

    # ------------------------------------------------------------------ changes (store + index)

    def add_faces(self, subject_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Commit all faces (or none), then make them searchable; returns once both are done."""
        with self._lock:
            self._refuse_if_repinned()
            records = self._store.add_faces(subject_id, faces)
            if records:
                self._update_index(
                    lambda: self._index.add(
                        [record.index_id for record in records],
                        np.stack([np.asarray(face.embedding, dtype=np.float32) for face in faces]),
                    )
                )
        return records

    def delete_subject(self, subject_id: str) -> list[FaceRef]:
        with self._lock:
            removed = self._store.delete_subject(subject_id)
            if removed:
                self._update_index(lambda: self._index.remove([face.index_id for face in removed]))
        return removed

    def delete_face(self, face_id: str, subject_id: str | None = None) -> FaceRef:
        with self._lock:
            removed = self._store.delete_face(face_id, subject_id)
            self._update_index(lambda: self._index.remove([removed.index_id]))
        return removed

    def merge_subject(self, source_id: str, target_id: str) -> Subject:
        """Merge ``source_id`` into ``target_id`` (the store's rule); returns the target after it.

        Under the lock, as a delete: a mean-score search never sees a candidate vanish mid-way. The
        index holds the same faces afterwards (hits resolve to subjects through the store); with a
        feed it moves past the change, so this replica's applied sequence stays current.
        """
        with self._lock:
            merged = self._store.merge_subject(source_id, target_id)
            self._update_index(lambda: None)
        return merged

    def move_face(self, face_id: str, subject_id: str) -> FaceRecord:
        """Make one face ``subject_id``'s (the index keeps it: hits resolve through the store)."""
        with self._lock:
            moved = self._store.move_face(face_id, subject_id)
            self._update_index(lambda: None)
        return moved

    def import_faces(self, subjects: Sequence[Subject], faces: Iterable[PortableFace]) -> list[FaceRecord]:
        """Commit imported subjects and faces in one store transaction (``import_gallery``: all or
        nothing), then make the faces searchable; the lock is held throughout, as for ``add_faces``."""
        embeddings: list[FloatArray] = []

        def kept() -> Iterator[PortableFace]:
            for face in faces:
                embeddings.append(np.asarray(face.embedding, dtype=np.float32))
                yield face

        with self._lock:
            self._refuse_if_repinned()
            records = self._store.import_gallery(subjects, kept())
            if records:
                self._update_index(
                    lambda: self._index.add([record.index_id for record in records], np.stack(embeddings))
                )
        return records

    def rebuild_index(self) -> None:
        with self._lock:
            self._rebuild_from_store()

    def _update_index(self, change: Callable[[], object]) -> None:
        """Apply an index change after a commit; on failure rebuild from the store (the rule above).

        With a feed, the change is applied from the feed instead, in order after any other replica's
        earlier ones. The write is committed either way: if the database went away just after the
        commit, the follower applies it once the database answers again.
        """
        if self._feed is not None:
            try:
                self._catch_up_locked(self._feed)
            except StoreUnavailableError as error:
                logger.warning("committed, but the index could not follow the feed yet: %s", error)
            return
        try:
            if self._index_stale:
                self._rebuild_from_store()
            else:
                change()
        except Exception:
            logger.exception("index update failed after commit; rebuilding the index from the store")
            self._rebuild_from_store()

    def _rebuild_from_store(self) -> None:
        try:
            if self._feed is not None:
                snapshot = self._feed.snapshot()
                self._index.rebuild(snapshot.ids, snapshot.embeddings)
                self._applied_seq = snapshot.seq
            else:
                ids, vectors = self._store.all_embeddings()
                self._index.rebuild(ids, vectors)
        except StoreUnavailableError:
            self._index_stale = True
            raise
        except Exception as error:
            self._index_stale = True
            raise IndexUnavailableError(
                f"could not rebuild the face index from the store: {error}"
            ) from error
        self._index_stale = False

    # ------------------------------------------------------------------ following a shared store

    def catch_up(self) -> int:
        """Apply every change committed to the shared store since the last one applied here."""
        with self._lock:
            if self._feed is not None:
                self._catch_up_locked(self._feed)
            return self._applied_seq

    def _catch_up_locked(self, feed: ChangeFeed) -> None:
        if self._index_stale:
            self._rebuild_from_store()
        while True:
            changes = feed.changes_since(self._applied_seq, CATCH_UP_BATCH)
            if changes is None:
                logger.warning(
                    "change %d is gone from the feed; rebuilding from a snapshot", self._applied_seq
                )
                self._rebuild_from_store()
                continue
            try:
                self._apply(changes)
            except StoreUnavailableError:
                raise
            except Exception:
                logger.exception("applying changes failed; rebuilding the index from a snapshot")
                self._rebuild_from_store()
            if len(changes) < CATCH_UP_BATCH:
                return

    def _apply(self, changes: Sequence[FaceChange]) -> None:
        for change in changes:
            if change.seq <= self._applied_seq:
                continue  # a rebuild meanwhile already covers it
            if change.reset:
                self._note_repin()
                self._rebuild_from_store()  # a snapshot at or past change.seq
                continue
            if len(change.removed_ids):
                self._index.remove(change.removed_ids)
            if len(change.added_ids):
                self._index.add(change.added_ids, change.added)
            self._applied_seq = change.seq

    def _note_repin(self) -> None:
        pin = self._store.pinned_pack()
        if pin is not None and pin.pack_id != self._pack_id:
            logger.error(
                "the shared gallery was re-embedded with pack %s; this replica runs %s",
                pin.pack_id,
                self._pack_id,
            )
            self._repinned_to = pin.pack_id

    def _refuse_if_repinned(self) -> None:
        """A replica whose pack no longer matches the shared gallery must not compare embeddings."""
        if self._repinned_to is not None:
            raise PackMismatchError(
                "the shared gallery",
                self._repinned_to,
                self._pack_id,
                advice="restart this replica with the pack the gallery was re-embedded with",
            )

    # ------------------------------------------------------------------ search

    def identify(
        self,
        embeddings: FloatArray,
        top_k: int,
        threshold: float | None = None,
        subject_score: SubjectScore | None = None,
    ) -> list[list[Candidate]]:
        """For each query row, up to ``top_k`` subjects, best first, scoring at least ``threshold``."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        queries = self._as_rows(embeddings)
        mode = subject_score or self._subject_score
        floor = -np.inf if threshold is None else float(threshold)
        # Subjects to gather per query: exact for max; for mean, a wider pool re-scored over all faces.
        wanted = top_k if mode is SubjectScore.MAX else 2 * top_k + 8
        with self._lock:
            self._refuse_if_repinned()
            if self._index_stale:
                self._rebuild_from_store()
            hits = self._subject_hits(queries, wanted, floor)
            if mode is SubjectScore.MEAN:
                hits = [self._mean_scores(query, row) for query, row in zip(queries, hits, strict=True)]
        results: list[list[Candidate]] = []
        for row in hits:
            ranked = sorted(row, key=lambda c: c.similarity, reverse=True)
            results.append([c for c in ranked if c.similarity >= floor][:top_k])
        return results

    def _as_rows(self, embeddings: FloatArray) -> FloatArray:
        """(M, D) float32 from (D,) or (M, D); any other shape is the caller's mistake."""
        rows = np.asarray(embeddings, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self._embedding_size:
            raise EmbeddingSizeError(
                f"embeddings of shape {rows.shape}; this gallery holds {self._embedding_size}-d embeddings"
            )
        return rows

    def _subject_hits(self, queries: FloatArray, wanted: int, floor: float) -> list[list[Candidate]]:
        """Per query, the best face of each subject among enough face hits to hold ``wanted`` subjects.

        Face hits come best first, so once ``wanted`` distinct subjects are seen (or a hit falls below
        the threshold, or the index is exhausted), no unseen subject can outrank them on max score.
        """
        total = self._index.size
        if total == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        fetch = min(total, max(4 * wanted, wanted + 16))
        while True:
            scores, ids = self._index.search(queries, fetch)
            owners = self._store.owners(ids.ravel().tolist())
            rows: list[list[Candidate]] = []
            complete = True
            for row_scores, row_ids in zip(scores, ids, strict=True):
                best: dict[str, Candidate] = {}
                for score, index_id in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                    owner = owners.get(index_id) if index_id != MISSING_ID else None
                    if owner is not None and owner.subject_id not in best:
                        best[owner.subject_id] = Candidate(
                            owner.subject_id, owner.subject_name, score, owner.face_id
                        )
                rows.append(list(best.values()))
                lowest = float(row_scores[-1])
                if len(best) < wanted and lowest >= floor and int(row_ids[-1]) != MISSING_ID:
                    complete = False
            if complete or fetch >= total:
                return rows
            fetch = min(total, fetch * 4)

    def _mean_scores(self, query: FloatArray, candidates: list[Candidate]) -> list[Candidate]:
        rescored = []
        for candidate in candidates:
            similarities = self._store.subject_embeddings(candidate.subject_id) @ query
            rescored.append(
                Candidate(candidate.subject_id, candidate.name, float(similarities.mean()), candidate.face_id)
            )
        return rescored

    def verify_against_subject(
        self, embedding: FloatArray, subject_id: str, subject_score: SubjectScore | None = None
    ) -> float:
        """Cosine similarity of ``embedding`` to a subject (max or mean over its faces)."""
        rows = self._as_rows(embedding)
        if len(rows) != 1:
            raise EmbeddingSizeError(f"verify takes one embedding, got {len(rows)}")
        query = rows[0]
        self._refuse_if_repinned()
        stored = self._store.subject_embeddings(subject_id)
        if len(stored) == 0:
            raise EmptySubjectError(f"subject {subject_id!r} has no enrolled faces")
        similarities = stored @ query
        mode = subject_score or self._subject_score
        return float(similarities.max() if mode is SubjectScore.MAX else similarities.mean())


def _initial_index(
    opened: OpenedStore, embedding_size: int, settings: Settings
) -> tuple[SearchIndex, ChangeFeed | None, int]:
    """The index to search, the feed it follows (if any) and the change it reflects, at open."""
    if opened.in_database_search is not None:  # the database searches: nothing to build or follow
        return opened.in_database_search(embedding_size), None, opened.store.change_seq()
    options = IndexOptions.from_settings(settings)
    if opened.feed is not None:
        started = time.monotonic()
        snapshot = opened.feed.snapshot()
        index = FaissIndex.build(embedding_size, snapshot.ids, snapshot.embeddings, options)
        logger.info(
            "index built from a snapshot at change %d in %.1f s", snapshot.seq, time.monotonic() - started
        )
        return index, opened.feed, snapshot.seq
    ids, vectors = _searchable_embeddings(opened.store)
    return FaissIndex.build(embedding_size, ids, vectors, options), None, opened.store.change_seq()
