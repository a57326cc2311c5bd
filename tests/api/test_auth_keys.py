"""API keys: hashed storage, scopes, revocation, and the first-start bootstrap."""

from __future__ import annotations

import io
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.auth.authenticator import ENV_KEY_ID, bootstrap_authenticator
from service.auth.keys import (
    KEYS_DB_FILE,
    ApiKey,
    KeyStoreCorruptError,
    KeyStoreError,
    Scope,
    SqliteKeyStore,
    StoredKey,
    grants,
    hash_key,
    parse_scopes,
)
from service.auth.postgres_keys import PostgresKeyStore
from service.postgres.pool import PoolOptions
from service.settings import Settings
from tests.auth.key_backends import KeyBackend, key_backend
from tests.postgres_server import PostgresServer

__all__ = ["key_backend"]  # the fixture: each store-level test runs on SQLite and on PostgreSQL

_PRINTED_KEY = re.compile(r"key:\s+(fsk_\S+)")


def test_created_key_authenticates_and_only_its_hash_is_stored(key_backend: KeyBackend) -> None:
    store = key_backend.open()
    store.ensure_schema()
    created = store.create(frozenset({Scope.READ, Scope.ENROLL}), name="kiosk")

    found = store.authenticate(created.key)
    assert found is not None
    assert found.id == created.record.id
    assert found.scopes == {Scope.READ, Scope.ENROLL}
    assert found.name == "kiosk"
    raw = key_backend.stored_bytes()
    assert created.record.id.encode() in raw  # the search below looks at the stored data
    assert created.key.encode() not in raw
    secret = created.key.split("_", 2)[2]  # the secret itself may contain "_"
    assert secret.encode() not in raw


def test_wrong_tampered_or_foreign_keys_are_refused(key_backend: KeyBackend, tmp_path: Path) -> None:
    store = key_backend.open()
    store.ensure_schema()
    created = store.create(frozenset({Scope.READ}))
    tampered = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")

    assert store.authenticate(tampered) is None
    assert store.authenticate("not-a-key") is None
    assert store.authenticate("") is None
    other_store = key_backend.elsewhere(tmp_path / "other").open()
    other_store.ensure_schema()
    other = other_store.create(frozenset({Scope.READ}))
    assert store.authenticate(other.key) is None


def test_revoked_key_stops_working_for_every_store_instance(key_backend: KeyBackend) -> None:
    first = key_backend.open()
    first.ensure_schema()
    created = first.create(frozenset({Scope.ADMIN}))
    second = key_backend.open()  # e.g. the CLI while the server runs, or another replica
    assert second.authenticate(created.key) is not None
    assert second.get(created.record.id) == created.record

    revoked = second.revoke(created.record.id)

    assert not revoked.active
    assert first.authenticate(created.key) is None
    assert first.get(created.record.id) == revoked
    assert second.revoke(created.record.id) == revoked  # revoking again changes nothing
    assert [key.id for key in first.list(include_revoked=False)] == []
    assert [key.id for key in first.list()] == [created.record.id]
    with pytest.raises(KeyStoreError, match="no API key"):
        first.revoke("000000000000")


def test_create_needs_a_scope_and_lists_in_creation_order(key_backend: KeyBackend) -> None:
    store = key_backend.open()
    store.ensure_schema()
    with pytest.raises(KeyStoreError, match="at least one scope"):
        store.create(frozenset())
    made = [store.create(frozenset({scope}), name=scope.value) for scope in Scope]
    assert store.count() == len(Scope)
    listed = store.list()
    # Oldest first (keys made within one second: SQLite's order among them is by id).
    assert sorted(key.id for key in listed) == sorted(c.record.id for c in made)
    assert [key.created_at for key in listed] == sorted(c.record.created_at for c in made)
    assert [key for key in listed if key.id in {c.record.id for c in made}] == [
        store.get(key.id) for key in listed
    ]
    assert {key.name: key.scopes for key in listed} == {scope.value: {scope} for scope in Scope}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", key.created_at) for key in listed)
    assert store.get("000000000000") is None
    assert store.readable()


