"""Several real ``face-service serve`` replicas on one real PostgreSQL gallery (issue 11).

Each replica is a child process with its own data dir and port, its own FAISS index fed by the
database's change feed, and the same ``FACE_DATABASE_URL``. What is checked, through the HTTP API
and the database itself:

- a face enrolled on one replica is identified on another within a bounded lag; a rename, a merge
  and deletes on one are seen on the other;
- an API key created on one replica works on the other, and its revocation on the other is seen;
- SIGKILL of a replica during concurrent enrollment through two replicas loses no acknowledged face,
  and afterwards every replica's index holds exactly the database's faces;
- a PostgreSQL restart under load gives clear 503 ``gallery_unavailable`` answers (never a 500,
  never a hang), loses no acknowledged write, and the replicas recover without being restarted;
- a replica started late catches up to the database's change sequence.

Every enrolled image is either a distinct dlib_johns photo or a unique jittered variant of one, so
identifying its exact bytes (similarity >= SAME_IMAGE) finds exactly the face it made.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest

from benchmarks.load_test import FaceImages
from benchmarks.local_server import LocalServer
from tests.postgres_server import PostgresServer
from tests.replicas.conftest import (
    DB_TIMEOUT_S,
    ReplicaFactory,
    client_of,
    index_and_rows,
    replication,
    wait_caught_up,
)
from tests.robustness.test_crash_safety import identify_best, jittered

pytestmark = pytest.mark.timeout(300)

MAX_VISIBLE_LAG_S = 5.0  # enroll on one replica -> identified on another
MAX_RECOVERY_S = 30.0  # PostgreSQL back -> every replica ready again
PROBLEM_PREFIX = "urn:face-service:problem:"


def start_all(replicas: Iterable[LocalServer]) -> None:
    """Start replicas side by side (each waits for its own readiness)."""
    replicas = list(replicas)
    with ThreadPoolExecutor(len(replicas)) as pool:
        for future in [pool.submit(replica.start) for replica in replicas]:
            future.result()


def create_subject(client: httpx.Client, name: str) -> str:
    response = client.post("/v1/subjects", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def enroll_one(client: httpx.Client, subject_id: str, image: bytes) -> str:
    response = client.post(
        f"/v1/subjects/{subject_id}/faces", files=[("images", ("face.jpg", image, "image/jpeg"))]
    )
    assert response.status_code == 201, response.text
    (item,) = response.json()["results"]
    assert item["accepted"], item
    return str(item["face_id"])


def problem_code(response: httpx.Response) -> str:
    try:
        kind = str(response.json().get("type", ""))
    except ValueError:
        return f"<not JSON: {response.text[:200]!r}>"
    return kind.removeprefix(PROBLEM_PREFIX)


def stored_face_ids(database_url: str) -> set[str]:
    """The faces the shared database holds, read directly (the source of truth)."""
    with psycopg.connect(database_url) as conn:
        return {str(row[0]) for row in conn.execute("SELECT id FROM faces")}


def assert_index_is_rows(replicas: Iterable[LocalServer], faces: int) -> None:
    """Each replica, once caught up, indexes exactly the ``faces`` the database holds."""
    for replica in replicas:
        wait_caught_up(replica)
        indexed, rows = index_and_rows(replica)
        assert (indexed, rows) == (faces, faces), f"{replica.base_url}: index {indexed}, rows {rows}"


def assert_all_findable(replica: LocalServer, faces: dict[str, tuple[str, bytes]]) -> None:
    """Every face's own image identifies exactly that face (and its subject) on ``replica``."""
    with client_of(replica) as client:
        for face_id, (subject_id, image) in faces.items():
            best = identify_best(client, image)
            assert best is not None, f"{replica.base_url}: acknowledged face {face_id} is not searchable"
            assert (best["face_id"], best["subject_id"]) == (face_id, subject_id)


def assert_unacknowledged_come_from(
    replica: LocalServer, unacknowledged: set[str], unanswered_images: Iterable[bytes]
) -> None:
    """Faces stored without an acknowledgement come only from requests whose answer never said so."""
    found: set[str] = set()
    with client_of(replica) as client:
        for image in unanswered_images:
            best = identify_best(client, image)
            if best is not None:
                found.add(str(best["face_id"]))
    assert unacknowledged <= found, f"stored faces nobody enrolled: {sorted(unacknowledged - found)}"


