"""Who is calling: the explicit admin key from settings, keys from the store, or auth switched off."""

from __future__ import annotations

import logging
import sqlite3
import sys
from dataclasses import dataclass
from typing import TextIO

from service.auth.keys import (
    ApiKey,
    KeyStore,
    KeyStoreCorruptError,
    Scope,
    SqliteKeyStore,
    hash_key,
    key_matches,
)
from service.auth.stores import open_key_store
from service.command_hints import command_hint
from service.settings import Settings

logger = logging.getLogger(__name__)

ENV_KEY_ID = "env"  # the key id reported for FACE_API_KEY
AUTH_OFF_KEY_ID = "auth-disabled"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a key id (never the key), its scopes and the collections it may use."""

    key_id: str
    scopes: frozenset[Scope]
    collections: frozenset[str] | None = None  # None: every collection (FACE_API_KEY, auth off)

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


class Authenticator:
    def __init__(self, store: KeyStore, *, explicit_key_sha256: str | None, enabled: bool) -> None:
        self.store = store
        self._explicit_key_sha256 = explicit_key_sha256
        self.enabled = enabled

    def authenticate(self, presented: str | None) -> Principal | None:
        """The caller behind ``presented``, or None when the key is missing, unknown or revoked.

        Raises KeyStoreUnavailableError when a shared key database cannot be reached (a 503: the key
        may be valid).
        """
        if not self.enabled:
            return Principal(AUTH_OFF_KEY_ID, frozenset(Scope))
        if not presented:
            return None
        if self._explicit_key_sha256 is not None and key_matches(presented, self._explicit_key_sha256):
            return Principal(ENV_KEY_ID, frozenset({Scope.ADMIN}))
        record: ApiKey | None = self.store.authenticate(presented)
        return None if record is None else Principal(record.id, record.scopes, record.collections)

    def store_ready(self) -> bool:
        """Readiness: the key store reads cleanly (trivially true with auth off)."""
        return not self.enabled or self.store.readable()

    def close(self) -> None:
        """Release the key store (a shared database's connection pool)."""
        self.store.close()


def bootstrap_authenticator(settings: Settings, *, out: TextIO | None = None) -> Authenticator:
    """Build the authenticator at start-up.

    ``FACE_API_KEY`` is an explicit admin key. Without it, and with no key stored yet, the first start
    creates an admin key, keeps its hash and prints the key once to ``out`` (stdout): the operator's only
    chance to copy it. With a shared database, replicas starting together create one such key between
    them (the store's ``create_if_empty``), printed only by the replica that made it.
    ``FACE_AUTH_ENABLED=false`` turns auth off, with a warning. A key store that cannot be read raises
    KeyStoreCorruptError, one that cannot be reached KeyStoreUnavailableError (start-up errors).
    """
    store = open_key_store(settings)
    try:
        return _authenticator_on(store, settings, out)
    except BaseException:
        store.close()
        raise


def _authenticator_on(store: KeyStore, settings: Settings, out: TextIO | None) -> Authenticator:
    if not settings.auth_enabled:
        logger.warning("authentication is DISABLED (FACE_AUTH_ENABLED=false): every request is admin")
        return Authenticator(store, explicit_key_sha256=None, enabled=False)
    try:
        store.ensure_schema()
    except sqlite3.Error as error:  # not a database, or a directory in its place
        if not isinstance(store, SqliteKeyStore):
            raise
        raise KeyStoreCorruptError.in_file(store.path, str(error)) from None
    store.check()  # a corrupt or tampered store stops the start with one clear line
    explicit = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if explicit:
        return Authenticator(store, explicit_key_sha256=hash_key(explicit), enabled=True)
    created = store.create_if_empty(frozenset({Scope.ADMIN}), name="bootstrap admin")
    if created is not None:
        _print_bootstrap_key(created.record.id, created.key, settings, out)
    return Authenticator(store, explicit_key_sha256=None, enabled=True)


def _print_bootstrap_key(key_id: str, key: str, settings: Settings, out: TextIO | None) -> None:
    stream = out if out is not None else sys.stdout
    # Pasteable as printed: the venv's path when it is not on PATH, and this start's data dir.
    more_keys = command_hint("face-service", "keys", "create", "--scopes", "read", data_dir=settings.data_dir)
    where = " (with the same FACE_DATABASE_URL)" if settings.database_url is not None else ""
    print(
        "No API key configured: created an admin key (shown once; store it now).\n"
        f"  key id: {key_id}\n"
        f"  key:    {key}\n"
        f"Create more with `{more_keys}`{where}.",
        file=stream,
        flush=True,
    )
    logger.info("created the bootstrap admin key %s (printed once to stdout)", key_id)
