"""API keys: scoped, stored only as hashes, checked in constant time.

A key looks like ``fsk_<key id>_<secret>``. The key id (public) finds the record; the secret is 32 random
bytes, so a plain SHA-256 of the whole key is a safe verifier (no password stretching needed for a
high-entropy secret). Keys live behind the ``KeyStore`` protocol: in SQLite (``api_keys.sqlite3`` in the
data dir, ``SqliteKeyStore``) for one process, or in the shared PostgreSQL database when
``FACE_DATABASE_URL`` is set (``service.auth.postgres_keys``), so that a key made on one replica works on
all. Either way the CLI can create or revoke keys while the server runs and the server sees the change
on the next request.

A key may be limited to collections (named galleries, ``FACE_COLLECTIONS``): ``ApiKey.collections``
holds their names, None for every collection (every key made before the limit existed). Admin keys are
never limited: they manage every collection's keys. The SQLite file gained its ``collections`` column
later: opening a file without it for writing adds it (``ALTER TABLE``), and readers take a missing column
as "every collection", so an older file keeps working even where it cannot be written.

SQLite authentication only reads: a read-only connection, no schema statements, and a rollback journal
(not WAL, whose readers need a -shm file), so that stored keys keep working on a full disk. Any
row or file that cannot be read is "no such key" (401) for the request and a failed check for start
and readiness, never a 500.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from service.postgres.pool import DatabaseUnavailableError
from service.private_files import ensure_private_dir, ensure_private_file
from service.settings import COLLECTION_NAME_PATTERN, DEFAULT_COLLECTION, Settings
from service.sqlite_text import lenient_text

logger = logging.getLogger(__name__)

KEYS_DB_FILE = "api_keys.sqlite3"
KEY_PREFIX = "fsk"
_KEY_ID_BYTES = 6
_SECRET_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    collections TEXT
)
"""
# A file made before keys could be limited to collections: the same table without the last column.
_LEGACY_COLUMNS = ("id", "name", "scopes", "key_sha256", "created_at", "revoked_at")
_COLUMNS = (*_LEGACY_COLUMNS, "collections")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID_HEX = re.compile(rf"[0-9a-f]{{{2 * _KEY_ID_BYTES}}}")
_COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)


class Scope(StrEnum):
    READ = "read"  # detect, embed, verify, identify, read the gallery
    ENROLL = "enroll"  # gallery writes
    ADMIN = "admin"  # keys and migrations; implies every other scope


class KeyStoreError(ValueError):
    """A key operation that cannot be done (unknown key, bad scopes)."""


