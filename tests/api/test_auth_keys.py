"""API keys: hashed storage, scopes, revocation, and the first-start bootstrap."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.auth.authenticator import ENV_KEY_ID, bootstrap_authenticator
from service.auth.keys import KEYS_DB_FILE, KeyStore, KeyStoreError, Scope, grants, parse_scopes
from service.settings import Settings

_PRINTED_KEY = re.compile(r"key:\s+(fsk_\S+)")


def test_created_key_authenticates_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    created = store.create(frozenset({Scope.READ, Scope.ENROLL}), name="kiosk")

    found = store.authenticate(created.key)
    assert found is not None
    assert found.id == created.record.id
    assert found.scopes == {Scope.READ, Scope.ENROLL}
    raw = (tmp_path / KEYS_DB_FILE).read_bytes()
    assert created.key.encode() not in raw
    secret = created.key.split("_", 2)[2]  # the secret itself may contain "_"
    assert secret.encode() not in raw


def test_wrong_tampered_or_foreign_keys_are_refused(tmp_path: Path) -> None:
    store = KeyStore.in_data_dir(tmp_path)
    created = store.create(frozenset({Scope.READ}))
    tampered = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")

    assert store.authenticate(tampered) is None
    assert store.authenticate("not-a-key") is None
    assert store.authenticate("") is None
    other = KeyStore.in_data_dir(tmp_path / "other").create(frozenset({Scope.READ}))
    assert store.authenticate(other.key) is None


def test_revoked_key_stops_working_for_every_store_instance(tmp_path: Path) -> None:
    first = KeyStore.in_data_dir(tmp_path)
    created = first.create(frozenset({Scope.ADMIN}))
    second = KeyStore.in_data_dir(tmp_path)  # e.g. the CLI while the server runs
    assert second.authenticate(created.key) is not None

    revoked = second.revoke(created.record.id)

    assert not revoked.active
    assert first.authenticate(created.key) is None
    assert [key.id for key in first.list(include_revoked=False)] == []
    with pytest.raises(KeyStoreError, match="no API key"):
        first.revoke("000000000000")


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


def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_key=None)
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
    with sqlite3.connect(tmp_path / KEYS_DB_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 1


def test_explicit_key_is_admin_and_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_key=SecretStr("explicit-test-key-123"))
    out = io.StringIO()
    authenticator = bootstrap_authenticator(settings, out=out)

    principal = authenticator.authenticate("explicit-test-key-123")
    assert principal is not None
    assert principal.key_id == ENV_KEY_ID
    assert principal.scopes == {Scope.ADMIN}
    assert authenticator.authenticate("explicit-test-key-12") is None
    assert authenticator.authenticate(None) is None
    assert out.getvalue() == ""
    assert KeyStore.in_data_dir(tmp_path).count() == 0


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
