"""Load: 8 concurrent clients mixing identify, verify and enroll against the real server.

~20 s here; 10 minutes with ``FACE_HEAVY=1``. Zero errors, every kind served, every acknowledged
enrollment in the gallery, identify right on the probes, and the server's resident memory flat:
the median RSS of the last third of the run is compared with the first third's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from benchmarks.load_test import DEFAULT_MIX, FaceImages, LoadPlan, format_report, run_load
from tests.robustness.conftest import ServerFactory, heavy_run

DURATION_S = 600.0 if heavy_run() else 20.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(DURATION_S) + 300)]
CLIENTS = 8
# Allocator arenas and caches settle during the first seconds; after that growth must stay small.
RSS_GROWTH_FACTOR = 1.15
RSS_GROWTH_SLACK_MIB = 48.0


def test_mixed_load_has_no_errors_and_flat_memory(
    make_server: ServerFactory, face_images: FaceImages, tmp_path: Path
) -> None:
    server = make_server("load")
    server.start()
    plan = LoadPlan(DURATION_S, CLIENTS, dict(DEFAULT_MIX), seed=7, rss_interval_s=0.5)
    report = asyncio.run(run_load(server.base_url, server.api_key, face_images, plan, server.pid))
    assert server.stop() == 0
    print("\n" + format_report(report))
    summary = report.as_dict()
    (tmp_path / "load_report.json").write_text(json.dumps(summary, indent=2))

    assert report.errors == 0, report.error_examples
    for kind in DEFAULT_MIX:
        assert summary["kinds"][kind]["requests"] > 0, f"no {kind} request completed"
    enrolled = summary["kinds"]["enroll"]["requests"]
    assert report.gallery_faces_after == report.gallery_faces_before + enrolled
    identified = summary["kinds"]["identify"]["requests"]
    assert summary["kinds"]["identify"]["mismatches"] <= max(1, identified // 50)

    thirds = report.rss_thirds_mib()
    assert thirds is not None, "too few RSS samples"
    first, last = thirds
    assert last <= first * RSS_GROWTH_FACTOR + RSS_GROWTH_SLACK_MIB, (
        f"RSS grew from {first:.0f} to {last:.0f} MiB"
    )
