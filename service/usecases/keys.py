"""Manage API keys: create (the key is returned once), list, revoke; who the caller's key is.

A new key may be limited to collections: only ones this service has (``default`` and
``FACE_COLLECTIONS``'s), and never an admin key (it manages every collection's keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service.auth.authenticator import AUTH_OFF_KEY_ID, ENV_KEY_ID, Principal
from service.auth.keys import (
    ApiKey,
    CreatedKey,
    KeyCollectionsError,
    KeyStoreError,
    Scope,
    key_collections,
    known_collections,
)
from service.usecases.errors import KeyCollectionsRefusedError, KeyNotFoundError
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


async def create_key(
    resources: ServiceResources,
    scopes: Iterable[Scope],
    name: str,
    collections: Iterable[str] | None = None,
    *,
    collections_field: str = "body.collections",
) -> CreatedKey:
    """A new key; ``collections`` limits it (None: every collection)."""
    scope_set = frozenset(scopes)
    try:
        limited = key_collections(scope_set, collections, known_collections(resources.settings))
    except KeyCollectionsError as error:
        raise KeyCollectionsRefusedError(error.code, error.detail, collections_field) from None
    return await in_worker(resources.authenticator.store.create, scope_set, name, limited)


async def list_keys(resources: ServiceResources) -> list[ApiKey]:
    return await in_worker(resources.authenticator.store.list)


async def revoke_key(resources: ServiceResources, key_id: str) -> ApiKey:
    try:
        return await in_worker(resources.authenticator.store.revoke, key_id)
    except KeyStoreError as exc:
        raise KeyNotFoundError(str(exc)) from None


# Keys that are no row of the key store: FACE_API_KEY, and every caller when auth is off.
_UNSTORED_KEY_NAMES = {ENV_KEY_ID: "FACE_API_KEY", AUTH_OFF_KEY_ID: "authentication disabled"}


@dataclass(frozen=True)
class CallerKey:
    id: str
    name: str
    scopes: frozenset[Scope]
    collections: frozenset[str] | None  # None: every collection


async def caller_key(resources: ServiceResources, principal: Principal) -> CallerKey:
    """The key the caller authenticated with: its id, name, scopes and collections (never the key)."""
    name = _UNSTORED_KEY_NAMES.get(principal.key_id)
    if name is None:
        record = await in_worker(resources.authenticator.store.get, principal.key_id)
        # Revoked between authentication and now: the scopes it was accepted with still answer.
        name = record.name if record is not None else ""
    return CallerKey(principal.key_id, name, principal.scopes, principal.collections)