def wait_visible(client: httpx.Client, image: bytes, face_id: str, since: float) -> float:
    """Seconds from ``since`` (the write's acknowledgement) until identifying ``image`` on ``client``'s
    replica returns ``face_id`` (polled as fast as identify answers)."""
    while time.monotonic() - since < MAX_VISIBLE_LAG_S:
        best = identify_best(client, image)
        if best is not None and best["face_id"] == face_id:
            return time.monotonic() - since
    raise AssertionError(f"face {face_id} not identified on another replica within {MAX_VISIBLE_LAG_S} s")


# ---------------------------------------------------------------------------------- enroll & edits


def test_writes_on_one_replica_are_seen_on_another(make_replica: ReplicaFactory, johns: FaceImages) -> None:
    a, b = make_replica("a"), make_replica("b")
    start_all([a, b])
    people = sorted(johns.people)[:4]
    lags: list[float] = []
    faces: dict[str, tuple[str, bytes]] = {}
    with client_of(a) as on_a, client_of(b) as on_b:
        for person in people:
            _, image = johns.people[person][0]
            subject_id = create_subject(on_a, person)
            face_id = enroll_one(on_a, subject_id, image)
            lags.append(wait_visible(on_b, image, face_id, since=time.monotonic()))
            best_on_a = identify_best(on_a, image)  # read-your-writes on the replica that wrote
            assert best_on_a is not None
            assert best_on_a["face_id"] == face_id
            faces[face_id] = (subject_id, image)
        assert_index_is_rows([a, b], len(faces))

        # Rename on A: B names the subject (and its identify candidates) by the new name.
        renamed_face, (renamed_subject, renamed_image) = next(iter(faces.items()))
        patched = on_a.patch(f"/v1/subjects/{renamed_subject}", json={"name": "Renamed John"})
        assert patched.status_code == 200, patched.text
        assert on_b.get(f"/v1/subjects/{renamed_subject}").json()["name"] == "Renamed John"
        best = identify_best(on_b, renamed_image)
        assert best is not None
        assert (best["face_id"], best["name"]) == (renamed_face, "Renamed John")

        # Delete one face on A: B never returns it again, and B's index drops it.
        deleted_face, (_, deleted_image) = list(faces.items())[1]
        assert on_a.delete(f"/v1/faces/{deleted_face}").status_code == 204
        best = identify_best(on_b, deleted_image)
        assert best is None or best["face_id"] != deleted_face
        del faces[deleted_face]
        assert_index_is_rows([a, b], len(faces))
        assert on_b.delete(f"/v1/faces/{deleted_face}").status_code == 404

        # Delete a whole subject on A: gone on B, its face with it.
        merged_face, (merged_subject, merged_image) = list(faces.items())[-1]
        gone_face, (gone_subject, gone_image) = list(faces.items())[-2]
        assert on_a.delete(f"/v1/subjects/{gone_subject}").status_code == 204
        assert on_b.get(f"/v1/subjects/{gone_subject}").status_code == 404
        best = identify_best(on_b, gone_image)
        assert best is None or best["face_id"] != gone_face
        del faces[gone_face]
        assert_index_is_rows([a, b], len(faces))
        assert_all_findable(b, faces)

        # Merge a subject into another on A: on B its face belongs to the subject merged into.
        merged = on_a.post(f"/v1/subjects/{merged_subject}/merge", json={"into": renamed_subject})
        assert merged.status_code == 200, merged.text
        assert on_b.get(f"/v1/subjects/{merged_subject}").status_code == 404
        faces[merged_face] = (renamed_subject, merged_image)
        assert on_b.get(f"/v1/subjects/{renamed_subject}").json()["face_count"] == 2
        assert_index_is_rows([a, b], len(faces))
        assert_all_findable(b, faces)
    print("\n" + json.dumps({"enroll_to_identify_elsewhere_s": [round(lag, 3) for lag in lags]}))
    assert max(lags) < MAX_VISIBLE_LAG_S


def test_api_key_made_on_one_replica_works_on_another(make_replica: ReplicaFactory) -> None:
    a, b = make_replica("a"), make_replica("b")
    start_all([a, b])
    with client_of(a) as on_a, client_of(b) as on_b:
        created = on_a.post("/v1/keys", json={"name": "kiosk", "scopes": ["read"]})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        reader = {"X-API-Key": key}
        assert on_b.get("/v1/subjects", headers=reader).status_code == 200
        assert on_b.post("/v1/subjects", json={"name": "x"}, headers=reader).status_code == 403
        assert key_id in {item["id"] for item in on_b.get("/v1/keys").json()["keys"]}
        assert on_b.delete(f"/v1/keys/{key_id}").status_code == 200
        assert on_a.get("/v1/subjects", headers=reader).status_code == 401  # revoked on B, seen on A