def _exported_elsewhere(key_id: str, created_at: str, revoked_at: str | None = None) -> tuple[StoredKey, str]:
    """A key as another store would export it (fixed times, which a copy keeps), and its plaintext."""
    key = f"fsk_{key_id}_copied-secret-{key_id}"
    record = ApiKey(key_id, f"copied {key_id}", frozenset({Scope.READ}), created_at, revoked_at)
    return StoredKey(record, hash_key(key)), key


def test_exported_keys_import_into_another_store_and_work_there(
    key_backend: KeyBackend, tmp_path: Path
) -> None:
    store = key_backend.open()
    assert store.export_keys() == []
    if key_backend.database_url is None:
        assert not (key_backend.data_dir / KEYS_DB_FILE).exists()  # exporting made no file
    store.ensure_schema()
    active = store.create(frozenset({Scope.READ, Scope.ENROLL}), name="kiosk")
    revoked = store.create(frozenset({Scope.ADMIN}), name="old admin")
    store.revoke(revoked.record.id)

    exported = store.export_keys()

    assert [key.record for key in exported] == store.list()  # creation order, revoked ones too
    assert {key.record.id: key.key_sha256 for key in exported} == {
        active.record.id: hash_key(active.key),
        revoked.record.id: hash_key(revoked.key),
    }
    copy = key_backend.elsewhere(tmp_path / "copy").open()
    copy.ensure_schema()
    copy.import_keys(exported)
    # Sorted by id: a PostgreSQL source orders keys made within one second by their sub-second times.
    assert sorted(copy.export_keys(), key=lambda key: key.record.id) == sorted(
        exported, key=lambda key: key.record.id
    )
    assert copy.authenticate(active.key) == store.get(active.record.id)
    assert copy.authenticate(revoked.key) is None
    assert copy.readable()
    assert store.export_keys() == exported  # exporting changed nothing


def test_imported_keys_keep_their_times_and_revocations(key_backend: KeyBackend) -> None:
    store = key_backend.open()
    store.ensure_schema()
    later, later_key = _exported_elsewhere("00000000000a", "2024-05-06T07:08:09+00:00")
    older, older_key = _exported_elsewhere(
        "00000000000b", "2024-04-01T00:00:00+00:00", revoked_at="2024-06-01T12:30:00+00:00"
    )

    store.import_keys([later, older])

    assert store.export_keys() == [older, later]  # creation order, every field as it was
    assert store.authenticate(later_key) == later.record
    assert store.authenticate(older_key) is None  # revoked before the copy: revoked after it
    assert store.count() == 2


def test_an_import_that_clashes_or_is_malformed_writes_nothing(key_backend: KeyBackend) -> None:
    store = key_backend.open()
    store.ensure_schema()
    existing = store.create(frozenset({Scope.READ}), name="here first")
    before = store.export_keys()
    fresh, fresh_key = _exported_elsewhere("0123456789ab", "2024-05-06T07:08:09+00:00")
    refused = {
        f"clash with keys in .*{existing.record.id}": [
            fresh,
            StoredKey(replace(fresh.record, id=existing.record.id), fresh.key_sha256),
        ],
        "clash with keys in .*0123456789ab": [fresh, fresh],
        "malformed hash": [fresh, StoredKey(replace(fresh.record, id="0123456789ac"), "not-a-sha256")],
        "malformed id": [fresh, StoredKey(replace(fresh.record, id="KEY"), fresh.key_sha256)],
        "no scopes": [
            fresh,
            StoredKey(replace(fresh.record, id="0123456789ac", scopes=frozenset()), "a" * 64),
        ],
        "without a time zone": [
            fresh,
            StoredKey(replace(fresh.record, id="0123456789ac", created_at="2024-05-06T07:08:09"), "a" * 64),
        ],
        "malformed revoked_at": [
            fresh,
            StoredKey(replace(fresh.record, id="0123456789ac", revoked_at="yesterday"), "a" * 64),
        ],
    }
    for why, keys in refused.items():
        with pytest.raises(KeyStoreError, match=why) as raised:
            store.import_keys(keys)
        assert not isinstance(raised.value, KeyStoreCorruptError), why  # bad input, not a damaged store
        assert store.export_keys() == before, why
        assert store.authenticate(fresh_key) is None, why
    assert store.readable()

    store.import_keys([fresh])  # the same key alone goes in
    assert store.authenticate(fresh_key) == fresh.record