class KeyCollectionsError(KeyStoreError):
    """Collections a key cannot be limited to; ``code`` says why (for the API's problem body)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class KeyStoreCorruptError(KeyStoreError):
    """The key store cannot be read, or holds rows this service did not write (a start-up error)."""

    @classmethod
    def in_file(cls, path: Path, why: str) -> KeyStoreCorruptError:
        from service.command_hints import command_hint

        create = command_hint("face-service", "keys", "create", "--scopes", "admin", data_dir=path.parent)
        return cls(
            f"the API key store {path} is unreadable or tampered with ({why}): stop the service, move "
            f"the file aside and create keys again with `{create}` "
            "(it holds only key hashes; the gallery is not affected)"
        )

    @classmethod
    def in_database(cls, redacted_url: str, why: str) -> KeyStoreCorruptError:
        from service.command_hints import command_hint

        create = command_hint("face-service", "keys", "create", "--scopes", "admin")
        return cls(
            f"the API key store (table api_keys) in the database at {redacted_url} is unreadable or "
            f"tampered with ({why}): drop the table and its rows in schema_migrations (component "
            f"'keys'), then create keys again with `{create}` and the same FACE_DATABASE_URL "
            "(it holds only key hashes; the gallery is not affected)"
        )


class KeyStoreUnavailableError(DatabaseUnavailableError):
    """The shared key database cannot be reached now: a key is neither accepted nor refused (503).

    Not a KeyStoreError: callers that turn KeyStoreError into "no such key" (404, 401) must not.
    """


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from strings such as ``["read", "enroll"]`` or ``["read,enroll"]``."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise KeyStoreError("at least one scope is needed (read, enroll, admin)")
    try:
        return frozenset(Scope(name) for name in names)
    except ValueError:
        known = ", ".join(scope.value for scope in Scope)
        raise KeyStoreError(f"unknown scope in {names}; known scopes: {known}") from None


def parse_collections(values: Iterable[str]) -> frozenset[str]:
    """Collection names from strings such as ``["kiosk", "default"]`` or ``["kiosk,default"]``."""
    return frozenset(part.strip() for value in values for part in value.split(",") if part.strip())


def known_collections(settings: Settings) -> frozenset[str]:
    """The collections a new key may be limited to: the default one and every configured one."""
    return frozenset({DEFAULT_COLLECTION, *settings.collections})


def key_collections(
    scopes: frozenset[Scope], collections: Iterable[str] | None, known: Iterable[str] | None = None
) -> frozenset[str] | None:
    """The collections a key with ``scopes`` is limited to (None: every collection), checked.

    KeyCollectionsError for an empty set, a malformed name, an admin key (admin keys manage every
    collection's keys, so they are never limited) or, when ``known`` is given, a collection not in it.
    """
    if collections is None:
        return None
    names = frozenset(collections)
    if not names:
        raise KeyCollectionsError(
            "no_collections", "a key limited to collections needs at least one; leave it out for every one"
        )
    malformed = sorted(name for name in names if not _COLLECTION_NAME.fullmatch(name))
    if malformed:
        raise KeyCollectionsError(
            "invalid_collection_name",
            f"malformed collection names {malformed[:3]} (a lowercase letter, then up to 39 lowercase "
            "letters, digits or _)",
        )
    if Scope.ADMIN in scopes:
        raise KeyCollectionsError(
            "admin_key_collections",
            "admin keys cannot be limited to collections (they manage every collection's keys); "
            "leave the collections out or drop the admin scope",
        )
    if known is not None:
        known_names = frozenset(known)
        unknown = sorted(names - known_names)
        if unknown:
            raise KeyCollectionsError(
                "unknown_collection",
                f"no collection named {', '.join(unknown)} "
                f"(the collections: {', '.join(sorted(known_names))})",
            )
    return names


def grants(scopes: frozenset[Scope], needed: Scope) -> bool:
    """Whether a key with ``scopes`` may do what ``needed`` guards (admin implies all)."""
    return Scope.ADMIN in scopes or needed in scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(presented: str, expected_sha256: str) -> bool:
    """Constant-time comparison of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(presented), expected_sha256)


def generate_key() -> tuple[str, str]:
    """A new ``(key_id, key)`` pair; the key is shown once and never stored."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def key_id_of(key: str) -> str | None:
    """The key id embedded in a key of our format, or None for anything else."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 2 * _KEY_ID_BYTES:
        return None
    return parts[1]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ApiKey:
    """A stored key's public record (never the key itself)."""

    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: str
    revoked_at: str | None = None
    collections: frozenset[str] | None = None  # None: every collection

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKey
    key: str  # the plaintext key: give it to the user once, then forget it


@dataclass(frozen=True)
class StoredKey:
    """A key's public record and its stored hash: all a key store keeps, so a copy works as the original."""

    record: ApiKey
    key_sha256: str