# ------------------------------------------------------------------------- SIGKILL during enrollment


@dataclass
class Ledger:
    """What enrolling clients were told, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # face -> (subject, image)
    unanswered: list[bytes] = field(default_factory=list)  # sent; the answer never came, or said 503
    refused: int = 0  # a 422: nothing stored, and the client was told so
    unexpected: list[str] = field(default_factory=list)  # any other answer
    requests: int = 0

    def record(self, subject_id: str, image: bytes, response: httpx.Response) -> None:
        with self.lock:
            self.requests += 1
            if response.status_code == 201:
                for item in response.json()["results"]:
                    if item["accepted"]:
                        self.acknowledged[str(item["face_id"])] = (subject_id, image)
            elif response.status_code == 422:
                self.refused += 1
            else:
                self.unexpected.append(f"{response.status_code} {response.text[:300]}")


class Enroller:
    """A client thread enrolling unique variants of real photos through one replica until stopped."""

    def __init__(
        self,
        replica: LocalServer,
        subjects: dict[str, str],
        photos: FaceImages,
        ledger: Ledger,
        seed: int,
        stop: threading.Event,
    ) -> None:
        self.replica = replica
        self.subjects = subjects  # person -> subject id
        self.photos = photos
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.next_variant = seed * 100_000
        self.stop = stop
        self.transport_errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _image(self, person: str) -> bytes:
        self.next_variant += 1
        _, photo = self.rng.choice(self.photos.people[person])
        return jittered(photo, self.next_variant)

    def _run(self) -> None:
        with client_of(self.replica) as client:
            while not self.stop.is_set():
                person = self.rng.choice(sorted(self.subjects))
                image = self._image(person)
                try:
                    response = client.post(
                        f"/v1/subjects/{self.subjects[person]}/faces",
                        files=[("images", ("face.jpg", image, "image/jpeg"))],
                    )
                except httpx.TransportError:
                    with self.ledger.lock:
                        self.ledger.unanswered.append(image)
                    self.transport_errors += 1
                    return  # the replica is gone: what was in flight stays unacknowledged
                self.ledger.record(self.subjects[person], image, response)


@pytest.mark.slow
def test_sigkill_of_a_replica_during_enrollment_loses_no_acknowledged_face(
    make_replica: ReplicaFactory, johns: FaceImages, pg_url: str
) -> None:
    a, b = make_replica("a"), make_replica("b")
    start_all([a, b])
    with client_of(a) as on_a:
        subjects = {person: create_subject(on_a, person) for person in sorted(johns.people)}
    ledger = Ledger()
    stop = threading.Event()
    enrollers = [
        Enroller(replica, subjects, johns, ledger, seed, stop) for seed, replica in enumerate([a, a, b, b], 1)
    ]
    for enroller in enrollers:
        enroller.thread.start()
    try:
        time.sleep(random.Random(11).uniform(2.0, 3.5))
        with ledger.lock:
            acknowledged_before_kill = len(ledger.acknowledged)
        a.kill()
        time.sleep(1.5)  # B keeps enrolling: changes the dead replica must catch up on
    finally:
        stop.set()
        for enroller in enrollers:
            enroller.thread.join(60)
    a.start()

    assert ledger.unexpected == [], ledger.unexpected
    assert sum(e.transport_errors for e in enrollers[2:]) == 0, "clients of the surviving replica were cut"
    assert acknowledged_before_kill > 0
    assert len(ledger.acknowledged) > acknowledged_before_kill
    stored = stored_face_ids(pg_url)
    lost = set(ledger.acknowledged) - stored
    assert not lost, f"acknowledged faces lost: {sorted(lost)}"
    assert_unacknowledged_come_from(b, stored - set(ledger.acknowledged), ledger.unanswered)
    for replica in (a, b):
        with client_of(replica) as client:
            listed = {
                face["id"]
                for subject_id in subjects.values()
                for face in client.get(f"/v1/subjects/{subject_id}/faces").json()["faces"]
            }
        assert set(ledger.acknowledged) <= listed
    assert_index_is_rows([a, b], len(stored))
    for replica in (a, b):
        assert_all_findable(replica, ledger.acknowledged)
    print(
        "\n"
        + json.dumps(
            {
                "requests": ledger.requests,
                "acknowledged_faces": len(ledger.acknowledged),
                "acknowledged_before_kill": acknowledged_before_kill,
                "unanswered_requests": len(ledger.unanswered),
                "stored_unacknowledged": len(stored - set(ledger.acknowledged)),
                "refused": ledger.refused,
                "lost": 0,
            }
        )
    )


# ---------------------------------------------------------------------------- PostgreSQL restart


@dataclass(frozen=True)
class Answer:
    replica: str
    kind: str  # enroll | identify
    sent: float  # monotonic
    elapsed_s: float
    status: int  # 0: no answer (transport error)
    code: str
    retry_after: str | None


@dataclass
class Traffic:
    """Every answer the load got, and the writes it was told are committed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[Answer] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)


class LoadClient:
    """Enrolls (unique variants) or identifies (a known face) through one replica in a loop."""

    def __init__(
        self, name: str, replica: LocalServer, kind: str, work: _LoadWork, seed: int, stop: threading.Event
    ) -> None:
        self.name = name
        self.replica = replica
        self.kind = kind
        self.work = work
        self.rng = random.Random(seed)
        self.next_variant = seed * 100_000
        self.stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _request(self) -> tuple[str, str, bytes]:
        """(path, subject id, image) of the next request: the probe, or a new variant to enroll."""
        if self.kind == "identify":
            return "/v1/identify", "", self.work.probe
        person = self.rng.choice(sorted(self.work.subjects))
        self.next_variant += 1
        image = jittered(self.rng.choice(self.work.photos.people[person])[1], self.next_variant)
        subject_id = self.work.subjects[person]
        return f"/v1/subjects/{subject_id}/faces", subject_id, image

    def _run(self) -> None:
        traffic = self.work.traffic
        with client_of(self.replica, timeout_s=DB_TIMEOUT_S + 28.0) as client:
            while not self.stop.is_set():
                path, subject_id, image = self._request()
                field_name = "image" if self.kind == "identify" else "images"
                sent = time.monotonic()
                try:
                    response = client.post(path, files=[(field_name, ("face.jpg", image, "image/jpeg"))])
                except httpx.TransportError as error:
                    traffic.add(
                        Answer(self.name, self.kind, sent, time.monotonic() - sent, 0, repr(error), None)
                    )
                    if self.kind == "enroll":
                        with traffic.ledger.lock:
                            traffic.ledger.unanswered.append(image)
                    continue
                elapsed = time.monotonic() - sent
                code = "" if response.is_success else problem_code(response)
                traffic.add(
                    Answer(
                        self.name,
                        self.kind,
                        sent,
                        elapsed,
                        response.status_code,
                        code,
                        response.headers.get("Retry-After"),
                    )
                )
                if self.kind == "enroll":
                    if response.status_code in (201, 422):
                        traffic.ledger.record(subject_id, image, response)
                    else:
                        with traffic.ledger.lock:
                            traffic.ledger.unanswered.append(image)
                if not response.is_success:
                    time.sleep(0.1)  # a client honouring "retry shortly", without hammering


@dataclass(frozen=True)
class _LoadWork:
    subjects: dict[str, str]
    photos: FaceImages
    probe: bytes
    traffic: Traffic


def readyz_during_outage(replica: LocalServer) -> tuple[int, float, dict[str, object]]:
    sent = time.monotonic()
    response = httpx.get(f"{replica.base_url}/readyz", timeout=DB_TIMEOUT_S + 28.0)
    return response.status_code, time.monotonic() - sent, response.json()


def wait_ready_again(replicas: Iterable[LocalServer], timeout_s: float) -> float:
    started = time.monotonic()
    for replica in replicas:
        while True:
            try:
                if replication(replica).caught_up:
                    break
            except (httpx.TransportError, AssertionError):
                pass
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{replica.base_url} not ready {timeout_s} s after PostgreSQL came back")
            time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.slow
