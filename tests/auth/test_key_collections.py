"""Keys limited to collections, in both key stores: stored, read back, copied, refused when malformed;
older stores (a SQLite file without the column, a database at keys migration 1) keep their keys unlimited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from service.auth.authenticator import Authenticator, Principal
from service.auth.keys import (
    KEYS_DB_FILE,
    ApiKey,
    KeyCollectionsError,
    KeyStoreError,
    Scope,
    SqliteKeyStore,
    StoredKey,
    generate_key,
    hash_key,
    key_collections,
    parse_collections,
)
from service.auth.postgres_keys import COMPONENT, MIGRATIONS, PostgresKeyStore
from service.postgres.migrations import apply_migrations
from service.postgres.pool import PoolOptions
from tests.auth.key_backends import KeyBackend, key_backend

__all__ = ["key_backend"]  # the fixture: each store-level test runs on SQLite and on PostgreSQL

READ = frozenset({Scope.READ})
FAST = PoolOptions(min_size=1, max_size=2, timeout_s=1.0)


def test_a_limited_key_keeps_its_collections_and_an_unlimited_one_has_none(key_backend: KeyBackend) -> None:
    store = key_backend.open()
    store.ensure_schema()
    limited = store.create(frozenset({Scope.READ, Scope.ENROLL}), "kiosk", frozenset({"kiosk", "default"}))
    unlimited = store.create(READ, "everything")

    assert limited.record.collections == {"kiosk", "default"}
    assert unlimited.record.collections is None
    found = store.authenticate(limited.key)
    assert found is not None
    assert found.collections == {"kiosk", "default"}
    other = key_backend.open()  # another replica, or the CLI: reads what the first wrote
    assert other.get(limited.record.id) == limited.record
    assert {key.name: key.collections for key in other.list()} == {
        "kiosk": {"kiosk", "default"},
        "everything": None,
    }
    other.check()
    # The principal a request gets carries them: FACE_API_KEY and auth off are every collection.
    principal = Authenticator(other, explicit_key_sha256=None, enabled=True).authenticate(limited.key)
    assert principal is not None
    assert principal.collections == {"kiosk", "default"}
    assert principal.may_use("kiosk")
    assert not principal.may_use("lobby")
    assert Authenticator(other, explicit_key_sha256=hash_key("env-key"), enabled=True).authenticate(
        "env-key"
    ) == Principal("env", frozenset({Scope.ADMIN}), None)
    off = Authenticator(other, explicit_key_sha256=None, enabled=False).authenticate(None)
    assert off is not None
    assert off.may_use("anything")


@pytest.mark.parametrize(
    ("scopes", "collections", "code"),
    [
        (READ, frozenset(), "no_collections"),
        (READ, frozenset({"Kiosk"}), "invalid_collection_name"),
        (READ, frozenset({"kiosk,lobby"}), "invalid_collection_name"),
        (READ, frozenset({"x" * 41}), "invalid_collection_name"),
        (frozenset({Scope.ADMIN}), frozenset({"kiosk"}), "admin_key_collections"),
        (frozenset({Scope.ADMIN, Scope.READ}), frozenset({"default"}), "admin_key_collections"),
    ],
)
def test_a_key_cannot_be_limited_to_nothing_a_bad_name_or_as_admin(
    key_backend: KeyBackend, scopes: frozenset[Scope], collections: frozenset[str], code: str
) -> None:
    store = key_backend.open()
    store.ensure_schema()
    with pytest.raises(KeyCollectionsError) as refused:
        store.create(scopes, "refused", collections)
    assert refused.value.code == code
    assert store.count() == 0


def test_exported_limits_import_into_another_store(key_backend: KeyBackend, tmp_path: Path) -> None:
    source = key_backend.open()
    source.ensure_schema()
    limited = source.create(READ, "kiosk", frozenset({"kiosk"}))
    source.create(frozenset({Scope.ADMIN}), "admin")
    exported = source.export_keys()
    # Made in the same second: listed by id then, so compared by id here.
    assert {key.record.name: key.record.collections for key in exported} == {
        "kiosk": {"kiosk"},
        "admin": None,
    }

    target = key_backend.elsewhere(tmp_path / "target").open()
    target.ensure_schema()
    target.import_keys(exported)

    assert sorted(target.export_keys(), key=_id) == sorted(exported, key=_id)
    found = target.authenticate(limited.key)
    assert found is not None
    assert found.collections == {"kiosk"}


def _id(key: StoredKey) -> str:
    return key.record.id


def _copied(key_id: str, scopes: frozenset[Scope], collections: frozenset[str] | None) -> StoredKey:
    record = ApiKey(key_id, "copied", scopes, "2024-05-06T07:08:09+00:00", None, collections)
    return StoredKey(record, hash_key(f"fsk_{key_id}_secret"))


@pytest.mark.parametrize(
    ("scopes", "collections"),
    [(READ, frozenset()), (READ, frozenset({"no such"})), (frozenset({Scope.ADMIN}), frozenset({"kiosk"}))],
)
def test_an_import_with_malformed_limits_writes_nothing(
    key_backend: KeyBackend, scopes: frozenset[Scope], collections: frozenset[str]
) -> None:
    store = key_backend.open()
    store.ensure_schema()
    good = _copied("00000000000a", READ, frozenset({"kiosk"}))
    with pytest.raises(KeyStoreError, match="key 00000000000b to import"):
        store.import_keys([good, _copied("00000000000b", scopes, collections)])
    assert store.export_keys() == []


def test_limits_are_checked_against_the_known_collections() -> None:
    known = {"default", "kiosk"}
    assert key_collections(READ, None, known) is None
    assert key_collections(READ, parse_collections(["kiosk, default"]), known) == {"kiosk", "default"}
    assert parse_collections(["kiosk", "lobby,default", " , "]) == {"kiosk", "lobby", "default"}
    with pytest.raises(KeyCollectionsError, match="no collection named lobby") as refused:
        key_collections(READ, {"kiosk", "lobby"}, known)
    assert refused.value.code == "unknown_collection"


# --- stores older than the limits


# The table as the service made it before keys had collections (service/auth/keys.py history).
_LEGACY_TABLE = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


def _legacy_sqlite_file(data_dir: Path) -> tuple[Path, str, str]:
    """A key file without the collections column, holding one read key; (path, key id, key)."""
    data_dir.mkdir(mode=0o700)
    path = data_dir / KEYS_DB_FILE
    key_id, key = generate_key()
    with sqlite3.connect(path) as conn:
        conn.execute(_LEGACY_TABLE)
        conn.execute(
            "INSERT INTO api_keys VALUES (?, 'old kiosk', 'read', ?, '2024-05-06T07:08:09+00:00', NULL)",
            (key_id, hash_key(key)),
        )
    conn.close()
    path.chmod(0o600)
    return path, key_id, key


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        columns = [str(row[1]) for row in conn.execute("PRAGMA table_info(api_keys)")]
    conn.close()
    return columns


def test_an_old_sqlite_file_reads_as_is_and_gains_the_column_when_opened_for_writing(tmp_path: Path) -> None:
    path, key_id, key = _legacy_sqlite_file(tmp_path / "data")
    store = SqliteKeyStore(path)
    before = path.read_bytes()

    # Reading (authentication, listing, the start-up check) changes nothing: the key is unlimited.
    found = store.authenticate(key)
    assert found is not None
    assert (found.id, found.collections) == (key_id, None)
    store.check()
    assert [k.collections for k in store.list()] == [None]
    assert store.export_keys()[0].record.collections is None
    assert path.read_bytes() == before

    store.ensure_schema()  # start-up and the CLI: the column is added, the old key stays unlimited
    assert _columns(path)[-1] == "collections"
    store.check()
    found = store.authenticate(key)
    assert found is not None
    assert found.collections is None
    limited = store.create(READ, "new kiosk", frozenset({"kiosk"}))
    assert [k.collections for k in SqliteKeyStore(path).list()] == [None, {"kiosk"}]
    assert store.authenticate(limited.key) == limited.record
    store.ensure_schema()  # again: nothing to add
    assert _columns(path).count("collections") == 1


def test_a_database_at_keys_migration_1_is_migrated_and_its_keys_stay_unlimited(pg_url: str) -> None:
    apply_migrations(pg_url, COMPONENT, MIGRATIONS[:1], timeout_s=5.0)
    key_id, key = generate_key()
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, scopes, key_sha256) VALUES (%s, 'old kiosk', ARRAY['read'], %s)",
            (key_id, hash_key(key)),
        )

    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        store.check()
        found = store.authenticate(key)
        assert found is not None
        assert (found.id, found.collections) == (key_id, None)
        with psycopg.connect(pg_url) as conn:
            ledger = conn.execute(
                "SELECT version FROM schema_migrations WHERE component = 'keys' ORDER BY version"
            ).fetchall()
            # The table refuses limits the service would not write, not only the code reading them.
            for scopes, collections in (
                (["read"], []),
                (["read"], ["Kiosk"]),
                (["read"], ["kiosk", None]),
                (["admin"], ["kiosk"]),
            ):
                with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                    conn.execute(
                        "INSERT INTO api_keys (id, name, scopes, key_sha256, collections) "
                        "VALUES ('abcdef012345', '', %s, repeat('0', 64), %s)",
                        (scopes, collections),
                    )
        assert [row[0] for row in ledger] == [1, 2]
    finally:
        store.close()


# --- the CLI


def test_keys_create_collections_and_keys_list_shows_them(
    key_backend: KeyBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    monkeypatch.setenv("FACE_DATA_DIR", str(key_backend.data_dir))
    if key_backend.database_url is not None:
        monkeypatch.setenv("FACE_DATABASE_URL", key_backend.database_url)
    monkeypatch.setenv("FACE_COLLECTIONS", '{"kiosk": "default"}')
    monkeypatch.delenv("FACE_API_KEY", raising=False)

    assert main(["keys", "create", "--scopes", "read", "--collections", "kiosk,default", "--name", "k"]) == 0
    out = capsys.readouterr().out
    assert "collections: default,kiosk\n" in out
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))
    found = key_backend.open().authenticate(key)
    assert found is not None
    assert found.collections == {"kiosk", "default"}
    assert main(["keys", "create", "--scopes", "enroll", "--name", "e"]) == 0
    assert "collections: (all)\n" in capsys.readouterr().out

    assert main(["keys", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "scopes", "created", "status", "collections", "name"]
    # Every row: id, scopes, created, status, collections, name.
    assert sorted((row.split()[1], row.split()[4], row.split()[5]) for row in rows) == [
        ("enroll", "(all)", "e"),
        ("read", "default,kiosk", "k"),
    ]

    for args, why in (
        (["--scopes", "read", "--collections", "lobby"], "no collection named lobby"),
        (["--scopes", "admin", "--collections", "kiosk"], "admin keys cannot be limited"),
        (["--scopes", "read", "--collections", "Kiosk"], "malformed collection names"),
        (["--scopes", "read", "--collections", ","], "needs at least one"),
    ):
        assert main(["keys", "create", *args]) == 1
        assert why in capsys.readouterr().err
    assert key_backend.stored_rows() == 2  # the refused ones made nothing