def _stored_time(text: str, key_id: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise KeyStoreError(f"key {key_id} has a malformed {what} {text[:40]!r}") from None
    if value.tzinfo is None:  # this service writes UTC with its offset; a bare time is another's row
        raise KeyStoreError(f"key {key_id} has a {what} without a time zone ({text[:40]!r})")
    return value


def check_importable(key: StoredKey) -> tuple[datetime, datetime | None]:
    """Raise KeyStoreError unless ``key`` is one this service could have written; its (created, revoked).

    ``import_keys`` checks every key before it writes any, so a bad key is refused as such and never
    lands as a row that would make the store look tampered with.
    """
    record = key.record
    if not _KEY_ID_HEX.fullmatch(record.id):
        raise KeyStoreError(f"a key to import has a malformed id {record.id[:40]!r}")
    if not _SHA256_HEX.fullmatch(key.key_sha256):
        raise KeyStoreError(f"key {record.id} to import has a malformed hash")
    if not record.scopes:
        raise KeyStoreError(f"key {record.id} to import has no scopes")
    try:
        key_collections(record.scopes, record.collections)
    except KeyCollectionsError as error:
        raise KeyStoreError(f"key {record.id} to import: {error}") from None
    created = _stored_time(record.created_at, record.id, "created_at")
    revoked = None if record.revoked_at is None else _stored_time(record.revoked_at, record.id, "revoked_at")
    return created, revoked


def refuse_clashes(keys: Sequence[StoredKey], stored_ids: Iterable[str], location: str) -> None:
    """KeyStoreError naming the ids in ``keys`` already stored (or repeated among them): an import of
    keys over others would leave two keys behind one id, so none of them is imported."""
    seen = set(stored_ids)
    clashes: list[str] = []
    for key in keys:
        if key.record.id in seen:
            clashes.append(key.record.id)
        seen.add(key.record.id)
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise KeyStoreError(
            f"the keys to import clash with keys in {location} (ids {', '.join(clashes[:3])}{more}); "
            "nothing was imported"
        )


def _scopes_text(scopes: frozenset[Scope]) -> str:
    return ",".join(sorted(scope.value for scope in scopes))


def _collections_text(collections: frozenset[str] | None) -> str | None:
    return None if collections is None else ",".join(sorted(collections))


def _stored_collections(row: sqlite3.Row, scopes: frozenset[Scope]) -> frozenset[str] | None:
    """A row's collections: NULL, or a column the file does not have yet, is every collection."""
    text = row["collections"] if "collections" in row.keys() else None  # noqa: SIM118 (`in row`: values)
    if text is None:
        return None
    if not isinstance(text, str):
        raise KeyStoreError(f"key {row['id']} has non-text collections")
    try:
        return key_collections(scopes, text.split(","))
    except KeyCollectionsError as error:
        raise KeyStoreError(f"key {row['id']} has bad collections: {error}") from None


def _row_to_key(row: sqlite3.Row) -> ApiKey:
    """The record of a stored row; raises KeyStoreError for a row this service would not write."""
    if not isinstance(row["id"], str) or not _KEY_ID_HEX.fullmatch(row["id"]):
        raise KeyStoreError(f"a key row has a malformed id {str(row['id'])[:40]!r}")
    if not isinstance(row["key_sha256"], str) or not _SHA256_HEX.fullmatch(row["key_sha256"]):
        raise KeyStoreError(f"key {row['id']} has a malformed hash")
    for column in ("name", "scopes", "created_at"):
        if not isinstance(row[column], str):
            raise KeyStoreError(f"key {row['id']} has a non-text {column}")
    if row["revoked_at"] is not None and not isinstance(row["revoked_at"], str):
        raise KeyStoreError(f"key {row['id']} has a non-text revoked_at")
    scopes = parse_scopes([row["scopes"]])
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scopes=scopes,
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        collections=_stored_collections(row, scopes),
    )