def test_scopes_parse_and_admin_implies_all() -> None:
    assert parse_scopes(["read,enroll"]) == {Scope.READ, Scope.ENROLL}
    assert parse_scopes(["admin", " read "]) == {Scope.ADMIN, Scope.READ}
    with pytest.raises(KeyStoreError, match="unknown scope"):
        parse_scopes(["root"])
    with pytest.raises(KeyStoreError, match="at least one"):
        parse_scopes([""])
    assert all(grants(frozenset({Scope.ADMIN}), needed) for needed in Scope)
    assert not grants(frozenset({Scope.READ}), Scope.ENROLL)
    assert not grants(frozenset({Scope.ENROLL}), Scope.ADMIN)


def test_first_start_prints_an_admin_key_once(key_backend: KeyBackend) -> None:
    settings = key_backend.settings(api_key=None)
    out = io.StringIO()
    authenticator = bootstrap_authenticator(settings, out=out)
    match = _PRINTED_KEY.search(out.getvalue())
    assert match is not None
    principal = authenticator.authenticate(match.group(1))
    assert principal is not None
    assert principal.scopes == {Scope.ADMIN}

    again = io.StringIO()
    restarted = bootstrap_authenticator(settings, out=again)
    assert again.getvalue() == ""
    assert restarted.authenticate(match.group(1)) is not None
    assert key_backend.stored_rows() == 1
    authenticator.close()
    restarted.close()


def test_explicit_key_is_admin_and_creates_nothing(key_backend: KeyBackend) -> None:
    settings = key_backend.settings(api_key=SecretStr("explicit-test-key-123"))
    out = io.StringIO()
    authenticator = bootstrap_authenticator(settings, out=out)

    principal = authenticator.authenticate("explicit-test-key-123")
    assert principal is not None
    assert principal.key_id == ENV_KEY_ID
    assert principal.scopes == {Scope.ADMIN}
    assert authenticator.authenticate("explicit-test-key-12") is None
    assert authenticator.authenticate(None) is None
    assert out.getvalue() == ""
    assert key_backend.open().count() == 0
    authenticator.close()


def test_auth_disabled_lets_everyone_in_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, auth_enabled=False)
    with caplog.at_level("WARNING"):
        authenticator = bootstrap_authenticator(settings, out=io.StringIO())
    principal = authenticator.authenticate(None)
    assert principal is not None
    assert Scope.ADMIN in principal.scopes
    assert any("DISABLED" in record.message for record in caplog.records)


# --- a corrupt or tampered key store file (issue 9): start refuses, readiness says so, requests get 401
# (the PostgreSQL table's damage: tests/auth/test_postgres_keys.py)


def _hand_edit(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def _truncate_to_one_page(db: Path) -> None:
    with open(db, "r+b") as handle:
        handle.truncate(512)


KEY_STORE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage": lambda db: db.write_bytes(b"\x8f" * db.stat().st_size),
    "zeroed-header": lambda db: db.write_bytes(bytes(100) + db.read_bytes()[100:]),
    "truncated": _truncate_to_one_page,
    "empty-file": lambda db: db.write_bytes(b""),
    "directory": lambda db: (db.unlink(), db.mkdir()),
    "table-dropped": lambda db: _hand_edit(db, "DROP TABLE api_keys"),
    "wrong-table-shape": lambda db: _hand_edit(
        db, "DROP TABLE api_keys", "CREATE TABLE api_keys (id TEXT PRIMARY KEY, secret TEXT)"
    ),
    "extra-column": lambda db: _hand_edit(db, "ALTER TABLE api_keys ADD COLUMN owner TEXT"),
    "hash-not-hex": lambda db: _hand_edit(
        db, "UPDATE api_keys SET key_sha256 = 'zz' || substr(key_sha256, 3)"
    ),
    "hash-too-short": lambda db: _hand_edit(db, "UPDATE api_keys SET key_sha256 = substr(key_sha256, 2)"),
    "hash-non-ascii": lambda db: _hand_edit(
        db, "UPDATE api_keys SET key_sha256 = 'é' || substr(key_sha256, 2)"
    ),
    "hash-as-blob": lambda db: _hand_edit(db, "UPDATE api_keys SET key_sha256 = CAST(key_sha256 AS BLOB)"),
    "unknown-scope": lambda db: _hand_edit(db, "UPDATE api_keys SET scopes = 'root'"),
    "empty-scopes": lambda db: _hand_edit(db, "UPDATE api_keys SET scopes = ''"),
    "id-not-hex": lambda db: _hand_edit(
        db,
        "INSERT INTO api_keys (id, name, scopes, key_sha256, created_at, revoked_at) "
        "SELECT 'x', name, scopes, key_sha256, created_at, revoked_at FROM api_keys",
    ),
    "revoked-at-blob": lambda db: _hand_edit(db, "UPDATE api_keys SET revoked_at = x'01'"),
}