def test_postgres_restart_under_load(
    make_replica: ReplicaFactory, johns: FaceImages, pg_url: str, postgres_server: PostgresServer
) -> None:
    a, b = make_replica("a"), make_replica("b")
    start_all([a, b])
    people = sorted(johns.people)
    with client_of(a) as on_a:
        subjects = {person: create_subject(on_a, person) for person in people}
        _, probe = johns.people[people[0]][-1]
        probe_face = enroll_one(on_a, subjects[people[0]], probe)
    wait_caught_up(b)
    work = _LoadWork(subjects, johns, probe, Traffic())
    stop = threading.Event()
    clients = [
        LoadClient(name, replica, kind, work, seed, stop)
        for seed, (name, replica, kind) in enumerate(
            [("a", a, "enroll"), ("a", a, "identify"), ("b", b, "enroll"), ("b", b, "identify")], 1
        )
    ]
    for load_client in clients:
        load_client.thread.start()
    outage_readyz: list[tuple[int, float, dict[str, object]]] = []
    try:
        time.sleep(2.0)
        down_at = time.monotonic()
        postgres_server.stop()
        try:
            time.sleep(1.0)
            with ThreadPoolExecutor(2) as pool:
                outage_readyz = list(pool.map(readyz_during_outage, (a, b)))
            time.sleep(1.0)
        finally:
            up_at = time.monotonic()
            postgres_server.start()
        recovery_s = wait_ready_again([a, b], MAX_RECOVERY_S)
        ready_at = time.monotonic()
        time.sleep(2.0)  # load on the recovered replicas
    finally:
        stop.set()
        for load_client in clients:
            load_client.thread.join(60)

    answers = work.traffic.answers
    outage = [answer for answer in answers if down_at <= answer.sent <= up_at]
    after = [answer for answer in answers if answer.sent >= ready_at]
    summary = {
        "answers": len(answers),
        "during_outage": len(outage),
        "outage_statuses": sorted({(answer.status, answer.code) for answer in outage}),
        "slowest_answer_s": round(max(answer.elapsed_s for answer in answers), 2),
        "readyz_while_down": [
            (status, round(elapsed, 2), body.get("checks")) for status, elapsed, body in outage_readyz
        ],
        "recovery_s": round(recovery_s, 2),
        "after_recovery": len(after),
        "acknowledged_faces": len(work.traffic.ledger.acknowledged),
    }
    print("\n" + json.dumps(summary))

    # Clear answers only: a success, or 503 gallery_unavailable with Retry-After; never a 500 or a hang.
    unclear = [
        a
        for a in answers
        if a.status not in (200, 201) and (a.status, a.code) != (503, "gallery_unavailable")
    ]
    assert unclear == [], unclear[:5]
    assert all(a.retry_after for a in answers if a.status == 503)
    assert max(answer.elapsed_s for answer in answers) < DB_TIMEOUT_S + 8.0
    assert any(a.status == 503 for a in outage), "no request saw the outage"
    for status, elapsed, body in outage_readyz:
        assert status == 503, body
        assert elapsed < DB_TIMEOUT_S + 8.0
    # Served again without a restart: every answer after recovery is a success, on both replicas.
    assert [a for a in after if a.status not in (200, 201)] == []
    assert {(a.replica, a.kind) for a in after} == {(n, k) for n in "ab" for k in ("enroll", "identify")}

    acknowledged = dict(work.traffic.ledger.acknowledged)
    acknowledged[probe_face] = (subjects[people[0]], probe)
    stored = stored_face_ids(pg_url)
    assert set(acknowledged) <= stored, f"acknowledged faces lost: {sorted(set(acknowledged) - stored)}"
    assert_unacknowledged_come_from(a, stored - set(acknowledged), work.traffic.ledger.unanswered)
    assert_index_is_rows([a, b], len(stored))
    for replica in (a, b):
        assert_all_findable(replica, acknowledged)


# ------------------------------------------------------------------------------ late replica


def test_a_replica_started_late_catches_up(make_replica: ReplicaFactory, johns: FaceImages) -> None:
    a = make_replica("a")
    a.start()
    faces: dict[str, tuple[str, bytes]] = {}
    with client_of(a) as on_a:
        for person in sorted(johns.people):
            subject_id = create_subject(on_a, person)
            for _, image in johns.people[person][:2]:
                faces[enroll_one(on_a, subject_id, image)] = (subject_id, image)
        deleted_face, (_, deleted_image) = next(iter(faces.items()))
        assert on_a.delete(f"/v1/faces/{deleted_face}").status_code == 204
        del faces[deleted_face]
        renamed_face, (renamed_subject, renamed_image) = next(iter(faces.items()))
        assert on_a.patch(f"/v1/subjects/{renamed_subject}", json={"name": "Late John"}).status_code == 200
    written = replication(a).database_seq

    c = make_replica("c")
    started = time.monotonic()
    c.start()
    start_s = time.monotonic() - started
    state = replication(c)
    assert state.caught_up, state
    assert state.applied_seq == written
    assert index_and_rows(c) == (len(faces), len(faces))
    assert_all_findable(c, faces)
    with client_of(c) as on_c:
        best = identify_best(on_c, deleted_image)
        assert best is None or best["face_id"] != deleted_face
        best = identify_best(on_c, renamed_image)
        assert best is not None
        assert (best["face_id"], best["name"]) == (renamed_face, "Late John")
    print("\n" + json.dumps({"late_replica_start_s": round(start_s, 2), "faces": len(faces), "seq": written}))
