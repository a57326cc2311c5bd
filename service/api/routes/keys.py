"""API key management (admin scope): create (the key is returned once), list, revoke; and, for any valid
key, ``/v1/keys/me``: the caller's own key (front ends show only what its scopes allow)."""

from __future__ import annotations

from fastapi import APIRouter, status

from service.api.deps import AdminAccess, AnyKey, Resources
from service.api.presenters import caller_key_out, key_out
from service.api.responses import AUTH_ERRORS, NOT_FOUND
from service.api.schemas import CallerKeyOut, KeyCreate, KeyCreated, KeyList, KeyOut
from service.usecases import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=AUTH_ERRORS)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create an API key (returned once)")
async def create_key(body: KeyCreate, resources: Resources, _: AdminAccess) -> KeyCreated:
    created = await keys.create_key(resources, body.scopes, body.name, body.collections)
    return KeyCreated(**key_out(created.record).model_dump(), key=created.key)


@router.get("", summary="List API keys (never the keys themselves)")
async def list_keys(resources: Resources, _: AdminAccess) -> KeyList:
    return KeyList(keys=[key_out(record) for record in await keys.list_keys(resources)])


# Before the /{key_id} routes, so that "me" is never taken for a key id.
@router.get(
    "/me",
    summary="The key this request was made with: id, name, scopes, collections",
    description="Any valid key may ask, whatever its scopes; the secret is never returned. A front end "
    "uses it to offer only what the key may do.",
)
async def my_key(resources: Resources, caller: AnyKey) -> CallerKeyOut:
    return caller_key_out(await keys.caller_key(resources, caller))


@router.delete("/{key_id}", summary="Revoke an API key", responses=NOT_FOUND)
async def revoke_key(key_id: str, resources: Resources, _: AdminAccess) -> KeyOut:
    return key_out(await keys.revoke_key(resources, key_id))
