"""GET /v1/keys/me: the caller's own key (id, name, scopes) for any valid key, whatever its scopes."""

from __future__ import annotations

from tests.api.routes.gallery import Enrolled, H


def test_every_valid_key_learns_its_id_name_and_scopes(enrolled: Enrolled) -> None:
    client = enrolled.client
    assert client.get("/v1/keys/me", headers=H).json() == {
        "id": "env",
        "name": "FACE_API_KEY",
        "scopes": ["admin"],
        "collections": None,  # FACE_API_KEY: every collection
    }
    for name, scopes in (("kiosk", ["read"]), ("enroller", ["enroll"]), ("ops", ["enroll", "read"])):
        created = client.post("/v1/keys", json={"name": name, "scopes": scopes}, headers=H).json()
        me = client.get("/v1/keys/me", headers={"X-API-Key": created["key"]})
        # An enroll-only key has no read scope and still gets its answer: any valid key may ask.
        assert me.status_code == 200, me.text
        assert me.json() == {"id": created["id"], "name": name, "scopes": sorted(scopes), "collections": None}
        assert created["key"] not in me.text


def test_a_missing_unknown_or_revoked_key_is_401(enrolled: Enrolled) -> None:
    client = enrolled.client
    created = client.post("/v1/keys", json={"name": "short-lived", "scopes": ["read"]}, headers=H).json()
    bearer = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/v1/keys/me", headers=bearer).json()["id"] == created["id"]
    assert client.delete(f"/v1/keys/{created['id']}", headers=H).status_code == 200
    assert client.get("/v1/keys/me", headers=bearer).status_code == 401
    assert client.get("/v1/keys/me").status_code == 401
    assert client.get("/v1/keys/me", headers={"X-API-Key": "not-a-key"}).status_code == 401
    # "me" is the caller's own key, never a key id: revoking "me" finds no such key.
    assert client.delete("/v1/keys/me", headers=H).status_code == 404