class KeyStore(Protocol):
    """Where API keys live: hashes only, looked up by key id, revocable.

    Errors: KeyStoreError for an operation that cannot be done (unknown key id, no scopes);
    KeyStoreCorruptError when the store cannot be read or holds rows this service did not write;
    KeyStoreUnavailableError (a shared database only) when it cannot be reached now.
    """

    def ensure_schema(self) -> None:
        """Create the store's tables when missing (start-up and the CLI; never per request)."""
        ...

    def check(self) -> None:
        """Raise KeyStoreCorruptError unless every stored row reads cleanly."""
        ...

    def readable(self) -> bool:
        """Whether ``check`` passes and the store can be reached (readiness); never raises."""
        ...

    def create(
        self, scopes: frozenset[Scope], name: str = "", collections: frozenset[str] | None = None
    ) -> CreatedKey:
        """A new key; ``collections`` limits it (None: every collection; KeyCollectionsError if bad)."""
        ...

    def create_if_empty(self, scopes: frozenset[Scope], name: str = "") -> CreatedKey | None:
        """A new key only when the store holds none, atomically across processes (else None)."""
        ...

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]: ...

    def get(self, key_id: str) -> ApiKey | None: ...

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke (idempotent) and return the record; KeyStoreError when no key has that id."""
        ...

    def count(self) -> int: ...

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key record matching ``presented``, or None for an unknown, revoked or bad key."""
        ...

    def export_keys(self) -> builtins.list[StoredKey]:  # builtins: `list` here is the method
        """Every key with its hash, revoked ones too, in creation order; only reads (for copying a store).

        Every row is checked: a malformed one raises KeyStoreCorruptError instead of being copied.
        """
        ...

    def import_keys(self, keys: Sequence[StoredKey]) -> None:
        """Store ``keys`` as they are (ids, hashes, times, revocations), all in one transaction.

        KeyStoreError, and nothing written, when a key is malformed or its id is already stored.
        """
        ...

    def close(self) -> None: ...


