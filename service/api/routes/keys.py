"""API key management (admin scope): create (the key is returned once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import AdminAccess, Services
from service.api.errors import ApiError
from service.api.presenters import key_out
from service.api.responses import AUTH_ERRORS, NOT_FOUND
from service.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from service.auth.keys import KeyStoreError

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=AUTH_ERRORS)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create an API key (returned once)")
async def create_key(body: KeyCreate, services: Services, _: AdminAccess) -> KeyCreated:
    created = await run_in_threadpool(services.authenticator.store.create, frozenset(body.scopes), body.name)
    return KeyCreated(**key_out(created.record).model_dump(), key=created.key)


@router.get("", summary="List API keys (never the keys themselves)")
async def list_keys(services: Services, _: AdminAccess) -> KeyList:
    records = await run_in_threadpool(services.authenticator.store.list)
    return KeyList(keys=[key_out(record) for record in records])


@router.delete("/{key_id}", summary="Revoke an API key", responses=NOT_FOUND)
async def revoke_key(key_id: str, services: Services, _: AdminAccess) -> KeyOut:
    try:
        record = await run_in_threadpool(services.authenticator.store.revoke, key_id)
    except KeyStoreError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return key_out(record)