# Damage beside the presented key's row: that key stays valid (the check still fails).
KEY_ROW_INTACT = frozenset({"extra-column", "id-not-hex"})
# A file with no table is an empty store (the service itself creates the file empty, 0600, first).
RECREATED_AT_START = frozenset({"empty-file", "table-dropped"})


def _store_with_a_key(data_dir: Path) -> tuple[SqliteKeyStore, str]:
    store = SqliteKeyStore.in_data_dir(data_dir)
    return store, store.create(frozenset({Scope.READ}), name="before the damage").key


@pytest.mark.parametrize("kind", sorted(KEY_STORE_DAMAGE))
def test_a_damaged_key_store_fails_the_check_and_never_raises_on_authentication(
    kind: str, tmp_path: Path
) -> None:
    store, key = _store_with_a_key(tmp_path)
    assert store.readable()
    KEY_STORE_DAMAGE[kind](store.path)

    assert not store.readable()
    with pytest.raises(KeyStoreCorruptError, match=re.escape(str(store.path))):
        store.check()
    # Never an exception (a 500): the key's own row, when intact, still works; otherwise a 401.
    found = store.authenticate(key)
    assert (found is not None) == (kind in KEY_ROW_INTACT)
    settings = Settings(data_dir=tmp_path, auth_enabled=True)
    if kind in RECREATED_AT_START:  # an empty database: start makes the table (and a new admin key)
        printed = io.StringIO()
        bootstrap_authenticator(settings, out=printed)
        assert store.readable()
        assert _PRINTED_KEY.search(printed.getvalue()) is not None
        return
    with pytest.raises(KeyStoreCorruptError, match="face-service keys create --scopes admin"):
        bootstrap_authenticator(settings, out=io.StringIO())