class SqliteKeyStore:
    """API keys in a small SQLite file; a connection per operation keeps it safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteKeyStore:
        return cls(data_dir / KEYS_DB_FILE)

    def ensure_schema(self) -> None:
        """Create the file (0600) and its table if missing; the one place schema statements run."""
        with self._connect():
            pass  # opening a writable connection creates both

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A writable connection (CLI and start-up): creates the file and table when missing."""
        ensure_private_dir(self.path.parent)
        ensure_private_file(self.path)
        conn = sqlite3.connect(self.path, timeout=10.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.text_factory = lenient_text
            # A rollback journal: read-only readers then need no -shm file (see the module doc).
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            _add_collections_column(conn)
            with conn:  # one transaction, committed on success
                yield conn
        finally:
            conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection: writes nothing, so it works on a full disk."""
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.text_factory = lenient_text
            yield conn
        finally:
            conn.close()

    def check(self) -> None:
        """Raise KeyStoreCorruptError unless the file reads cleanly and every row is well formed."""
        if not self.path.is_file():
            raise KeyStoreCorruptError.in_file(self.path, "missing, or not a regular file")
        try:
            with self._read() as conn:
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise KeyStoreCorruptError.in_file(self.path, f"integrity check: {verdict}")
                columns = _table_columns(conn)
                if columns not in (_COLUMNS, _LEGACY_COLUMNS):  # an older file: every key unlimited
                    raise KeyStoreCorruptError.in_file(
                        self.path, f"table api_keys has columns {columns or 'none'}"
                    )
                for row in conn.execute("SELECT * FROM api_keys"):
                    _row_to_key(row)
        except sqlite3.Error as error:
            raise KeyStoreCorruptError.in_file(self.path, str(error)) from None
        except KeyStoreCorruptError:
            raise
        except KeyStoreError as error:
            raise KeyStoreCorruptError.in_file(self.path, str(error)) from None

    def readable(self) -> bool:
        """Whether ``check`` passes (for readiness)."""
        try:
            self.check()
        except KeyStoreCorruptError as error:
            logger.warning("%s", error)
            return False
        return True

    def create(
        self, scopes: frozenset[Scope], name: str = "", collections: frozenset[str] | None = None
    ) -> CreatedKey:
        if not scopes:
            raise KeyStoreError("at least one scope is needed (read, enroll, admin)")
        limited = key_collections(scopes, collections)
        key_id, key = generate_key()
        record = ApiKey(id=key_id, name=name, scopes=scopes, created_at=_now(), collections=limited)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, name, scopes, key_sha256, created_at, collections) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    _scopes_text(scopes),
                    hash_key(key),
                    record.created_at,
                    _collections_text(limited),
                ),
            )
        return CreatedKey(record=record, key=key)

    def create_if_empty(self, scopes: frozenset[Scope], name: str = "") -> CreatedKey | None:
        if not scopes:
            raise KeyStoreError("at least one scope is needed (read, enroll, admin)")
        key_id, key = generate_key()
        record = ApiKey(id=key_id, name=name, scopes=scopes, created_at=_now())
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: a second process waits, then sees a key
            if int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]) > 0:
                return None
            conn.execute(
                "INSERT INTO api_keys (id, name, scopes, key_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name, _scopes_text(scopes), hash_key(key), record.created_at),
            )
        return CreatedKey(record=record, key=key)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        if not self.path.exists():
            return []
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        keys = [self._checked(row) for row in rows]
        return keys if include_revoked else [key for key in keys if key.active]

    def get(self, key_id: str) -> ApiKey | None:
        if not self.path.exists():
            return None
        with self._read() as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else self._checked(row)

    def _checked(self, row: sqlite3.Row) -> ApiKey:
        """A listed row's record; a malformed row means a damaged file (KeyStoreCorruptError)."""
        try:
            return _row_to_key(row)
        except KeyStoreError as error:
            raise KeyStoreCorruptError.in_file(self.path, str(error)) from None

    def revoke(self, key_id: str) -> ApiKey:
        with self._connect() as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_now(), key_id)
            )
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no API key with id {key_id!r}")
        return _row_to_key(row)

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key record matching ``presented``, or None (also when the store is unreadable)."""
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        try:
            with self._read() as conn:
                row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None or row["revoked_at"] is not None:
                return None
            record = _row_to_key(row)  # a malformed row is refused, not served
        except (sqlite3.Error, KeyStoreError) as error:
            logger.warning("key %s refused: the key store %s could not be read: %s", key_id, self.path, error)
            return None
        return record if key_matches(presented, row["key_sha256"]) else None

    def export_keys(self) -> builtins.list[StoredKey]:  # builtins: `list` here is the method
        """Every key with its hash, in creation order (none when the file was never made); read-only."""
        if not self.path.exists():
            return []
        try:
            with self._read() as conn:
                rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        except sqlite3.Error as error:  # no table, a damaged page: not a store to copy from
            raise KeyStoreCorruptError.in_file(self.path, str(error)) from None
        return [StoredKey(self._checked(row), row["key_sha256"]) for row in rows]

    def import_keys(self, keys: Sequence[StoredKey]) -> None:
        """Store ``keys`` as they are in one transaction; an id already stored refuses them all."""
        for key in keys:
            check_importable(key)
        rows = [
            (
                key.record.id,
                key.record.name,
                _scopes_text(key.record.scopes),
                key.key_sha256,
                key.record.created_at,
                key.record.revoked_at,
                _collections_text(key.record.collections),
            )
            for key in keys
        ]
        if not rows:
            return
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the ids read here stay the stored ones until the commit
            refuse_clashes(
                keys, (str(row[0]) for row in conn.execute("SELECT id FROM api_keys")), str(self.path)
            )
            conn.executemany(
                "INSERT INTO api_keys (id, name, scopes, key_sha256, created_at, revoked_at, collections) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own connection."""


def _table_columns(conn: sqlite3.Connection) -> tuple[str, ...]:
    return tuple(str(row[1]) for row in conn.execute("PRAGMA table_info(api_keys)"))


def _add_collections_column(conn: sqlite3.Connection) -> None:
    """Give a file made before keys had collections its column (NULL: every collection, as before).

    Under the write lock and checked again inside it: two processes opening the old file together
    add the column once. Any other shape is left alone for ``check`` to refuse.
    """
    if _table_columns(conn) != _LEGACY_COLUMNS:
        return
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if _table_columns(conn) == _LEGACY_COLUMNS:
            conn.execute("ALTER TABLE api_keys ADD COLUMN collections TEXT")
