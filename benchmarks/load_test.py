"""Bounded load test: concurrent clients mixing identify, verify and enroll for a fixed duration.

    python -m benchmarks.load_test --duration 600 --clients 8 --out benchmarks/results/load.json

Without ``--url`` it starts the real server (``face-service serve``) on 127.0.0.1 with a free port, a
temporary data dir and a random ``FACE_API_KEY``, and samples that process's resident memory (RSS)
over the run. With ``--url`` and ``--api-key`` it loads a server that is already running (``--pid``
adds RSS sampling when the server runs on this machine).

Each client loops until the deadline: pick a request kind by weight, send it, time it. A response
other than the expected 2xx, or a transport error, counts as an error. The run prints p50/p95/p99
latencies per kind, requests/s, errors and the RSS samples (first and last thirds compared), and
writes everything as JSON.

The server side lives in ``benchmarks/local_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.local_server import REPO_ROOT, LocalServer, rss_bytes

DEFAULT_FACES_DIR = REPO_ROOT.parent / "shared" / "data" / "faces" / "dlib_johns"
DEFAULT_MIX = {"identify": 0.5, "verify": 0.3, "enroll": 0.2}
ENROLL_AT_START = 3  # images per person enrolled before the clock starts


# ---------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class FaceImages:
    """Real photos by person (file name, bytes): the first few are enrolled, the rest probe."""

    people: dict[str, list[tuple[str, bytes]]]

    @classmethod
    def from_dir(cls, root: Path) -> FaceImages:
        people = {
            person.name: [(path.name, path.read_bytes()) for path in sorted(person.glob("*.jpg"))]
            for person in sorted(root.iterdir())
            if person.is_dir()
        }
        people = {name: files for name, files in people.items() if len(files) > ENROLL_AT_START}
        if len(people) < 2:
            raise ValueError(f"{root} needs two or more person folders with over {ENROLL_AT_START} JPEGs")
        return cls(people)


@dataclass
class KindStats:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    mismatches: int = 0  # identify: the probe's own person was not the best candidate

    def summary(self) -> dict[str, float | int]:
        values = np.asarray(self.latencies_s, dtype=np.float64) * 1000.0
        p50, p95, p99 = (float(np.percentile(values, q)) if len(values) else 0.0 for q in (50, 95, 99))
        return {
            "requests": len(values),
            "errors": self.errors,
            "mismatches": self.mismatches,
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "p99_ms": round(p99, 1),
        }


@dataclass
class LoadReport:
    duration_s: float
    clients: int
    mix: dict[str, float]
    kinds: dict[str, KindStats]
    rss_samples: list[tuple[float, int]]  # (seconds since start, bytes)
    error_examples: list[str]
    gallery_faces_before: int = 0
    gallery_faces_after: int = 0

    @property
    def requests(self) -> int:
        return sum(len(stats.latencies_s) for stats in self.kinds.values())

    @property
    def errors(self) -> int:
        return sum(stats.errors for stats in self.kinds.values())

    def rss_thirds_mib(self) -> tuple[float, float] | None:
        """Median RSS of the first and of the last third of the samples, MiB."""
        values = [rss for _, rss in self.rss_samples]
        if len(values) < 3:
            return None
        third = len(values) // 3
        return statistics.median(values[:third]) / 2**20, statistics.median(values[-third:]) / 2**20

    def as_dict(self) -> dict[str, Any]:
        overall = KindStats([t for stats in self.kinds.values() for t in stats.latencies_s], self.errors)
        thirds = self.rss_thirds_mib()
        return {
            "duration_s": round(self.duration_s, 1),
            "clients": self.clients,
            "mix": self.mix,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration_s, 2) if self.duration_s else 0.0,
            "errors": self.errors,
            "overall": overall.summary(),
            "kinds": {kind: stats.summary() for kind, stats in sorted(self.kinds.items())},
            "rss_first_third_mib": None if thirds is None else round(thirds[0], 1),
            "rss_last_third_mib": None if thirds is None else round(thirds[1], 1),
            "rss_samples": [[round(t, 1), rss] for t, rss in self.rss_samples],
            "gallery_faces_before": self.gallery_faces_before,
            "gallery_faces_after": self.gallery_faces_after,
            "error_examples": self.error_examples,
        }


@dataclass(frozen=True)
class LoadPlan:
    duration_s: float
    clients: int
    mix: dict[str, float]
    seed: int = 0
    rss_interval_s: float = 1.0
    request_timeout_s: float = 120.0


class _Run:
    """One load run's shared state: subjects, images, statistics."""

    def __init__(self, client: httpx.AsyncClient, images: FaceImages, plan: LoadPlan) -> None:
        self.client = client
        self.images = images
        self.plan = plan
        self.subjects: dict[str, str] = {}  # person -> subject id
        self.kinds = {kind: KindStats() for kind in plan.mix}
        self.error_examples: list[str] = []

    async def setup(self) -> None:
        for person, files in self.images.people.items():
            created = await self.client.post("/v1/subjects", json={"name": person})
            created.raise_for_status()
            subject_id = created.json()["id"]
            enrolled = await self.client.post(
                f"/v1/subjects/{subject_id}/faces",
                files=[("images", (name, data, "image/jpeg")) for name, data in files[:ENROLL_AT_START]],
            )
            enrolled.raise_for_status()
            self.subjects[person] = subject_id

    def _probe(self, rng: random.Random) -> tuple[str, str, bytes]:
        person = rng.choice(sorted(self.images.people))
        name, data = rng.choice(self.images.people[person][ENROLL_AT_START:])
        return person, name, data

    async def _identify(self, rng: random.Random) -> httpx.Response:
        person, name, data = self._probe(rng)
        response = await self.client.post("/v1/identify", files={"image": (name, data, "image/jpeg")})
        if response.status_code == 200:
            faces = response.json()["faces"]
            best = faces[0]["candidates"][:1] if faces else []
            if not best or best[0]["subject_id"] != self.subjects[person]:
                self.kinds["identify"].mismatches += 1
        return response

    async def _verify(self, rng: random.Random) -> httpx.Response:
        person, name, data = self._probe(rng)
        if rng.random() < 0.5:
            _, other_name, other = self._probe(rng)
            files = {"image_a": (name, data, "image/jpeg"), "image_b": (other_name, other, "image/jpeg")}
            return await self.client.post("/v1/verify", files=files)
        return await self.client.post(
            "/v1/verify",
            files={"image": (name, data, "image/jpeg")},
            data={"subject_id": self.subjects[person]},
        )

    async def _enroll(self, rng: random.Random) -> httpx.Response:
        person, name, data = self._probe(rng)
        return await self.client.post(
            f"/v1/subjects/{self.subjects[person]}/faces", files={"images": (name, data, "image/jpeg")}
        )

    async def client_loop(self, index: int, deadline: float) -> None:
        rng = random.Random(self.plan.seed * 1000 + index)
        senders = {"identify": self._identify, "verify": self._verify, "enroll": self._enroll}
        kinds = sorted(self.plan.mix)
        weights = [self.plan.mix[kind] for kind in kinds]
        expected = {"identify": 200, "verify": 200, "enroll": 201}
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            try:
                response = await senders[kind](rng)
                failure = (
                    None
                    if response.status_code == expected[kind]
                    else f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                )
            except httpx.HTTPError as error:
                failure = f"{kind}: {type(error).__name__}: {error}"
            stats = self.kinds[kind]
            stats.latencies_s.append(time.perf_counter() - started)
            if failure is not None:
                stats.errors += 1
                if len(self.error_examples) < 20:
                    self.error_examples.append(failure)


async def _sample_rss(pid: int, started: float, interval_s: float, samples: list[tuple[float, int]]) -> None:
    while True:
        rss = rss_bytes(pid)
        if rss is not None:
            samples.append((time.monotonic() - started, rss))
        await asyncio.sleep(interval_s)


async def _gallery_faces(client: httpx.AsyncClient) -> int:
    response = await client.get("/v1/info")
    response.raise_for_status()
    return int(response.json()["gallery"]["faces"])


async def run_load(
    base_url: str, api_key: str, images: FaceImages, plan: LoadPlan, server_pid: int | None = None
) -> LoadReport:
    """Create one subject per person, then run ``plan.clients`` clients until ``plan.duration_s``."""
    unknown = set(plan.mix) - set(DEFAULT_MIX)
    if unknown or not plan.mix:
        raise ValueError(f"unknown request kinds {sorted(unknown)}; use {sorted(DEFAULT_MIX)}")
    limits = httpx.Limits(max_connections=plan.clients + 2, max_keepalive_connections=plan.clients + 2)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"X-API-Key": api_key},
        timeout=plan.request_timeout_s,
        limits=limits,
    ) as client:
        run = _Run(client, images, plan)
        await run.setup()
        faces_before = await _gallery_faces(client)
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        sampler = (
            asyncio.create_task(_sample_rss(server_pid, started, plan.rss_interval_s, samples))
            if server_pid is not None
            else None
        )
        deadline = started + plan.duration_s
        try:
            await asyncio.gather(*(run.client_loop(index, deadline) for index in range(plan.clients)))
        finally:
            if sampler is not None:
                sampler.cancel()
        elapsed = time.monotonic() - started
        faces_after = await _gallery_faces(client)
    return LoadReport(
        duration_s=elapsed,
        clients=plan.clients,
        mix=dict(plan.mix),
        kinds=run.kinds,
        rss_samples=samples,
        error_examples=run.error_examples,
        gallery_faces_before=faces_before,
        gallery_faces_after=faces_after,
    )


# ---------------------------------------------------------------------------------------------- CLI


def format_report(report: LoadReport) -> str:
    data = report.as_dict()
    lines = [
        f"{data['clients']} clients, {data['duration_s']} s: {data['requests']} requests "
        f"({data['requests_per_s']} req/s), {data['errors']} errors",
        f"{'kind':<10}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}",
    ]
    for kind, row in [*data["kinds"].items(), ("all", data["overall"])]:
        lines.append(
            f"{kind:<10}{row['requests']:>10}{row['errors']:>8}"
            f"{row['p50_ms']:>10}{row['p95_ms']:>10}{row['p99_ms']:>10}"
        )
    identify = data["kinds"].get("identify")
    if identify:
        lines.append(f"identify: own person not ranked first in {identify['mismatches']} responses")
    lines.append(f"gallery faces: {data['gallery_faces_before']} -> {data['gallery_faces_after']}")
    if data["rss_first_third_mib"] is not None:
        lines.append(
            f"server RSS: {len(data['rss_samples'])} samples; median first third "
            f"{data['rss_first_third_mib']} MiB, last third {data['rss_last_third_mib']} MiB, "
            f"max {max(rss for _, rss in data['rss_samples']) / 2**20:.1f} MiB"
        )
    for example in data["error_examples"][:5]:
        lines.append(f"error: {example}")
    return "\n".join(lines)


def parse_mix(text: str) -> dict[str, float]:
    """``identify=0.5,verify=0.3,enroll=0.2`` → weights."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in DEFAULT_MIX or not weight:
            raise argparse.ArgumentTypeError(f"bad mix entry {part!r}; use e.g. identify=0.5,verify=0.3")
        mix[name.strip()] = float(weight)
    if any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("mix weights must be >= 0 and not all zero")
    return mix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load_test", description="Bounded load test of face-service."
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (after set-up)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--api-key", help="its API key (needs read and enroll)")
    parser.add_argument("--pid", type=int, help="its process id, to sample RSS")
    parser.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES_DIR, help="one folder per person")
    parser.add_argument("--mix", type=parse_mix, default=dict(DEFAULT_MIX), help="kind=weight,...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-interval", type=float, default=1.0, help="seconds between RSS samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        print("load_test: --clients must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    if args.url and not args.api_key:
        print("load_test: --url needs --api-key", file=sys.stderr)
        return 2
    images = FaceImages.from_dir(args.faces_dir)
    plan = LoadPlan(args.duration, args.clients, args.mix, args.seed, args.rss_interval)
    if args.url:
        report = asyncio.run(run_load(args.url, args.api_key, images, plan, args.pid))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="face-load-") as scratch,
            LocalServer(Path(scratch) / "data") as server,
        ):
            print(f"started face-service serve at {server.base_url} (pid {server.pid})", file=sys.stderr)
            report = asyncio.run(run_load(server.base_url, server.api_key, images, plan, server.pid))
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
