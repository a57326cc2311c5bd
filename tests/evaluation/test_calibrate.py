"""Calibration: thresholds at target FARs, the logistic fit, calibration.json and the service using it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.evaluation.calibrate import calibrate, fit_match_probability, operating_point_name
from service.evaluation.cli import main
from service.evaluation.embed_files import EmbedOptions, FileEmbedder
from service.evaluation.embedding_cache import EmbeddingCache
from service.evaluation.pairs import build_lfw_folds, format_lfw_pairs, path_pattern, read_lfw_pairs
from service.evaluation.verification import NoFacePolicy, score_pairs
from service.packs.files import PackError
from service.packs.loader import CALIBRATION_FILE, load_pack
from service.packs.manifest import MANIFEST_FILE
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings
from service.usecases.thresholds import ThresholdPolicy


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "face-eval-cache"


@pytest.fixture(scope="module")
def orl_pairs(shared_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFW-format pairs over the first 12 ORL people: 6 folds × (40 same + 40 different)."""
    out = tmp_path_factory.mktemp("orl-pairs") / "pairs.txt"
    counts = {f"s{n}": 10 for n in range(1, 13)}
    out.write_text(format_lfw_pairs(build_lfw_folds(counts, n_folds=6, per_fold=40, seed=5)))
    return out


