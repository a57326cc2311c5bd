"""``benchmarks.archive_bench``: a small run through ``main`` writes every number, and they add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import archive_bench


def test_a_small_run_exports_imports_and_reembeds(
    tmp_path: Path, shared_faces: Path, default_pack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    out = tmp_path / "archive.json"
    assert (
        archive_bench.main(["--sizes", "12", "30", "--faces-dir", str(shared_faces), "--out", str(out)]) == 0
    )
    payload = json.loads(out.read_text())
    rows = payload["results"]
    assert [(row["faces"], row["reembedded"]) for row in rows] == [(12, False), (30, False), (12, True)]
    for row in rows:
        assert row["export_s"] > 0
        assert row["import_s"] > 0
        assert row["import_faces_per_s"] == pytest.approx(row["faces"] / row["import_s"])
    # Real crops: the archive grows with the faces (each crop a PNG of tens of kB).
    assert rows[1]["archive_mb"] > rows[0]["archive_mb"] > 0.2
    assert "| 30 | same pack |" in payload["table"]
