"""The synthetic identity generator, its calibration on real faces, and a ``--quick`` benchmark run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic_gallery import (
    IdentityGenerator,
    IdentityModel,
    IdentityStatistics,
    calibrate,
    decay_for_effective_dimension,
    effective_dimension,
    measure_identity_statistics,
    pair_cosines,
    power_spectrum,
)

MODEL = IdentityModel(
    dim=64, centre_spread=0.5, between_decay=0.6, face_spread=0.2, face_spread_jitter=0.3, within_decay=0.4
)


def _close_distributions(target: IdentityStatistics, achieved: IdentityStatistics, tolerance: float) -> None:
    """Means within ``tolerance`` target std, std within 35 %, for same and different pairs."""
    for want, got in ((target.same, achieved.same), (target.different, achieved.different)):
        assert abs(got.mean - want.mean) < tolerance * want.std, (want, got)
        assert 0.65 * want.std < got.std < 1.35 * want.std, (want, got)


def test_gallery_is_unit_vectors_grouped_by_identity() -> None:
    generator = IdentityGenerator(MODEL, seed=1)
    gallery = generator.gallery(1003, faces_per_identity=5, seed=0)

    assert gallery.vectors.shape == (1003, 64)
    assert gallery.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gallery.vectors, axis=1), 1.0, atol=1e-5)
    assert np.bincount(gallery.identities).tolist() == [5] * 200 + [3]
    same, different = pair_cosines(gallery.vectors, gallery.identities)
    assert same.min() > np.median(different)  # faces of one person are nearer than strangers


def test_generation_is_reproducible_and_seeded() -> None:
    first = IdentityGenerator(MODEL, seed=3).gallery(200, 4, seed=7)
    again = IdentityGenerator(MODEL, seed=3).gallery(200, 4, seed=7)
    other = IdentityGenerator(MODEL, seed=3).gallery(200, 4, seed=8)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    assert not np.allclose(first.vectors, other.vectors)


def test_queries_are_fresh_faces_of_enrolled_identities() -> None:
    generator = IdentityGenerator(MODEL, seed=2)
    gallery = generator.gallery(2000, faces_per_identity=5, seed=0)
    queries, identities = generator.queries(gallery, 300, seed=0)

    assert queries.shape == (300, 64)
    assert identities.min() >= 0
    assert identities.max() < len(gallery.centres)
    assert not np.isin(queries, gallery.vectors).all(axis=1).any()  # not copies of gallery faces
    nearest = np.argmax(queries @ gallery.vectors.T, axis=1)
    assert (gallery.identities[nearest] == identities).mean() > 0.9


def test_spectrum_decay_sets_the_effective_dimension() -> None:
    assert effective_dimension(power_spectrum(128, 0.0)) == pytest.approx(128)
    for target in (10.0, 45.0, 100.0):
        decay = decay_for_effective_dimension(128, target)
        assert effective_dimension(power_spectrum(128, decay)) == pytest.approx(target, rel=1e-4)


def test_measured_statistics_describe_the_pairs() -> None:
    generator = IdentityGenerator(MODEL, seed=4)
    gallery = generator.gallery(400, faces_per_identity=8, seed=0)
    stats = measure_identity_statistics(gallery.vectors, gallery.identities)

    assert stats.identities == 50
    assert stats.faces == 400
    assert stats.same.count == 50 * 8 * 7 // 2
    assert stats.different.count == 400 * 399 // 2 - stats.same.count
    assert stats.same.mean > stats.different.mean
    assert list(stats.same.quantiles) == sorted(stats.same.quantiles)
    with pytest.raises(ValueError, match="one label per embedding"):
        measure_identity_statistics(gallery.vectors, gallery.identities[:-1])


def test_calibration_reproduces_the_statistics_of_a_known_model() -> None:
    truth = IdentityGenerator(MODEL, seed=5).gallery(480, faces_per_identity=8, seed=0)
    target = measure_identity_statistics(truth.vectors, truth.identities)

    fitted = calibrate(target, MODEL.dim, identities=120, faces_per_identity=8)

    _close_distributions(target, fitted.achieved, tolerance=0.3)
    assert fitted.fit_error < 0.3


def test_calibration_on_real_faces(shared_faces: Path, default_pack_dir: Path) -> None:
    from benchmarks.service_bench import embed_real_faces, identity_photos
    from service.packs.loader import load_pack
    from service.pipeline.face_pipeline import FacePipeline
    from service.settings import Settings

    pipeline = FacePipeline.from_pack(load_pack(default_pack_dir), Settings(device="cpu", intra_op_threads=2))
    embeddings, labels, misses = embed_real_faces(pipeline, identity_photos(shared_faces, ["dlib_johns"]))
    assert misses == 0
    target = measure_identity_statistics(embeddings, labels)
    assert target.same.mean > target.different.mean

    fitted = calibrate(target, pipeline.embedding_size, identities=120)

    _close_distributions(target, fitted.achieved, tolerance=0.5)
    # Not uniform noise: random unit vectors in 128-d would have mean cosine ~0 for every pair, genuine
    # or not; the fitted gallery separates its identities as the real faces do.
    assert fitted.achieved.same.mean > fitted.achieved.different.mean + 0.3


@pytest.mark.slow
def test_quick_benchmark_run_writes_every_section(
    shared_faces: Path, default_pack_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from benchmarks.service_bench import main

    monkeypatch.setenv("FACE_MODELS_DIR", str(default_pack_dir.parent))
    monkeypatch.setenv("FACE_PACK", default_pack_dir.name)
    monkeypatch.setenv("FACE_DEVICE", "cpu")
    out = tmp_path / "bench.json"

    assert main(["--quick", "--out", str(out), "--faces-dir", str(shared_faces)]) == 0

    report = json.loads(out.read_text())
    embedding = {(row["flip_tta"], row["batch"]): row for row in report["embedding"]}
    assert set(embedding) == {(True, 1), (True, 32), (False, 1), (False, 32)}
    assert all(row["faces_per_s"] > 0 for row in embedding.values())
    assert sum(row["is_pack_default"] for row in embedding.values()) == 2

    search = report["search"]
    assert [row["gallery_size"] for row in search] == [2000, 12000]
    assert [row["index_kind"] for row in search] == ["flat", "hnsw"]  # quick mode: HNSW from 10,000
    assert search[0]["recall_at_1"] == 1.0  # the flat index is exact
    assert 0.9 <= search[1]["recall_at_1"] <= 1.0
    assert all(row["p50_ms"] > 0 for row in search)

    e2e = report["end_to_end"]
    assert e2e["photo_size"] == [640, 480]
    assert e2e["gallery"]["query_faces_found"] == 1
    assert e2e["gallery"]["query_top1_correct"]
    assert [row["clients"] for row in e2e["results"]] == [1, 8]
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in e2e["results"])

    printed = capsys.readouterr().out
    assert "| clients | requests |" in printed
    assert "| gallery | index |" in printed
