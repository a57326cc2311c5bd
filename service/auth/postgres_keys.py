"""API keys in the shared PostgreSQL database (``FACE_DATABASE_URL``): a key made on one replica works on all.

Same contract as the SQLite store (service/auth/keys.py): only SHA-256 hashes are stored, looked up by
the key's public id; revocation is a timestamp, seen by every replica on its next lookup (nothing is
cached). The table is made by versioned migrations (component ``keys``) and constrained so that a row
this service would not write cannot be inserted; rows are still validated on read.

A database that cannot be reached raises KeyStoreUnavailableError (a 503 for the request, a failed
readiness check), never "no such key": the caller's key may be perfectly valid. Messages carry the URL
only through ``redact_url``.
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from service.auth.keys import (
    ApiKey,
    CreatedKey,
    KeyCollectionsError,
    KeyStoreCorruptError,
    KeyStoreError,
    KeyStoreUnavailableError,
    Scope,
    StoredKey,
    check_importable,
    generate_key,
    hash_key,
    key_collections,
    key_id_of,
    key_matches,
    parse_scopes,
    refuse_clashes,
)
from service.postgres.migrations import Migration, apply_migrations
from service.postgres.pool import (
    UNAVAILABLE_ERRORS,
    DatabaseUnavailableError,
    PoolOptions,
    open_pool,
    redact_url,
)

logger = logging.getLogger(__name__)

COMPONENT = "keys"
POOL_NAME = "face-keys"
# Held (per database) while the first-start admin key is made: replicas starting together create one.
BOOTSTRAP_LOCK_KEY = 0x4B455953  # "KEYS"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "api_keys: hashed, scoped, revocable API keys",
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
            name TEXT NOT NULL,
            scopes TEXT[] NOT NULL
                CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'enroll', 'admin']::TEXT[]),
            key_sha256 TEXT NOT NULL CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            revoked_at TIMESTAMPTZ
        );
        """,
    ),
    # NULL: every collection (all keys made before). Constrained as the service checks it (the name
    # pattern is COLLECTION_NAME_PATTERN's, written out: a migration never changes once applied).
    Migration(
        2,
        "api_keys.collections: a key limited to named collections (NULL: every collection)",
        """
        ALTER TABLE api_keys ADD COLUMN collections TEXT[]
            CHECK (
                collections IS NULL
                OR (
                    cardinality(collections) > 0
                    AND array_position(collections, NULL) IS NULL
                    AND array_to_string(collections, ',')
                        ~ '^[a-z][a-z0-9_]{0,39}(,[a-z][a-z0-9_]{0,39})*$'
                    AND NOT 'admin' = ANY(scopes)
                )
            );
        """,
    ),
)

_COLUMNS = ("id", "name", "scopes", "key_sha256", "created_at", "revoked_at", "collections")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{12}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Cursor = psycopg.Cursor[DictRow]


def _timestamp_text(value: datetime) -> str:
    """The SQLite store's format (UTC, seconds): the same ``created_at`` text whatever the backend."""
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _record_from_row(row: Mapping[str, object]) -> ApiKey:
    """The record of a stored row; raises KeyStoreError for a row this service would not write."""
    key_id, scopes, key_sha256 = row["id"], row["scopes"], row["key_sha256"]
    if not isinstance(key_id, str) or not _KEY_ID_HEX.fullmatch(key_id):
        raise KeyStoreError(f"a key row has a malformed id {str(key_id)[:40]!r}")
    if not isinstance(key_sha256, str) or not _SHA256_HEX.fullmatch(key_sha256):
        raise KeyStoreError(f"key {key_id} has a malformed hash")
    if not isinstance(row["name"], str):
        raise KeyStoreError(f"key {key_id} has a non-text name")
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise KeyStoreError(f"key {key_id} has malformed scopes")
    created_at, revoked_at = row["created_at"], row["revoked_at"]
    if not isinstance(created_at, datetime) or not isinstance(revoked_at, datetime | None):
        raise KeyStoreError(f"key {key_id} has a malformed timestamp")
    parsed_scopes = parse_scopes(scopes)
    return ApiKey(
        id=key_id,
        name=row["name"],
        scopes=parsed_scopes,
        created_at=_timestamp_text(created_at),
        revoked_at=None if revoked_at is None else _timestamp_text(revoked_at),
        collections=_stored_collections(key_id, parsed_scopes, row["collections"]),
    )


def _stored_collections(key_id: str, scopes: frozenset[Scope], value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise KeyStoreError(f"key {key_id} has malformed collections")
    try:
        return key_collections(scopes, value)
    except KeyCollectionsError as error:
        raise KeyStoreError(f"key {key_id} has bad collections: {error}") from None


def _collections_array(collections: frozenset[str] | None) -> list[str] | None:
    return None if collections is None else sorted(collections)


class PostgresKeyStore:
    """API keys in table ``api_keys``; a pooled connection per operation, safe across threads."""

    def __init__(self, url: str, pool: ConnectionPool, options: PoolOptions) -> None:
        self._url = url
        self._pool = pool
        self._options = options

    @classmethod
    def open(cls, url: str, options: PoolOptions) -> PostgresKeyStore:
        """Migrate the keys schema and open the pool (KeyStoreUnavailableError when unreachable)."""
        with _store_errors(redact_url(url)):
            apply_migrations(url, COMPONENT, MIGRATIONS, timeout_s=options.timeout_s)
            pool = open_pool(url, options, name=POOL_NAME)
        return cls(url, pool, options)

    @property
    def location(self) -> str:
        """Where the keys are, for messages (the URL without its password)."""
        return redact_url(self._url)

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """One transaction on a pooled connection (rows as dicts), psycopg's errors mapped to the store's."""
        with (
            _store_errors(self.location),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cursor,
        ):
            yield cursor

    def ensure_schema(self) -> None:
        """Apply pending migrations (``open`` did; again here, as the protocol promises, is harmless)."""
        with _store_errors(self.location):
            apply_migrations(self._url, COMPONENT, MIGRATIONS, timeout_s=self._options.timeout_s)

    def check(self) -> None:
        with self._transaction() as cursor:
            cursor.execute("SELECT * FROM api_keys")  # every column: an added one is a changed table
            columns = tuple(column.name for column in cursor.description or ())
            if columns != _COLUMNS:
                raise KeyStoreCorruptError.in_database(self.location, f"table api_keys has columns {columns}")
            try:
                for row in cursor:
                    _record_from_row(row)
            except KeyStoreError as error:
                raise KeyStoreCorruptError.in_database(self.location, str(error)) from None

    def readable(self) -> bool:
        try:
            self.check()
        except (KeyStoreCorruptError, KeyStoreUnavailableError) as error:
            logger.warning("%s", error)
            return False
        return True

    def create(
        self, scopes: frozenset[Scope], name: str = "", collections: frozenset[str] | None = None
    ) -> CreatedKey:
        if not scopes:
            raise KeyStoreError("at least one scope is needed (read, enroll, admin)")
        limited = key_collections(scopes, collections)
        with self._transaction() as cursor:
            return self._insert(cursor, scopes, name, limited)

    def create_if_empty(self, scopes: frozenset[Scope], name: str = "") -> CreatedKey | None:
        """Count and insert under a transaction-scoped advisory lock: one key however many replicas race."""
        if not scopes:
            raise KeyStoreError("at least one scope is needed (read, enroll, admin)")
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK_KEY,))
            if _count(cursor) > 0:
                return None
            return self._insert(cursor, scopes, name, None)

    @staticmethod
    def _insert(
        cursor: Cursor, scopes: frozenset[Scope], name: str, collections: frozenset[str] | None
    ) -> CreatedKey:
        key_id, key = generate_key()
        row = cursor.execute(
            f"INSERT INTO api_keys (id, name, scopes, key_sha256, collections) VALUES (%s, %s, %s, %s, %s) "
            f"RETURNING {', '.join(_COLUMNS)}",
            (
                key_id,
                name,
                sorted(scope.value for scope in scopes),
                hash_key(key),
                _collections_array(collections),
            ),
        ).fetchone()
        if row is None:  # INSERT ... RETURNING returns its row or raises
            raise KeyStoreError(f"key {key_id} was not stored")
        return CreatedKey(record=_record_from_row(row), key=key)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._transaction() as cursor:
            rows = cursor.execute(f"{_SELECT}{where} ORDER BY created_at, id").fetchall()
        return [self._checked(row) for row in rows]

    def get(self, key_id: str) -> ApiKey | None:
        with self._transaction() as cursor:
            row = cursor.execute(f"{_SELECT} WHERE id = %s", (key_id,)).fetchone()
        return None if row is None else self._checked(row)

    def revoke(self, key_id: str) -> ApiKey:
        with self._transaction() as cursor:
            cursor.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
            )
            row = cursor.execute(f"{_SELECT} WHERE id = %s", (key_id,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no API key with id {key_id!r}")
        return self._checked(row)

    def count(self) -> int:
        with self._transaction() as cursor:
            return _count(cursor)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key matching ``presented``, or None; KeyStoreUnavailableError when unreachable."""
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        try:
            with self._transaction() as cursor:
                row = cursor.execute(f"{_SELECT} WHERE id = %s", (key_id,)).fetchone()
            if row is None or row["revoked_at"] is not None:
                return None
            record = _record_from_row(row)  # a malformed row is refused, not served
        except KeyStoreError as error:  # KeyStoreCorruptError included; unavailable is not caught
            logger.warning(
                "key %s refused: the key store at %s could not be read: %s", key_id, self.location, error
            )
            return None
        return record if key_matches(presented, str(row["key_sha256"])) else None

    def export_keys(self) -> builtins.list[StoredKey]:  # builtins: `list` here is the method
        """Every key with its hash, revoked ones too, in creation order; only reads."""
        with self._transaction() as cursor:
            rows = cursor.execute(f"{_SELECT} ORDER BY created_at, id").fetchall()
        return [StoredKey(self._checked(row), str(row["key_sha256"])) for row in rows]

    def import_keys(self, keys: Sequence[StoredKey]) -> None:
        """Store ``keys`` as they are (ids, hashes, times) in one transaction; a clash refuses them all.

        Every key is checked first: the table's constraints would refuse a malformed one too, but as
        a damaged store, not as the bad input it is.
        """
        rows = [
            (
                key.record.id,
                key.record.name,
                sorted(scope.value for scope in key.record.scopes),
                key.key_sha256,
                *check_importable(key),
                _collections_array(key.record.collections),
            )
            for key in keys
        ]
        if not rows:
            return
        where = f"the database at {self.location}"
        with self._transaction() as cursor:
            refuse_clashes(keys, (str(row["id"]) for row in cursor.execute("SELECT id FROM api_keys")), where)
            try:
                cursor.executemany(
                    "INSERT INTO api_keys "
                    "(id, name, scopes, key_sha256, created_at, revoked_at, collections) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )
            except psycopg.errors.UniqueViolation as error:  # a key made meanwhile by another replica
                detail = error.diag.message_detail or "an id taken meanwhile"
                raise KeyStoreError(
                    f"the keys to import clash with keys in {where} ({detail}); nothing was imported"
                ) from None

    def close(self) -> None:
        self._pool.close()

    def _checked(self, row: Mapping[str, object]) -> ApiKey:
        try:
            return _record_from_row(row)
        except KeyStoreError as error:
            raise KeyStoreCorruptError.in_database(self.location, str(error)) from None


def _count(cursor: Cursor) -> int:
    row = cursor.execute("SELECT count(*) AS keys FROM api_keys").fetchone()
    return 0 if row is None else int(row["keys"])


@contextmanager
def _store_errors(location: str) -> Iterator[None]:
    """psycopg's errors as the key store's: unreachable → KeyStoreUnavailableError, anything else corrupt."""
    try:
        yield
    except KeyStoreUnavailableError:
        raise
    except DatabaseUnavailableError as error:  # from the pool or the migrations: already redacted
        raise KeyStoreUnavailableError(f"the API key store cannot be used now: {_one_line(error)}") from None
    except UNAVAILABLE_ERRORS as error:
        why = redact_url(f"{type(error).__name__}: {_one_line(error)}")
        raise KeyStoreUnavailableError(
            f"the API key database at {location} is unavailable ({why}); nothing was changed, retry shortly"
        ) from None
    except psycopg.Error as error:  # a missing table, a changed column type, a constraint gone
        raise KeyStoreCorruptError.in_database(location, redact_url(_one_line(error))) from None


def _one_line(error: Exception) -> str:
    """libpq's messages span lines (a HINT, a tab-indented detail): one line for logs and the CLI."""
    return " ".join(str(error).split())