@pytest.mark.parametrize("kind", sorted(set(KEY_STORE_DAMAGE) - RECREATED_AT_START))
def test_serve_refuses_a_damaged_key_store_with_one_line(
    kind: str,
    tmp_path: Path,
    default_pack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    store, _ = _store_with_a_key(tmp_path)
    KEY_STORE_DAMAGE[kind](store.path)
    for name, value in {
        "FACE_DATA_DIR": str(tmp_path),
        "FACE_MODELS_DIR": str(default_pack_dir.parent),
        "FACE_PACK": default_pack_dir.name,
        "FACE_DEVICE": "cpu",
        "FACE_INTRA_OP_THREADS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FACE_API_KEY", raising=False)

    assert main(["serve", "--port", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("face-service: cannot start: the API key store")
    assert str(store.path) in err[0]


def test_readiness_and_requests_when_the_key_store_goes_bad_while_serving(
    tmp_path: Path, default_pack_dir: Path
) -> None:
    from tests.api.conftest import running_app

    store, key = _store_with_a_key(tmp_path)
    healthy = store.path.read_bytes()
    with running_app(tmp_path, default_pack_dir) as client:
        assert client.get("/readyz").json()["checks"]["keys"] is True
        assert client.get("/v1/info", headers={"X-API-Key": key}).status_code == 200
        for kind, damage in sorted(KEY_STORE_DAMAGE.items()):
            damage(store.path)
            ready = client.get("/readyz")
            assert ready.status_code == 503, kind
            assert ready.json()["checks"] == {"models": True, "gallery": True, "keys": False}, kind
            answer = client.get("/v1/info", headers={"X-API-Key": key})
            if kind in KEY_ROW_INTACT:
                assert answer.status_code == 200, (kind, answer.text)
            else:
                assert answer.status_code == 401, (kind, answer.text)
                assert answer.json()["type"].endswith("invalid_api_key")
            if store.path.is_dir():
                store.path.rmdir()
            store.path.write_bytes(healthy)  # restored: both work again
            assert client.get("/readyz").status_code == 200, kind
            assert client.get("/v1/info", headers={"X-API-Key": key}).status_code == 200, kind


def test_authentication_reads_only(tmp_path: Path) -> None:
    """A read-only key store file (as on a full or read-only disk) still authenticates."""
    store, key = _store_with_a_key(tmp_path)
    store.path.chmod(0o400)
    tmp_path.chmod(0o500)
    try:
        before = store.path.read_bytes()
        assert store.authenticate(key) is not None
        assert store.path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [KEYS_DB_FILE]  # no -journal, -wal, -shm
    finally:
        tmp_path.chmod(0o700)
        store.path.chmod(0o600)


@pytest.mark.parametrize("kind", sorted(set(KEY_STORE_DAMAGE) - RECREATED_AT_START - KEY_ROW_INTACT))
@pytest.mark.parametrize("command", [["list"], ["create", "--scopes", "read"], ["revoke", "000000000000"]])
def test_keys_commands_on_a_damaged_store_print_one_line(
    kind: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    store, _ = _store_with_a_key(tmp_path)
    KEY_STORE_DAMAGE[kind](store.path)
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path))

    assert main(["keys", *command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"face-service: the API key store {store.path} is unreadable or tampered with")


# An extra column: every row still reads (``check``, which migrate runs first, refuses the file).
@pytest.mark.parametrize("kind", sorted(set(KEY_STORE_DAMAGE) - {"extra-column"}))
def test_a_damaged_key_store_is_not_exported(kind: str, tmp_path: Path) -> None:
    store, _ = _store_with_a_key(tmp_path)
    KEY_STORE_DAMAGE[kind](store.path)
    with pytest.raises(KeyStoreCorruptError, match=re.escape(str(store.path))):
        store.export_keys()


# --- keys in the shared database (FACE_DATABASE_URL): what the API answers while it is down


def _stored_admin_key(pg_url: str) -> str:
    store = PostgresKeyStore.open(pg_url, PoolOptions(timeout_s=1.0))
    try:
        return store.create(frozenset({Scope.ADMIN}), name="replica test").key
    finally:
        store.close()


def _wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_readiness_fails_while_the_shared_key_database_is_down_and_recovers(
    pg_url: str, postgres_server: PostgresServer, tmp_path: Path, default_pack_dir: Path
) -> None:
    from tests.api.conftest import running_app

    key = _stored_admin_key(pg_url)
    headers = {"X-API-Key": key}
    with running_app(tmp_path, default_pack_dir, database_url=SecretStr(pg_url), db_timeout_s=1.0) as client:
        assert client.get("/v1/keys", headers=headers).status_code == 200  # the key came from the database
        assert client.get("/readyz").json()["checks"]["keys"] is True
        postgres_server.stop()
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["keys"] is False
        finally:
            postgres_server.start()
        assert _wait_for(lambda: client.get("/readyz").json()["checks"]["keys"] is True)
        assert client.get("/v1/keys", headers=headers).status_code == 200


@pytest.mark.parametrize("with_body", [False, True], ids=["get", "post"])
def test_requests_get_503_not_401_or_500_while_the_shared_key_database_is_down(
    with_body: bool, pg_url: str, postgres_server: PostgresServer, tmp_path: Path, default_pack_dir: Path
) -> None:
    from tests.api.conftest import running_app

    key = _stored_admin_key(pg_url)
    headers = {"X-API-Key": key}
    with running_app(tmp_path, default_pack_dir, database_url=SecretStr(pg_url), db_timeout_s=1.0) as client:
        postgres_server.stop()
        try:
            if with_body:  # the early (pre-body) key check and the route's own
                answer = client.post("/v1/keys", json={"scopes": ["read"]}, headers=headers)
            else:
                answer = client.get("/v1/keys", headers=headers)
        finally:
            postgres_server.start()
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"].endswith("keys_unavailable")
        assert "Retry-After" in answer.headers
