"""The PostgreSQL gallery's schema, as versioned migrations (applied at start, see service/postgres).

Tables mirror the SQLite gallery's (meta, subjects, faces, face_crops), with embeddings in pgvector
``vector`` columns, plus the change feed:

- ``gallery_meta.change_seq`` is the change counter. Every write transaction increments it with
  ``UPDATE ... RETURNING`` first, so writers serialize on that row and sequence numbers commit in
  order, densely: a replica reading "after N" can never miss a transaction that commits late (a
  SEQUENCE would allow that).
- ``gallery_changes`` holds one row per write transaction: the index ids it added and removed, and
  whether it rewrote embeddings wholesale (``reset``). Old rows are trimmed; a replica behind the
  oldest row rebuilds from a snapshot.
- ``NOTIFY face_gallery_changes, '<seq>'`` is sent in the same transaction (delivered at commit).

Embeddings have the pack's size, known only at pin time, so the column is ``vector`` without a
dimension; the optional HNSW index (FACE_SEARCH=pgvector) is an expression index on
``embedding::vector(D)``, made when the gallery is pinned (``hnsw_index_sql``).

Migration 2 adds ``subjects.name_key`` (``store.name_key``: what name search and duplicate names
compare) with its index, and a GIN index on the metadata for the listing's key/value filters.
"""

from __future__ import annotations

from service.postgres.migrations import Migration

COMPONENT = "gallery"
NOTIFY_CHANNEL = "face_gallery_changes"
HNSW_INDEX = "faces_embedding_hnsw"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "gallery tables, embeddings as pgvector, the change feed",
        """
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE gallery_meta (
            singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
            change_seq BIGINT NOT NULL DEFAULT 0,
            pack_id TEXT,
            embedding_size INTEGER,
            schema_version INTEGER
        );
        INSERT INTO gallery_meta (singleton) VALUES (TRUE);
        CREATE TABLE subjects (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order: pagination key
            id TEXT NOT NULL UNIQUE,                               -- uuid4, the public id
            name TEXT NOT NULL,
            metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE faces (
            index_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the FAISS id; never reused
            id TEXT NOT NULL UNIQUE,
            subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
            embedding vector NOT NULL,
            pack_id TEXT NOT NULL,
            det_score DOUBLE PRECISION NOT NULL,
            quality JSONB NOT NULL DEFAULT '{}'::jsonb,
            created_at TEXT NOT NULL
        );
        CREATE INDEX faces_by_subject ON faces (subject_id, index_id);
        CREATE TABLE face_crops (
            index_id BIGINT PRIMARY KEY REFERENCES faces(index_id) ON DELETE CASCADE,
            png BYTEA NOT NULL,
            landmarks JSONB NOT NULL  -- [[x, y] * 5]: the face's 5 points in the crop
        );
        CREATE TABLE gallery_changes (
            seq BIGINT PRIMARY KEY,
            committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            added BIGINT[] NOT NULL DEFAULT '{}',
            removed BIGINT[] NOT NULL DEFAULT '{}',
            reset BOOLEAN NOT NULL DEFAULT FALSE
        );
        """,
    ),
    Migration(
        2,
        "subject name keys and metadata indexed for search",
        # name_key is store.name_key(name), computed in Python (SQL's lower() differs from Python's
        # casefold, and between locales), so rows that lack one are filled in by the store at open
        # (fill_name_keys); the partial index finds them without a scan.
        """
        ALTER TABLE subjects ADD COLUMN name_key TEXT;
        CREATE INDEX subjects_by_name_key ON subjects (name_key text_pattern_ops);
        CREATE INDEX subjects_without_name_key ON subjects (seq) WHERE name_key IS NULL;
        CREATE INDEX subjects_by_metadata ON subjects USING gin (metadata);
        """,
    ),
)


def hnsw_index_sql(embedding_size: int, m: int = 16, ef_construction: int = 64) -> str:
    """The pgvector HNSW index on the embeddings, for inner-product search at ``embedding_size``."""
    if embedding_size < 1:
        raise ValueError(f"embedding size must be positive, got {embedding_size}")
    return (
        f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON faces USING hnsw "
        f"((embedding::vector({int(embedding_size)})) vector_ip_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )
