"""What is stored must read back: names and metadata are checked before writing, reads survive any row.

Classes covered (hypothesis unless noted):
- names with a refused character (C0/C1 controls incl. NUL, CR/LF, ESC; lone surrogates; line and
  paragraph separators; bidi controls) on create, rename and key creation: 422 naming the field,
  nothing stored or changed; names of any other Unicode (emoji with ZWJ, RTL scripts) round-trip.
- metadata that can't be stored: lone surrogates in values or keys, NaN/±Infinity, nesting past the
  depth limit (up to 600 levels), too many keys, too long keys, too large, integers past 64 bits:
  422 naming ``body.metadata``, nothing stored or changed; the limits themselves are accepted.
- rows an older version (or a hand edit) left in the SQLite file that can't be serialized: list and
  read answer 200 across restarts, and such a subject can be fixed or deleted by its id.
- pagination cursors that decode to anything but a seq in SQLite's range: 422 ``invalid_cursor``.
- similarities: clamped to [-1, 1], on real images compared with themselves.
"""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.auth.keys import SqliteKeyStore
from service.gallery.input_limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_NAME_CHARS,
)
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore
from service.gallery.store import UNREADABLE_METADATA_KEY
from service.usecases.verify import cosine
from tests.api.conftest import Person, admin_headers, running_app

H = admin_headers()
JSON_HEADERS = {**H, "content-type": "application/json"}
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[TestClient]:
    with running_app(tmp_path_factory.mktemp("stored-input"), default_pack_dir) as running:
        yield running


@pytest.fixture(scope="module")
def existing(client: TestClient) -> dict[str, Any]:
    """A valid subject that refused updates must leave exactly as it is."""
    created = client.post("/v1/subjects", json={"name": "Ada", "metadata": {"team": "B"}}, headers=H)
    assert created.status_code == 201, created.text
    return dict(created.json())


def _raw_json(body: dict[str, Any]) -> bytes:
    """JSON as a careless client sends it: lone surrogates as \\ud800 escapes, NaN/Infinity as bare words."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode("ascii")


def _subject_count(client: TestClient) -> int:
    return int(client.get("/v1/info", headers=H).json()["gallery"]["subjects"])


def _assert_refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"].endswith(":validation_error"), body
    assert [error["field"] for error in body["errors"]] == [field], body


def _assert_nothing_changed(client: TestClient, existing: dict[str, Any], subjects_before: int) -> None:
    assert _subject_count(client) == subjects_before
    assert client.get(f"/v1/subjects/{existing['id']}", headers=H).json() == existing
    listed = client.get("/v1/subjects", params={"limit": 500}, headers=H)
    assert listed.status_code == 200, listed.text


# ------------------------------------------------------------------------------------------ names

REFUSED_NAME_CHARS = st.one_of(
    st.characters(categories=["Cc"]),  # NUL, TAB, CR, LF, ESC (ANSI escapes), DEL, C1 controls
    st.characters(categories=["Cs"]),  # lone UTF-16 surrogates
    st.sampled_from(["\u2028", "\u2029"]),  # line / paragraph separators
    st.sampled_from(BIDI_CONTROLS),
)
PLAIN_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"], exclude_characters=BIDI_CONTROLS),
    max_size=40,
)
BAD_NAMES = st.builds(lambda head, char, tail: head + char + tail, PLAIN_TEXT, REFUSED_NAME_CHARS, PLAIN_TEXT)


@EXAMPLES
@given(name=BAD_NAMES)
def test_names_with_control_surrogate_or_bidi_characters_are_refused_everywhere(
    client: TestClient, existing: dict[str, Any], name: str
) -> None:
    before = _subject_count(client)
    created = client.post("/v1/subjects", content=_raw_json({"name": name}), headers=JSON_HEADERS)
    _assert_refused(created, "body.name")
    renamed = client.patch(
        f"/v1/subjects/{existing['id']}", content=_raw_json({"name": name}), headers=JSON_HEADERS
    )
    _assert_refused(renamed, "body.name")
    keys_before = client.get("/v1/keys", headers=H).json()["keys"]
    key = client.post("/v1/keys", content=_raw_json({"name": name, "scopes": ["read"]}), headers=JSON_HEADERS)
    _assert_refused(key, "body.name")
    assert client.get("/v1/keys", headers=H).json()["keys"] == keys_before
    _assert_nothing_changed(client, existing, before)


@settings(max_examples=100, deadline=None, database=None)
@given(name=st.text(alphabet=st.characters(exclude_categories=[]), min_size=1, max_size=MAX_NAME_CHARS))
def test_the_name_rule_is_exactly_the_documented_one(client: TestClient, name: str) -> None:
    """Any valid Unicode name is stored and read back unchanged unless it holds a refused character."""
    refused = any(
        char in BIDI_CONTROLS or unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in name
    )
    response = client.post("/v1/subjects", content=_raw_json({"name": name}), headers=JSON_HEADERS)
    if refused:
        _assert_refused(response, "body.name")
        return
    assert response.status_code == 201, response.text
    subject_id = response.json()["id"]
    assert client.get(f"/v1/subjects/{subject_id}", headers=H).json()["name"] == name
    assert client.delete(f"/v1/subjects/{subject_id}", headers=H).status_code == 204


@pytest.mark.parametrize(
    "name",
    [
        "Zoë Ødegård",
        "محمد بن سلمان",
        "李小龍",
        "👩\u200d👩\u200d👧 family",
        "Ⅻ-𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "x" * MAX_NAME_CHARS,
    ],
)
def test_real_world_names_round_trip(client: TestClient, name: str) -> None:
    created = client.post("/v1/subjects", json={"name": name}, headers=H)
    assert created.status_code == 201, created.text
    assert client.get(f"/v1/subjects/{created.json()['id']}", headers=H).json()["name"] == name


# --------------------------------------------------------------------------------------- metadata

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
)
KEYS = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


def _nest(value: Any, path: list[str | None]) -> dict[str, Any]:
    """``value`` placed at ``path`` (a key: an object level; None: a list level) inside a metadata object."""
    for step in reversed(path):
        value = [value] if step is None else {step: value}
    return value if isinstance(value, dict) else {"v": value}


PATHS = st.lists(st.one_of(KEYS, st.none()), max_size=MAX_METADATA_DEPTH - 2)
SURROGATES = st.characters(categories=["Cs"])


@st.composite
def unstorable_metadata(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["surrogate", "surrogate_key", "nan", "deep", "keys", "key_size", "size", "int"])
    )
    path = draw(PATHS)
    if kind == "surrogate":
        return _nest(draw(PLAIN_TEXT) + draw(SURROGATES) + draw(PLAIN_TEXT), path)
    if kind == "surrogate_key":
        return _nest({draw(SURROGATES) + draw(PLAIN_TEXT): draw(JSON_SCALARS)}, path)
    if kind == "nan":
        return _nest(draw(st.sampled_from([math.nan, math.inf, -math.inf])), path)
    if kind == "deep":  # a chain of objects, of lists or of both, deeper than the limit
        depth = draw(st.integers(min_value=MAX_METADATA_DEPTH + 1, max_value=600))
        key, shape = draw(KEYS), draw(st.sampled_from(["objects", "lists", "alternating"]))
        shapes: dict[str, list[str | None]] = {"objects": [key], "lists": [None], "alternating": [key, None]}
        steps = shapes[shape]
        chain = [steps[i % len(steps)] for i in range(depth)]  # depth containers
        return _nest(draw(JSON_SCALARS), chain)
    if kind == "keys":
        count = draw(st.integers(min_value=MAX_METADATA_KEYS + 1, max_value=3000))
        return _nest({f"k{i}": i for i in range(count)}, path)
    if kind == "key_size":
        return _nest({"k" * draw(st.integers(MAX_METADATA_KEY_CHARS + 1, 5000)): 1}, path)
    if kind == "size":  # up to 2 MB in one string or spread over a list
        size = draw(st.integers(min_value=MAX_METADATA_BYTES + 1, max_value=2_000_000))
        if draw(st.booleans()):
            return _nest("é" * (size // 2 + 1), path)
        return _nest(["x" * 99] * (size // 100 + 1), path)
    big = draw(st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1)))
    return _nest(min(big, 10**300) if big > 0 else max(big, -(10**300)), path)


@EXAMPLES
@given(metadata=unstorable_metadata())
def test_metadata_that_cannot_be_stored_is_refused_on_create_and_update(
    client: TestClient, existing: dict[str, Any], metadata: dict[str, Any]
) -> None:
    before = _subject_count(client)
    created = client.post(
        "/v1/subjects", content=_raw_json({"name": "m", "metadata": metadata}), headers=JSON_HEADERS
    )
    _assert_refused(created, "body.metadata")
    updated = client.patch(
        f"/v1/subjects/{existing['id']}", content=_raw_json({"metadata": metadata}), headers=JSON_HEADERS
    )
    _assert_refused(updated, "body.metadata")
    _assert_nothing_changed(client, existing, before)


def test_thirty_megabytes_of_metadata_are_refused(client: TestClient) -> None:
    before = _subject_count(client)
    body = _raw_json({"name": "big", "metadata": {"blob": "x" * 30_000_000}})
    _assert_refused(client.post("/v1/subjects", content=body, headers=JSON_HEADERS), "body.metadata")
    assert _subject_count(client) == before


@EXAMPLES
@given(
    metadata=st.recursive(
        JSON_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
        max_leaves=30,
    ).map(lambda value: value if isinstance(value, dict) else {"v": value})
)
def test_storable_metadata_round_trips(client: TestClient, metadata: dict[str, Any]) -> None:
    created = client.post(
        "/v1/subjects", content=_raw_json({"name": "r", "metadata": metadata}), headers=JSON_HEADERS
    )
    assert created.status_code == 201, created.text
    subject_id = created.json()["id"]
    assert created.json()["metadata"] == metadata
    assert client.get(f"/v1/subjects/{subject_id}", headers=H).json()["metadata"] == metadata
    assert client.delete(f"/v1/subjects/{subject_id}", headers=H).status_code == 204


def test_the_limits_themselves_are_accepted(client: TestClient) -> None:
    at_depth = _nest(1, ["a"] * (MAX_METADATA_DEPTH - 1) + [None])  # MAX_METADATA_DEPTH containers
    many_keys = {f"k{i}": i for i in range(MAX_METADATA_KEYS)}
    long_key = {"k" * MAX_METADATA_KEY_CHARS: [2**63 - 1, -(2**63)]}
    overhead = len('{"s":""}')
    full = {"s": "x" * (MAX_METADATA_BYTES - overhead)}
    for metadata in (at_depth, many_keys, long_key, full):
        created = client.post("/v1/subjects", json={"name": "limit", "metadata": metadata}, headers=H)
        assert created.status_code == 201, created.text[:300]
        assert client.get(f"/v1/subjects/{created.json()['id']}", headers=H).json()["metadata"] == metadata
    one_more = {"s": "x" * (MAX_METADATA_BYTES - overhead + 1)}
    _assert_refused(
        client.post("/v1/subjects", json={"name": "l", "metadata": one_more}, headers=H), "body.metadata"
    )
    deeper = {"a": at_depth}
    _assert_refused(
        client.post("/v1/subjects", json={"name": "l", "metadata": deeper}, headers=H), "body.metadata"
    )


# -------------------------------------------------------------------------------------- read path

# Metadata text an older version wrote (it stored whatever it was sent) or a hand edit left behind.
LEGACY_METADATA = {
    "surrogate": json.dumps({"k": "\ud800"}),
    "surrogate_key": json.dumps({"\udfff": 1}),
    "nan": '{"k": NaN, "j": [Infinity, -Infinity]}',
    "deep_500": '{"a":' * 500 + "1" + "}" * 500,
    "deep_5000": "[" * 5000 + "]" * 5000,
    "not_json": "{not json",
    "empty": "",
    "array": "[1, 2]",
    "number": "42",
    "null": "null",
}
LEGACY_NAMES = {
    "nul_cr_lf": "a\x00b\r\nc",
    "ansi": "\x1b[31mred\x1b[0m",
    "bidi": "\u202eevil",
}


def _write_legacy_rows(data_dir: Path) -> dict[str, str]:
    """Rows the API would refuse today, written straight into the gallery file; returns id per case."""
    path = data_dir / GALLERY_FILE
    ids: dict[str, str] = {}
    store = SqliteGalleryStore(path)  # the store's own write path, as the old API called it
    ids["store_surrogate"] = store.create_subject("legacy", {"k": "x\ud800y"}).id
    ids["store_deep"] = store.create_subject("legacy", _nest(1, ["a"] * 500)).id
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    rows: list[tuple[str, object, object]] = [(f"meta_{k}", "legacy", v) for k, v in LEGACY_METADATA.items()]
    rows += [(f"name_{k}", v, "{}") for k, v in LEGACY_NAMES.items()]
    rows += [("name_blob", b"\xff\xfe raw bytes", "{}"), ("name_int", 12345, "{}")]
    for case, name, metadata in rows:
        ids[case] = f"legacy-{case}"
        conn.execute(
            "INSERT INTO subjects (id, name, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (ids[case], name, metadata, "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00"),
        )
    # TEXT that isn't UTF-8 at all (an encoded surrogate, then a lone continuation byte).
    ids["name_bad_utf8"] = "legacy-name_bad_utf8"
    conn.execute(
        "INSERT INTO subjects (id, name, metadata, created_at, updated_at) "
        "VALUES (?, CAST(X'61EDA08062' AS TEXT), CAST(X'7B226B223A2280227D' AS TEXT), ?, ?)",
        (ids["name_bad_utf8"], "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00"),
    )
    conn.close()
    return ids


def _read_everything(client: TestClient, ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    subjects: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:  # page by page, 3 at a time, so that every page boundary is read too
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/subjects", params=params, headers=H)
        assert page.status_code == 200, page.text
        subjects |= {subject["id"]: subject for subject in page.json()["subjects"]}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    for case, subject_id in ids.items():
        one = client.get(f"/v1/subjects/{subject_id}", headers=H)
        assert one.status_code == 200, (case, one.text)
        assert one.json() == subjects[subject_id]
        assert client.get(f"/v1/subjects/{subject_id}/faces", headers=H).status_code == 200
    return subjects


def test_rows_that_cannot_be_serialized_still_read_back_across_restarts(
    tmp_path: Path, default_pack_dir: Path
) -> None:
    with running_app(tmp_path, default_pack_dir) as first:  # creates and pins the gallery
        good = first.post("/v1/subjects", json={"name": "good", "metadata": {"a": 1}}, headers=H).json()
    ids = _write_legacy_rows(tmp_path)
    unreadable = {"store_surrogate", "store_deep"} | {f"meta_{case}" for case in LEGACY_METADATA}
    unreadable.add("name_bad_utf8")

    with running_app(tmp_path, default_pack_dir) as second:
        subjects = _read_everything(second, ids | {"good": good["id"]})
        assert subjects[good["id"]] == good
        for case in unreadable:
            assert set(subjects[ids[case]]["metadata"]) == {UNREADABLE_METADATA_KEY}, case
        for case, name in LEGACY_NAMES.items():  # storable as JSON: shown exactly as stored
            assert subjects[ids[f"name_{case}"]]["name"] == name
        assert subjects[ids["name_int"]]["name"] == "12345"
        assert subjects[ids["name_blob"]]["name"] == "\\xff\\xfe raw bytes"
        assert subjects[ids["name_bad_utf8"]]["name"] == "a\\xed\\xa0\\x80b"
        # Such a subject can be fixed, or deleted, by its id.
        fixed = second.patch(f"/v1/subjects/{ids['meta_nan']}", json={"metadata": {"k": 0}}, headers=H)
        assert fixed.status_code == 200, fixed.text
        assert second.delete(f"/v1/subjects/{ids['meta_deep_5000']}", headers=H).status_code == 204

    with running_app(tmp_path, default_pack_dir) as third:
        del ids["meta_deep_5000"]
        subjects = _read_everything(third, ids)
        assert subjects[ids["meta_nan"]]["metadata"] == {"k": 0}
        assert third.get("/v1/subjects/legacy-meta_deep_5000", headers=H).status_code == 404
        assert len(subjects) == len(ids) + 1  # and "good"


# ----------------------------------------------------------------------------------------- cursor


def _cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


OUT_OF_RANGE = st.one_of(
    st.integers(min_value=2**63, max_value=10**120),
    st.integers(min_value=-(10**120), max_value=-1),
).map(lambda seq: f"s{seq}")
NOT_A_SEQ = st.one_of(
    st.text(min_size=1, max_size=30).filter(
        lambda t: not (t[:1] == "s" and t[1:].isascii() and t[1:].isdigit())
    ),
    st.integers(min_value=0, max_value=2**63 - 1)
    .map(lambda seq: f"s{seq}")
    .flatmap(
        lambda s: st.sampled_from(
            [
                f"{s} ",
                f" {s}",
                f"{s}\n",
                s.replace("s", "s+"),
                s.replace("s", "s0"),
                f"{s}.0",
                f"{s}e0",
                f"{s}_0",
                s.upper(),
                s[1:],
            ]
        )
    ),
    st.sampled_from(["s", "s١", "s٣٢", "s²", "s1٠", "sNaN", "sinf", "s0x10"]),
)


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.one_of(OUT_OF_RANGE, NOT_A_SEQ))
def test_cursors_that_decode_to_no_valid_seq_are_invalid_cursor(client: TestClient, text: str) -> None:
    response = client.get("/v1/subjects", params={"cursor": _cursor_of(text)}, headers=H)
    assert response.status_code == 422, (text, response.text)
    body = response.json()
    assert body["type"].endswith(":invalid_cursor"), body
    assert [error["field"] for error in body["errors"]] == ["query.cursor"]


@settings(max_examples=150, deadline=None, database=None)
@given(cursor=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200))
def test_any_cursor_string_is_a_page_or_invalid_cursor(client: TestClient, cursor: str) -> None:
    response = client.get("/v1/subjects", params={"cursor": cursor}, headers=H)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["type"].endswith(":invalid_cursor"), response.text


@settings(max_examples=100, deadline=None, database=None)
@given(seq=st.integers(min_value=0, max_value=2**63 - 1))
def test_every_seq_in_range_is_a_valid_cursor(client: TestClient, seq: int) -> None:
    response = client.get("/v1/subjects", params={"cursor": _cursor_of(f"s{seq}")}, headers=H)
    assert response.status_code == 200, response.text


def test_an_overlong_cursor_is_refused_naming_the_field(client: TestClient) -> None:
    response = client.get("/v1/subjects", params={"cursor": _cursor_of(f"s{10**300}")}, headers=H)
    _assert_refused(response, "query.cursor")


# ------------------------------------------------------------------------------------ similarities


@given(value=st.floats(allow_nan=False))
def test_similarity_is_clamped_to_the_cosine_range(value: float) -> None:
    clamped = cosine(value)
    assert -1.0 <= clamped <= 1.0
    assert clamped == (value if -1.0 <= value <= 1.0 else math.copysign(1.0, value))


def test_an_image_compared_with_itself_scores_at_most_one(client: TestClient, johns: list[Person]) -> None:
    person = johns[0]
    subject = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()["id"]
    enrolled = client.post(
        f"/v1/subjects/{subject}/faces",
        files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in person.enroll],
        headers=H,
    )
    assert enrolled.status_code == 201, enrolled.text
    for path in person.enroll:
        image = (path.name, path.read_bytes(), "image/jpeg")
        pair = client.post("/v1/verify", files=[("image_a", image), ("image_b", image)], headers=H).json()
        assert 0.999 < pair["similarity"] <= 1.0, pair
        against = client.post("/v1/verify", files=[("image", image)], data={"subject_id": subject}, headers=H)
        assert 0.999 < against.json()["similarity"] <= 1.0, against.json()
        found = client.post("/v1/identify", files=[("image", image)], data={"threshold": "-1"}, headers=H)
        (face,) = found.json()["faces"]
        assert face["candidates"][0]["subject_id"] == subject
        assert all(-1.0 <= c["similarity"] <= 1.0 for c in face["candidates"])
        assert 0.999 < face["candidates"][0]["similarity"] <= 1.0


@pytest.mark.parametrize("raw_name", ["X'ff'", "X'eda080'", "X'6b696f736bc3'", "X'00'"])
def test_key_names_that_are_not_valid_text_still_list(
    tmp_path: Path, default_pack_dir: Path, raw_name: str
) -> None:
    # A key row written by hand (or an older version) whose name is not valid UTF-8: the key list and
    # the key itself keep working, the name is shown escaped.
    with running_app(tmp_path, default_pack_dir) as client:
        created = client.post("/v1/keys", json={"name": "kiosk", "scopes": ["read"]}, headers=admin_headers())
        assert created.status_code == 201, created.text
        conn = sqlite3.connect(SqliteKeyStore.in_data_dir(tmp_path).path)
        with conn:
            conn.execute(
                f"UPDATE api_keys SET name = CAST({raw_name} AS TEXT) WHERE id = ?", (created.json()["id"],)
            )
        conn.close()
        listing = client.get("/v1/keys", headers=admin_headers())
        assert listing.status_code == 200, listing.text
        (row,) = [key for key in listing.json()["keys"] if key["id"] == created.json()["id"]]
        assert row["name"].encode("utf-8")  # valid text
        assert client.get("/v1/subjects", headers={"X-API-Key": created.json()["key"]}).status_code == 200
