"""Gallery: a store (the truth) and a search index derived from it, changed together under one lock.

Consistency rule, for every backend: the store is the source of truth; the index is derived from
it. Writers commit to the store first, then update the index, both while holding the gallery's
lock; readers search while holding it, so a reader never sees a face that is not committed and
never misses one that is. On any doubt the index is rebuilt from the store: at every start, and
whenever an index update fails after a commit (before the lock is released).

Embeddings arrive unit-norm (the embedder owns that); the gallery checks shape, dtype and size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from service.gallery.backends import open_store, store_options
from service.gallery.faiss_index import FaissIndex
from service.gallery.index import MISSING_ID, IndexKind, IndexOptions, SearchIndex
from service.gallery.store import (
    EmbeddingSizeError,
    FaceRecord,
    FaceRef,
    GalleryCounts,
    GalleryError,
    GalleryLock,
    GalleryStore,
    IntArray,
    NewFace,
    StoredCrop,
    Subject,
    SubjectPage,
)
from service.pipeline.types import FloatArray
from service.private_files import ensure_private_dir
from service.settings import SubjectScore

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)


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
    """Store counts and index size read together (under the gallery lock): faces == indexed_faces."""

    subjects: int
    faces: int
    indexed_faces: int


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
    ) -> None:
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

    @classmethod
    def open(cls, data_dir: Path, pack_id: str, embedding_size: int, settings: Settings) -> Gallery:
        """Open (or create) the gallery of ``data_dir``, pinned to ``pack_id``; rebuilds the index."""
        data_dir = ensure_private_dir(Path(data_dir))
        opened = open_store(data_dir, store_options(settings))
        store = opened.store
        try:
            verify_store(store)
            store.pin(pack_id, embedding_size)
            ids, vectors = _searchable_embeddings(store)
            index = FaissIndex.build(embedding_size, ids, vectors, IndexOptions.from_settings(settings))
        except BaseException:
            opened.close()
            raise
        logger.info("gallery %s: %d faces, %s index", data_dir, index.size, index.kind)
        return cls(store, index, subject_score=settings.subject_score, dir_lock=opened.lock)

    def close(self) -> None:
        with self._lock:
            self._store.close()
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

    def sizes(self) -> GallerySizes:
        """Subjects and faces in the store and faces in the index, as one consistent snapshot."""
        with self._lock:
            counts = self._store.counts()
            return GallerySizes(counts.subjects, counts.faces, self._index.size)

    # ------------------------------------------------------------------ subjects (store only)

    def create_subject(self, name: str, metadata: Mapping[str, Any] | None = None) -> Subject:
        return self._store.create_subject(name, metadata)

    def get_subject(self, subject_id: str) -> Subject:
        return self._store.get_subject(subject_id)

    def list_subjects(self, cursor: str | None = None, limit: int = 50) -> SubjectPage:
        return self._store.list_subjects(cursor, limit)

    def update_subject(
        self, subject_id: str, *, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Subject:
        return self._store.update_subject(subject_id, name=name, metadata=metadata)

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        return self._store.list_faces(subject_id)

    def get_face(self, face_id: str) -> FaceRecord:
        return self._store.get_face(face_id)

    def get_crop(self, face_id: str) -> StoredCrop | None:
        return self._store.get_crop(face_id)

    # ------------------------------------------------------------------ changes (store + index)

    def add_faces(self, subject_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Commit all faces (or none), then make them searchable; returns once both are done."""
        with self._lock:
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

    def rebuild_index(self) -> None:
        with self._lock:
            self._rebuild_from_store()

    def _update_index(self, change: Callable[[], object]) -> None:
        """Apply an index change after a commit; on failure rebuild from the store (the rule above)."""
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
            ids, vectors = self._store.all_embeddings()
            self._index.rebuild(ids, vectors)
        except Exception as error:
            self._index_stale = True
            raise IndexUnavailableError(
                f"could not rebuild the face index from the store: {error}"
            ) from error
        self._index_stale = False

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
        stored = self._store.subject_embeddings(subject_id)
        if len(stored) == 0:
            raise EmptySubjectError(f"subject {subject_id!r} has no enrolled faces")
        similarities = stored @ query
        mode = subject_score or self._subject_score
        return float(similarities.max() if mode is SubjectScore.MAX else similarities.mean())
