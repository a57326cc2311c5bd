"""API keys in the shared PostgreSQL database: replicas, the one bootstrap key, the CLI, outages, damage.

The store-level contract (hashes only, revocation, scopes) runs on both backends in
tests/api/test_auth_keys.py; these are what only a shared database has.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from service.auth.authenticator import Authenticator, bootstrap_authenticator
from service.auth.keys import (
    KEYS_DB_FILE,
    ApiKey,
    KeyStoreCorruptError,
    KeyStoreError,
    KeyStoreUnavailableError,
    Scope,
    StoredKey,
    hash_key,
)
from service.auth.postgres_keys import PostgresKeyStore
from service.cli import main
from service.postgres.migrations import SchemaTooNewError
from service.postgres.pool import PoolOptions
from service.settings import Settings
from tests.auth.key_backends import KeyBackend, key_backend
from tests.postgres_server import PostgresServer

__all__ = ["key_backend"]

_PRINTED_KEY = re.compile(r"key:\s+(fsk_\S+)")
_KEY_ID_LINE = re.compile(r"key id: ([0-9a-f]{12})")
REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = PoolOptions(min_size=1, max_size=4, timeout_s=1.0)
# Nothing listens on port 1: a database that cannot be reached, with a password to keep out of messages.
UNREACHABLE_URL = "postgresql://face:pw-s3cret-do-not-print@127.0.0.1:1/face?connect_timeout=1"


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[PostgresKeyStore]]:
    """Two stores on one database, as two replicas have (closed after the test)."""
    opened = [PostgresKeyStore.open(pg_url, FAST) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def test_a_key_made_on_one_replica_works_on_another_until_revoked_there(
    stores: list[PostgresKeyStore],
) -> None:
    first, second = stores
    created = first.create(frozenset({Scope.ENROLL}), name="kiosk")

    seen = second.authenticate(created.key)
    assert seen == created.record
    assert [key.id for key in second.list()] == [created.record.id]

    second.revoke(created.record.id)

    assert first.authenticate(created.key) is None
    revoked = first.get(created.record.id)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert first.list(include_revoked=False) == []


def test_the_table_is_made_by_migration_and_holds_only_hashes(
    pg_url: str, stores: list[PostgresKeyStore]
) -> None:
    created = stores[0].create(frozenset({Scope.READ}))
    with psycopg.connect(pg_url) as conn:
        ledger = conn.execute("SELECT component, version FROM schema_migrations").fetchall()
        hashes = conn.execute("SELECT key_sha256 FROM api_keys").fetchall()
        # The table refuses rows the service would not write (not only the code reading them).
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO api_keys (id, name, scopes, key_sha256) VALUES ('abcdef012345', '', "
                "ARRAY['root'], repeat('0', 64))"
            )
    assert sorted(ledger) == [("keys", 1), ("keys", 2)]
    assert [row[0] for row in hashes] == [hash_key(created.key)]


def _bootstrap_all(settings: Settings, replicas: int) -> tuple[list[Authenticator], list[str]]:
    """``replicas`` start-ups at the same moment (threads, each with its own store and connections)."""
    barrier = threading.Barrier(replicas)
    outputs = [io.StringIO() for _ in range(replicas)]
    authenticators: list[Authenticator | None] = [None] * replicas
    errors: list[BaseException] = []

    def start(slot: int) -> None:
        try:
            barrier.wait(timeout=30)
            authenticators[slot] = bootstrap_authenticator(settings, out=outputs[slot])
        except BaseException as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=start, args=(slot,)) for slot in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return [a for a in authenticators if a is not None], [out.getvalue() for out in outputs]


def test_replicas_starting_together_create_one_admin_key(key_backend: KeyBackend) -> None:
    settings = key_backend.settings(api_key=None, db_pool_min_size=1, db_pool_max_size=2)
    authenticators, outputs = _bootstrap_all(settings, replicas=8)
    try:
        printed = [match.group(1) for out in outputs if (match := _PRINTED_KEY.search(out))]
        assert len(printed) == 1, outputs
        assert sum(1 for out in outputs if out) == 1  # the others print nothing at all
        assert key_backend.stored_rows() == 1
        assert len(authenticators) == 8
        for authenticator in authenticators:  # the one key works on every replica
            principal = authenticator.authenticate(printed[0])
            assert principal is not None
            assert principal.scopes == {Scope.ADMIN}
    finally:
        for authenticator in authenticators:
            authenticator.close()


_START_REPLICA = """
import os, sys, time
from pathlib import Path
from service.auth.authenticator import bootstrap_authenticator
from service.settings import load_settings
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
bootstrap_authenticator(load_settings()).close()
"""


def test_replica_processes_starting_together_print_one_admin_key(pg_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "FACE_DATABASE_URL": pg_url, "FACE_DATA_DIR": str(tmp_path / "data")}
    env.pop("FACE_API_KEY", None)
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", _START_REPLICA, str(go)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        go.touch()  # all four are importing or waiting: they bootstrap at about the same moment
        results = [replica.communicate(timeout=120) for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    assert [replica.returncode for replica in replicas] == [0] * 4, results
    printed = [match.group(1) for out, _ in results if (match := _PRINTED_KEY.search(out))]
    assert len(printed) == 1, results
    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        assert store.count() == 1
        assert store.authenticate(printed[0]) is not None
    finally:
        store.close()
    assert not (tmp_path / "data" / KEYS_DB_FILE).exists()  # nothing went to the data dir


@pytest.fixture
def cli_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FACE_DATABASE_URL", pg_url)
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FACE_API_KEY", raising=False)
    return pg_url


def test_keys_commands_work_on_the_shared_database(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--scopes", "read,enroll", "--name", "ci"]) == 0
    out = capsys.readouterr().out
    key_match, id_match = _PRINTED_KEY.search(out), _KEY_ID_LINE.search(out)
    assert key_match is not None
    assert id_match is not None
    key, key_id = key_match.group(1), id_match.group(1)
    replica = PostgresKeyStore.open(cli_env, FAST)  # the server's store, opened before the revocation
    try:
        found = replica.authenticate(key)
        assert found is not None
        assert found.scopes == {Scope.READ, Scope.ENROLL}
        assert found.name == "ci"

        assert main(["keys", "list"]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert len(listed) == 2
        assert listed[1].split()[:3] == [key_id, "enroll,read", found.created_at]

        assert main(["keys", "revoke", key_id]) == 0
        assert capsys.readouterr().out.startswith(f"revoked {key_id} (")
        assert replica.authenticate(key) is None
    finally:
        replica.close()
    assert main(["keys", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert main(["keys", "list", "--all"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "000000000000"]) == 1
    assert capsys.readouterr().err.strip() == "face-service: no API key with id '000000000000'"
    assert not (tmp_path / KEYS_DB_FILE).exists()


@pytest.mark.parametrize("command", [["list"], ["create", "--scopes", "read"], ["revoke", "000000000000"]])
def test_keys_commands_on_an_unreachable_database_print_one_line_without_the_password(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACE_DATABASE_URL", UNREACHABLE_URL)
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACE_DB_TIMEOUT_S", "1")

    assert main(["keys", *command]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("face-service: the API key store cannot be used now")
    assert "127.0.0.1:1" in err[0]
    assert "***" in err[0]
    assert "pw-s3cret" not in captured.err + captured.out


def test_an_unreachable_database_fails_the_start_without_the_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(UNREACHABLE_URL), db_timeout_s=1.0)
    with pytest.raises(KeyStoreUnavailableError) as raised:
        bootstrap_authenticator(settings, out=io.StringIO())
    assert "pw-s3cret" not in str(raised.value)
    assert "face:***@127.0.0.1:1" in str(raised.value)


def test_an_outage_makes_the_store_unavailable_not_empty_and_it_recovers(
    pg_url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        key = store.create(frozenset({Scope.READ})).key
        postgres_server.stop()
        try:
            with caplog.at_level("WARNING"):
                assert not store.readable()  # readiness fails, without raising
            assert any("unavailable" in record.getMessage() for record in caplog.records)
            # Neither accepted nor refused: the caller answers 503, the key may be valid.
            with pytest.raises(KeyStoreUnavailableError, match="retry shortly"):
                store.authenticate(key)
            with pytest.raises(KeyStoreUnavailableError):
                store.create(frozenset({Scope.READ}))
        finally:
            postgres_server.start()
        # Broken connections are replaced (the pool reconnects with a backoff): no restart needed.
        deadline = time.monotonic() + 30
        while not store.readable() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.readable()
        assert store.authenticate(key) is not None
        assert store.count() == 1  # the create during the outage left nothing behind
    finally:
        store.close()


def _damage(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement.encode())


# Hand edits to the table; the constraints that would refuse them are dropped first.
TABLE_DAMAGE: dict[str, tuple[str, ...]] = {
    "table-dropped": ("DROP TABLE api_keys",),
    "extra-column": ("ALTER TABLE api_keys ADD COLUMN owner TEXT",),
    "hash-not-hex": (
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_key_sha256_check",
        "UPDATE api_keys SET key_sha256 = 'zz' || substr(key_sha256, 3)",
    ),
    "unknown-scope": (
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check",
        "UPDATE api_keys SET scopes = ARRAY['root']",
    ),
    "created-at-as-text": ("ALTER TABLE api_keys ALTER COLUMN created_at TYPE TEXT",),
    "id-not-hex": (
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_id_check",
        "INSERT INTO api_keys SELECT 'x', name, scopes, key_sha256, created_at, revoked_at FROM api_keys",
    ),
}
KEY_ROW_INTACT = frozenset({"extra-column", "id-not-hex"})


@pytest.mark.parametrize("kind", sorted(TABLE_DAMAGE))
def test_a_damaged_table_fails_the_check_and_the_start_and_never_raises_on_authentication(
    kind: str, pg_url: str, tmp_path: Path
) -> None:
    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        key = store.create(frozenset({Scope.READ})).key
        assert store.readable()
        _damage(pg_url, *TABLE_DAMAGE[kind])

        assert not store.readable()
        with pytest.raises(KeyStoreCorruptError, match="table api_keys"):
            store.check()
        assert (store.authenticate(key) is not None) == (kind in KEY_ROW_INTACT)
    finally:
        store.close()
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(pg_url))
    with pytest.raises(KeyStoreCorruptError, match="face-service keys create --scopes admin"):
        bootstrap_authenticator(settings, out=io.StringIO())


# An extra column: every row still reads (``check``, which migrate runs first, refuses the table).
@pytest.mark.parametrize("kind", sorted(set(TABLE_DAMAGE) - {"extra-column"}))
def test_a_damaged_table_is_not_exported(kind: str, pg_url: str) -> None:
    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        store.create(frozenset({Scope.READ}))
        _damage(pg_url, *TABLE_DAMAGE[kind])
        with pytest.raises(KeyStoreCorruptError, match="table api_keys"):
            store.export_keys()
    finally:
        store.close()


def test_an_import_racing_a_key_made_meanwhile_is_refused_whole(pg_url: str) -> None:
    """A key stored between the import's clash check and its insert (a trigger plays the other replica)."""
    copied = [
        StoredKey(
            ApiKey(key_id, "copied", frozenset({Scope.READ}), "2024-05-06T07:08:09+00:00"),
            hash_key(f"fsk_{key_id}_secret"),
        )
        for key_id in ("00000000000a", "00000000000b")
    ]
    store = PostgresKeyStore.open(pg_url, FAST)
    try:
        _damage(
            pg_url,
            "CREATE FUNCTION make_key_meanwhile() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO api_keys (id, name, scopes, key_sha256) "
            f"VALUES ('00000000000b', 'meanwhile', ARRAY['read'], '{'c' * 64}'); RETURN NULL; END $$",
            "CREATE TRIGGER make_key_meanwhile BEFORE INSERT ON api_keys FOR EACH STATEMENT "
            "WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION make_key_meanwhile()",
        )
        with pytest.raises(
            KeyStoreError,
            match=r"clash with keys in .*\(id\)=\(00000000000b\) already exists.*nothing was imported",
        ) as raised:
            store.import_keys(copied)
        assert not isinstance(raised.value, KeyStoreCorruptError)
        assert store.export_keys() == []  # neither copied key, nor the trigger's (the same transaction)
    finally:
        store.close()


def test_a_database_migrated_by_a_newer_build_is_refused(pg_url: str) -> None:
    PostgresKeyStore.open(pg_url, FAST).close()
    _damage(pg_url, "INSERT INTO schema_migrations (component, version, description) VALUES ('keys', 3, 'x')")
    with pytest.raises(SchemaTooNewError, match="keys schema is at version 3"):
        PostgresKeyStore.open(pg_url, FAST)
