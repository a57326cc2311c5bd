"""Crash safety of the real server: SIGKILL while clients enroll, restart, nothing acknowledged is lost.

Each round: the server (``face-service serve``, a child process) takes enrollments from concurrent
clients; at a random moment it is killed with SIGKILL (no shutdown code runs), then restarted on the
same data dir. After every restart:

- every acknowledged subject and face (a 201 the client fully read) is there through the API;
- every face acknowledged in the round is searchable: identifying its exact image returns that face;
- nothing unacknowledged half-exists: SQLite passes ``integrity_check`` and ``foreign_key_check``,
  no face lacks its subject, no crop lacks its face, every embedding has the pack's size, the index
  holds exactly the store's faces (``face_gallery_indexed_faces`` == ``face_gallery_faces``), and
  faces nobody acknowledged come only from requests cut short by the kill (each found by its image).

Every enrolled image is a unique variant (jittered crop, brightness, JPEG quality) of a dlib_johns
photo, so its embedding identifies exactly one face.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageEnhance

from benchmarks.load_test import FaceImages
from benchmarks.local_server import LocalServer
from tests.robustness.conftest import ServerFactory, heavy_run

KILLS = 20 if heavy_run() else 3
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if heavy_run() else 300)]
CLIENTS = 4
# Identical bytes give 1.0 (up to rounding); two jittered variants of one photo stay below ~0.999.
SAME_IMAGE = 0.9999


def jittered(photo: bytes, seed: int) -> bytes:
    """A new, unique JPEG of the same face: a few pixels of crop, brightness, quality."""
    rng = random.Random(seed)
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    width, height = image.size
    left, top = rng.randint(0, 6), rng.randint(0, 6)
    right, bottom = width - rng.randint(0, 6), height - rng.randint(0, 6)
    image = image.crop((left, top, right, bottom)).resize((width, height), Image.Resampling.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(85, 95))
    return buffer.getvalue()


@dataclass
class Ledger:
    """What the clients were told (acknowledged) and what was in flight when the server died."""

    subjects: dict[str, str] = field(default_factory=dict)  # subject id -> person
    faces: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # face id -> (subject id, image)
    round_faces: list[str] = field(default_factory=list)  # face ids acknowledged this round
    in_flight_images: list[bytes] = field(default_factory=list)  # sent, never acknowledged
    in_flight_subjects: int = 0
    # Faces committed by requests the kill cut short (found by their images after a restart).
    committed_unacknowledged: set[str] = field(default_factory=set)
    unacknowledged_subjects: int = 0
    rejected: int = 0  # enrollments refused by quality bars (a 422: acknowledged as "nothing stored")
    requests: int = 0


class Chaos:
    """Concurrent enrolling clients against one server life."""

    def __init__(self, server: LocalServer, photos: FaceImages, ledger: Ledger, seed: int) -> None:
        self.server = server
        self.photos = photos
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.next_variant = seed * 100_000

    def _images_of(self, person: str, count: int) -> list[bytes]:
        images = []
        for _, data in self.rng.sample(self.photos.people[person], count):
            self.next_variant += 1
            images.append(jittered(data, self.next_variant))
        return images

    async def _create_subject(self, client: httpx.AsyncClient, person: str) -> None:
        self.ledger.in_flight_subjects += 1
        response = await client.post("/v1/subjects", json={"name": person, "metadata": {"crash": True}})
        assert response.status_code == 201, response.text
        self.ledger.subjects[response.json()["id"]] = person
        self.ledger.in_flight_subjects -= 1

    async def _enroll(self, client: httpx.AsyncClient) -> None:
        subject_id = self.rng.choice(sorted(self.ledger.subjects))
        images = self._images_of(self.ledger.subjects[subject_id], self.rng.randint(1, 3))
        self.ledger.in_flight_images.extend(images)
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        response = await client.post(f"/v1/subjects/{subject_id}/faces", files=files)
        if response.status_code == 422:
            self.ledger.rejected += 1
        else:
            assert response.status_code == 201, response.text
            for item in response.json()["results"]:
                if item["accepted"]:
                    self.ledger.faces[item["face_id"]] = (subject_id, images[item["index"]])
                    self.ledger.round_faces.append(item["face_id"])
        for data in images:  # answered: no longer in flight (accepted or refused as a whole)
            self.ledger.in_flight_images.remove(data)

    async def client(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(
            base_url=self.server.base_url, headers={"X-API-Key": self.server.api_key}, timeout=60.0
        ) as client:
            while not stop.is_set():
                self.ledger.requests += 1
                try:
                    if self.rng.random() < 0.15 or not self.ledger.subjects:
                        await self._create_subject(client, self.rng.choice(sorted(self.photos.people)))
                    else:
                        await self._enroll(client)
                except httpx.TransportError:
                    return  # the server is gone: whatever was in flight stays unacknowledged

    async def run_until_killed(self, kill_after_s: float) -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(self.client(stop)) for _ in range(CLIENTS)]
        await asyncio.sleep(kill_after_s)
        self.server.kill()
        stop.set()
        await asyncio.gather(*clients)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exported")


def check_store(db_path: Path) -> tuple[set[str], set[str]]:
    """Structural checks on the SQLite file (read-only, beside the live server); face and subject ids."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT COUNT(*) FROM faces f LEFT JOIN subjects s ON s.id = f.subject_id WHERE s.id IS NULL"
        ).fetchone()[0]
        assert orphans == 0, f"{orphans} faces without a subject"
        loose_crops = conn.execute(
            "SELECT COUNT(*) FROM face_crops c LEFT JOIN faces f ON f.index_id = c.index_id "
            "WHERE f.index_id IS NULL"
        ).fetchone()[0]
        assert loose_crops == 0, f"{loose_crops} crops without a face"
        without_crop = conn.execute(
            "SELECT COUNT(*) FROM faces f LEFT JOIN face_crops c ON c.index_id = f.index_id "
            "WHERE c.index_id IS NULL"
        ).fetchone()[0]
        assert without_crop == 0, f"{without_crop} faces lost their crop"
        (size,) = conn.execute("SELECT embedding_size FROM meta").fetchone()
        bad = conn.execute("SELECT COUNT(*) FROM faces WHERE length(embedding) != ?", (4 * size,)).fetchone()
        assert bad[0] == 0, f"{bad[0]} embeddings of the wrong length"
        faces = {row[0] for row in conn.execute("SELECT id FROM faces")}
        subjects = {row[0] for row in conn.execute("SELECT id FROM subjects")}
    finally:
        conn.close()
    return faces, subjects


def identify_best(client: httpx.Client, image: bytes) -> dict[str, object] | None:
    response = client.post(
        "/v1/identify",
        files={"image": ("probe.jpg", image, "image/jpeg")},
        data={"top_k": "1", "largest_only": "true", "threshold": str(SAME_IMAGE)},
    )
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    candidates = faces[0]["candidates"] if faces else []
    return candidates[0] if candidates else None


def check_after_restart(server: LocalServer, ledger: Ledger) -> dict[str, int]:
    faces_in_store, subjects_in_store = check_store(server.data_dir / "gallery.sqlite3")
    with httpx.Client(
        base_url=server.base_url, headers={"X-API-Key": server.api_key}, timeout=60.0
    ) as client:
        metrics = client.get("/metrics").text
        assert metric(metrics, 'face_gallery_faces{collection="default"}') == len(faces_in_store)
        indexed = metric(metrics, 'face_gallery_indexed_faces{collection="default"}')
        assert indexed == len(faces_in_store), "index != rows"

        # Every acknowledged subject and face is there, through the API.
        for subject_id in ledger.subjects:
            listed = client.get(f"/v1/subjects/{subject_id}/faces")
            assert listed.status_code == 200, f"acknowledged subject {subject_id} is gone"
        by_subject: dict[str, set[str]] = {}
        for face_id, (subject_id, _) in ledger.faces.items():
            if subject_id not in by_subject:
                listed = client.get(f"/v1/subjects/{subject_id}/faces").json()["faces"]
                by_subject[subject_id] = {face["id"] for face in listed}
            assert face_id in by_subject[subject_id], f"acknowledged face {face_id} is lost"

        # This round's acknowledged faces are searchable: their own image finds exactly them.
        for face_id in ledger.round_faces:
            subject_id, image = ledger.faces[face_id]
            best = identify_best(client, image)
            assert best is not None, f"acknowledged face {face_id} is not searchable"
            assert best["face_id"] == face_id
            assert best["subject_id"] == subject_id

        # Faces nobody acknowledged exist only as whole faces from requests the kill cut short.
        found_in_flight = set()
        for image in ledger.in_flight_images:
            best = identify_best(client, image)
            if best is not None:
                found_in_flight.add(str(best["face_id"]))
        assert found_in_flight <= faces_in_store
        ledger.committed_unacknowledged |= found_in_flight
        unacknowledged = faces_in_store - set(ledger.faces)
        assert unacknowledged == ledger.committed_unacknowledged, "a stored face came from nowhere"
        extra_subjects = len(subjects_in_store - set(ledger.subjects))
        assert extra_subjects <= ledger.unacknowledged_subjects + ledger.in_flight_subjects
        ledger.unacknowledged_subjects = extra_subjects
    return {"faces": len(faces_in_store), "unacknowledged_present": len(found_in_flight)}


def test_acknowledged_enrollments_survive_sigkill(
    make_server: ServerFactory, face_images: FaceImages, tmp_path: Path
) -> None:
    server = make_server()
    ledger = Ledger()
    rng = random.Random(20_240_515)
    report: list[dict[str, float | int]] = []
    server.start()
    for kill in range(KILLS):
        ledger.round_faces = []
        ledger.in_flight_images = []
        ledger.in_flight_subjects = 0
        kill_after = rng.uniform(0.5, 4.0)
        asyncio.run(Chaos(server, face_images, ledger, seed=kill + 1).run_until_killed(kill_after))
        server.start()  # same data dir: the gallery must open cleanly after the SIGKILL
        found = check_after_restart(server, ledger)
        report.append(
            {
                "kill": kill + 1,
                "after_s": round(kill_after, 2),
                "acknowledged_this_round": len(ledger.round_faces),
                "in_flight_images": len(ledger.in_flight_images),
                **found,
            }
        )
    assert server.stop() == 0
    summary = {
        "kills": KILLS,
        "requests": ledger.requests,
        "acknowledged_faces": len(ledger.faces),
        "acknowledged_subjects": len(ledger.subjects),
        "rejected_enrollments": ledger.rejected,
        "lost": 0,  # every check above passed
        "rounds": report,
    }
    (tmp_path / "crash_report.json").write_text(json.dumps(summary, indent=2))
    print("\n" + json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    for row in report:
        print(json.dumps(row))
    assert sum(int(r["acknowledged_this_round"]) for r in report) > 0, "no enrollment was acknowledged"