@pytest.fixture
def pack_copy(dlib_pack_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the dlib pack (made for ORL's small grey crops and dlib_johns' tight chips,
    which these tests use): calibration is written into it, never into the shared one."""
    target = tmp_path / "models" / "calibrated"
    shutil.copytree(dlib_pack_dir, target)
    return target


def test_logistic_fit_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.6, 1.0, 40_000)
    a, b = 40.0, -34.0  # P(same) = 1/2 at s = 0.85
    labels = rng.random(scores.size) < 1.0 / (1.0 + np.exp(-(a * scores + b)))
    fit = fit_match_probability(scores, labels)
    assert fit.a == pytest.approx(a, rel=0.1)
    assert -fit.b / fit.a == pytest.approx(0.85, abs=0.01)
    probabilities = fit.probability([0.7, 0.85, 0.95])
    assert np.all(np.diff(probabilities) > 0)
    assert probabilities[1] == pytest.approx(0.5, abs=0.05)


def test_logistic_fit_stays_finite_on_separable_scores() -> None:
    fit = fit_match_probability([0.2, 0.3, 0.4, 0.9, 0.95], [0, 0, 0, 1, 1])
    assert np.isfinite(fit.a)
    assert np.isfinite(fit.b)
    assert fit.a > 0
    assert fit.probability([0.3])[0] < 0.5 < fit.probability([0.95])[0]
    with pytest.raises(ValueError, match="both"):
        fit_match_probability([0.1, 0.2], [1, 1])


def test_thresholds_on_orl_scores_are_the_most_permissive_within_each_far(
    shared_faces: Path, dlib_pack_dir: Path, shared_cache: Path, orl_pairs: Path
) -> None:
    pairs = read_lfw_pairs(orl_pairs, path_pattern(shared_faces / "orl_att_faces", "sorted"))
    pack = load_pack(dlib_pack_dir)
    settings = Settings(intra_op_threads=1)
    embedder = FileEmbedder(
        pack,
        lambda: FacePipeline.from_pack(pack, settings),
        EmbedOptions.from_settings(settings),
        EmbeddingCache(shared_cache),
    )
    scored = score_pairs(pairs, embedder.embed_files(pairs.images).results, NoFacePolicy.FAIL)
    result = calibrate(scored.scores, scored.labels, [1e-1, 1e-2, 1e-3], probability=True)

    impostor = np.sort(scored.scores[~scored.labels])
    genuine = scored.scores[scored.labels]
    supported = {p.target_far: p for p in result.points if p.supported}
    assert set(supported) == {1e-1, 1e-2}  # 240 different-person pairs; FAR 1e-3 needs 1000
    for point in result.points:
        if not point.supported:
            assert point.threshold is None
            assert point.negatives == 240
            continue
        assert point.threshold is not None
        accepted = impostor >= point.threshold
        assert accepted.mean() <= point.target_far
        # One impostor score lower would break the target: the threshold is as low as allowed.
        assert (impostor >= impostor[~accepted][-1]).mean() > point.target_far
        assert point.tar == pytest.approx((genuine >= point.threshold).mean())
    assert result.probability is not None
    assert result.probability.a > 0
    assert "same-person pairs" in result.probability.note()


def test_calibrate_writes_calibration_json_that_the_loader_merges(
    shared_faces: Path,
    pack_copy: Path,
    shared_cache: Path,
    orl_pairs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = shared_faces / "orl_att_faces"
    args = ["calibrate", "--pairs", str(orl_pairs), "--images", str(images), "--pattern", "sorted"]
    args += ["--cache", str(shared_cache), "--write", str(pack_copy), "--json", "--quiet"]
    manifest_before = (pack_copy / MANIFEST_FILE).read_bytes()

    assert main([*args, "--fars", "1e-1", "1e-2", "1e-4", "--probability"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["written"] == str(pack_copy / CALIBRATION_FILE)
    assert payload["operating_points"]["far=1e-4"]["supported"] is False
    assert "not measurable" in out

    written = json.loads((pack_copy / CALIBRATION_FILE).read_text())
    assert set(written["operating_points"]) == {"far=1e-1", "far=1e-2"}  # unsupported FARs are not written
    assert written["source"]["pairs_file"] == str(orl_pairs.resolve())
    assert written["source"]["impostor_pairs"] == 240
    assert set(written["probability"]) == {"a", "b"}
    assert "logistic fit" in written["probability_note"]
    assert (pack_copy / MANIFEST_FILE).read_bytes() == manifest_before  # the manifest itself is untouched

    loaded = load_pack(pack_copy)
    points = loaded.manifest.calibration.operating_points
    default_before = json.loads(manifest_before)["calibration"]["operating_points"]["default"]
    assert points["default"].threshold == default_before["threshold"]
    assert points["default"].source == default_before["source"]
    assert points["far=1e-2"].threshold == pytest.approx(payload["operating_points"]["far=1e-2"]["threshold"])
    assert points["far=1e-2"].far == 1e-2
    assert "face-eval calibrate" in points["far=1e-2"].source
    assert loaded.calibration_path == (pack_copy / CALIBRATION_FILE).resolve()
    assert loaded.manifest.calibration.probability == written["probability"]
    policy = ThresholdPolicy(loaded.manifest.calibration, "far=1e-2")
    assert policy.default.name == "far=1e-2"
    assert policy.resolve("far=1e-1").value == points["far=1e-1"].threshold

    # A second run for other FARs keeps the points it does not replace.
    assert main([*args, "--fars", "1e-1"]) == 0
    capsys.readouterr()
    merged = json.loads((pack_copy / CALIBRATION_FILE).read_text())
    assert set(merged["operating_points"]) == {"far=1e-1", "far=1e-2"}


def test_the_service_reports_and_uses_calibrated_points(
    shared_faces: Path, pack_copy: Path, shared_cache: Path, orl_pairs: Path, tmp_path: Path
) -> None:
    images = shared_faces / "orl_att_faces"
    assert (
        main(
            [
                "calibrate",
                "--pairs",
                str(orl_pairs),
                "--images",
                str(images),
                "--pattern",
                "sorted",
                "--cache",
                str(shared_cache),
                "--write",
                str(pack_copy),
                "--fars",
                "1e-2",
                "--quiet",
            ]
        )
        == 0
    )
    calibrated = json.loads((pack_copy / CALIBRATION_FILE).read_text())["operating_points"]["far=1e-2"]
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=pack_copy.parent,
        pack=pack_copy.name,
        auth_enabled=False,
        intra_op_threads=1,
        device="cpu",
        threshold="far=1e-2",
    )
    john = sorted((shared_faces / "dlib_johns" / "John_Simm").glob("*.jpg"))
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/info").json()
        assert info["threshold"] == {"name": "far=1e-2", "value": calibrated["threshold"]}
        assert info["operating_points"]["far=1e-2"]["source"] == calibrated["source"]
        assert "default" in info["operating_points"]
        files = {"image_a": john[0].read_bytes(), "image_b": john[1].read_bytes()}
        verdict = client.post("/v1/verify", files=files, data={"threshold": "default"}).json()
        assert verdict["threshold"]["name"] == "default"
        verdict = client.post("/v1/verify?threshold=far=1e-2", files=files).json()
        assert verdict["threshold"] == {"name": "far=1e-2", "value": calibrated["threshold"]}
        assert verdict["match"] == (verdict["similarity"] >= calibrated["threshold"])


def test_loader_ignores_another_packs_calibration_and_refuses_bad_files(
    pack_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pack_id = load_pack(pack_copy, verify=False).manifest.id
    point = {"threshold": 0.9, "far": 0.001, "source": "test"}
    path = pack_copy / CALIBRATION_FILE

    path.write_text(json.dumps({"pack_id": "some-other-pack", "operating_points": {"far=1e-3": point}}))
    with caplog.at_level(logging.WARNING, logger="service.packs.loader"):
        loaded = load_pack(pack_copy, verify=False)
    assert "far=1e-3" not in loaded.manifest.calibration.operating_points
    assert loaded.calibration_path is None
    assert "some-other-pack" in caplog.text

    path.write_text(json.dumps({"pack_id": pack_id, "operating_points": {"default": point}}))
    with pytest.raises(PackError, match="redefines the pack's 'default'"):
        load_pack(pack_copy, verify=False)

    path.write_text(json.dumps({"pack_id": pack_id, "operating_points": {"x": {"threshold": 3}}}))
    with pytest.raises(PackError, match=r"operating_points\.x\.threshold"):
        load_pack(pack_copy, verify=False)

    path.write_text("{not json")
    with pytest.raises(PackError, match="not a valid calibration file"):
        load_pack(pack_copy, verify=False)


def test_calibration_for_another_pack_is_not_written(
    shared_faces: Path, pack_copy: Path, dlib_pack_dir: Path, shared_cache: Path, orl_pairs: Path
) -> None:
    # Measured with the copy, written into a folder that holds a different pack id.
    manifest = json.loads((pack_copy / MANIFEST_FILE).read_text())
    other = pack_copy.parent / "other"
    other.mkdir()
    (other / MANIFEST_FILE).write_text(json.dumps(manifest | {"id": "another-pack"}))
    code = main(
        [
            "calibrate",
            "--pairs",
            str(orl_pairs),
            "--images",
            str(shared_faces / "orl_att_faces"),
            "--pattern",
            "sorted",
            "--pack",
            str(dlib_pack_dir),
            "--cache",
            str(shared_cache),
            "--write",
            str(other),
            "--fars",
            "1e-1",
            "--quiet",
        ]
    )
    assert code == 2
    assert not (other / CALIBRATION_FILE).exists()
    assert operating_point_name(1e-3) == "far=1e-3"
