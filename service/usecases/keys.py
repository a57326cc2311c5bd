"""Manage API keys: create (the key is returned once), list, revoke."""

from __future__ import annotations

from collections.abc import Iterable

from service.auth.keys import ApiKey, CreatedKey, KeyStoreError, Scope
from service.usecases.errors import KeyNotFoundError
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


async def create_key(resources: ServiceResources, scopes: Iterable[Scope], name: str) -> CreatedKey:
    return await in_worker(resources.authenticator.store.create, frozenset(scopes), name)


async def list_keys(resources: ServiceResources) -> list[ApiKey]:
    return await in_worker(resources.authenticator.store.list)


async def revoke_key(resources: ServiceResources, key_id: str) -> ApiKey:
    try:
        return await in_worker(resources.authenticator.store.revoke, key_id)
    except KeyStoreError as exc:
        raise KeyNotFoundError(str(exc)) from None
