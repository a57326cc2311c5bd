"""``face-eval`` for real protocols: face choice, per-pair scores, cache keys, named thresholds,
non-mated identities and progress, on the shared in-the-wild photos through the default pack."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.evaluation.cli import main
from service.evaluation.embed_files import EmbedProgress, format_progress
from service.evaluation.embedding_cache import EmbeddingCache, FileEmbedding
from service.evaluation.image_files import read_image
from service.evaluation.pairs import identity_folders
from service.evaluation.verification import SCORES_COLUMNS
from service.packs.loader import CALIBRATION_FILE, load_pack
from service.packs.manifest import MANIFEST_FILE

DEEPFACE = "deepface_testset"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")  # the test machine's cores are shared


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluation tests' common cache (keys are content hashes, so sharing is safe)."""
    return tmp_path_factory.getbasetemp() / "face-eval-cache"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_json(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def deepface_pairs_args(root: Path) -> list[str]:
    return ["--pairs", str(root / "master.csv"), "--labels", str(root / "labels.csv"), "--images", str(root)]


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == SCORES_COLUMNS
        return list(reader)


# ------------------------------------------------------------------------------ scores and named points


def test_scores_csv_has_a_row_per_pair_with_boxes_inside_the_images(
    shared_faces: Path,
    default_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = shared_faces / DEEPFACE
    scores_file = tmp_path / "out" / "scores.csv"
    args = ["pairs", *deepface_pairs_args(root), "--pack", str(default_pack_dir)]
    args += ["--cache", str(shared_cache), "--scores", str(scores_file), "--json", "--quiet"]
    code, out, _ = run(args, capsys)
    assert code == 0
    result = last_json(out)
    assert result["scores_file"] == str(scores_file)

    rows = read_scores(scores_file)
    master = (root / "master.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == len(master) == result["pairs"]
    assert [row["label"] for row in rows] == ["1" if line.endswith("Yes") else "0" for line in master]
    sizes: dict[str, tuple[int, int]] = {}
    for row in rows:
        for side in ("a", "b"):
            path = row[f"file_{side}"]
            if path not in sizes:
                height, width = read_image(Path(path)).shape[:2]
                sizes[path] = (width, height)
            width, height = sizes[path]
            x1, y1, x2, y2 = (float(row[f"{side}_{c}"]) for c in ("x1", "y1", "x2", "y2"))
            # Detector boxes may reach a little past the border; a face is well inside the photo.
            slack = 0.05 * max(x2 - x1, y2 - y1)
            assert -slack <= x1 < x2 <= width + slack
            assert -slack <= y1 < y2 <= height + slack
            assert int(row[f"{side}_faces"]) >= 1
        assert -1.0 <= float(row["score"]) <= 1.0
    # The CSV's scores are the report's: its best threshold separates them as reported.
    scores = np.asarray([float(row["score"]) for row in rows])
    labels = np.asarray([row["label"] == "1" for row in rows])
    accuracy = np.mean((scores >= result["threshold"]) == labels)
    assert accuracy == pytest.approx(result["best_accuracy"])

    # Named operating points: every one of the pack's, measured on the same scores.
    points = load_pack(default_pack_dir).manifest.calibration.operating_points
    assert set(result["operating_points"]) == set(points) >= {"far=1e-2", "far=1e-3", "far=1e-4", "default"}
    for name, point in points.items():
        measured = result["operating_points"][name]
        assert measured["threshold"] == point.threshold
        assert measured["tar"] == pytest.approx(np.mean(scores[labels] >= point.threshold))
        assert measured["far"] == pytest.approx(np.mean(scores[~labels] >= point.threshold))
        assert measured["impostor_pairs"] == int((~labels).sum())

    # calibrate writes the same file (from the cache: no model runs).
    calibrated_scores = tmp_path / "calibrate.csv"
    args = ["calibrate", *deepface_pairs_args(root), "--pack", str(default_pack_dir)]
    args += ["--cache", str(shared_cache), "--scores", str(calibrated_scores), "--fars", "1e-2", "--quiet"]
    code, out, _ = run(args, capsys)
    assert code == 0
    assert f"scores:     {calibrated_scores}" in out
    assert read_scores(calibrated_scores) == rows


def test_text_report_lists_the_named_thresholds(
    shared_faces: Path, default_pack_dir: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_faces / DEEPFACE
    args = ["pairs", *deepface_pairs_args(root), "--pack", str(default_pack_dir)]
    code, out, _ = run([*args, "--cache", str(shared_cache), "--quiet"], capsys)
    assert code == 0
    assert "the pack's named thresholds" in out
    far_1e3 = next(line for line in out.splitlines() if line.strip().startswith("far=1e-3:"))
    assert "TAR " in far_1e3
    assert "FAR " in far_1e3
    manifest = load_pack(default_pack_dir).manifest
    assert f"at threshold {manifest.calibration.operating_points['far=1e-3'].threshold:.4f}" in far_1e3
    assert any(line.strip().startswith("default:") for line in out.splitlines())
    flip = "on" if manifest.embedder.flip_augmentation else "off"
    assert f"(face: centre, flip {flip})" in out  # FACE_FACE_POLICY's default; the manifest's flip


def test_an_image_without_a_face_has_an_empty_score_and_box(
    shared_faces: Path,
    default_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    folders = identity_folders(shared_faces / DEEPFACE)
    jack, mark = folders["Jack"], folders["Mark"]
    rows = [(jack[0], jack[1], 1), (jack[0], blank, 0), (mark[0], mark[1], 1), (jack[0], mark[0], 0)]
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("file_x,file_y,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    scores_file = tmp_path / "scores.csv"
    args = ["pairs", "--pairs", str(pairs_file), "--images", str(tmp_path), "--pack", str(default_pack_dir)]
    args += ["--cache", str(shared_cache), "--scores", str(scores_file), "--quiet"]
    code, _, _ = run(args, capsys)
    assert code == 0
    genuine, with_blank, *_ = read_scores(scores_file)
    assert float(genuine["score"]) > 0.4
    assert with_blank["score"] == ""
    assert [with_blank[f"b_{c}"] for c in ("x1", "y1", "x2", "y2", "faces")] == ["", "", "", "", "0"]
    assert with_blank["a_x1"] == genuine["a_x1"] != ""


# ------------------------------------------------------------------------------------------ the cache


def test_cache_entries_keep_box_and_face_count(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    vector = np.full(4, 0.5, np.float32)
    cache.put("ab" * 32, FileEmbedding(vector, 0.9, 0.01, (1.0, 2.0, 30.5, 40.25), 3))
    cache.put("cd" * 32, FileEmbedding(None, None, 0.02, None, 0))
    found = cache.get("ab" * 32)
    assert found is not None
    assert found.box == (1.0, 2.0, 30.5, 40.25)
    assert found.faces_in_image == 3
    assert found.embedding is not None
    assert np.array_equal(found.embedding, vector)
    empty = cache.get("cd" * 32)
    assert empty is not None
    assert (empty.embedding, empty.box, empty.faces_in_image) == (None, None, 0)


def test_cache_misses_after_a_manifest_edit_and_for_other_face_flip_or_detector_size(
    shared_faces: Path, default_pack_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "models" / "edited"
    shutil.copytree(default_pack_dir, pack)
    folders = identity_folders(shared_faces / DEEPFACE)
    angelina, scarlett = folders["Angelina"], folders["Scarlett"]
    rows = [(angelina[0], angelina[1], 1), (scarlett[0], scarlett[1], 1)]
    rows += [(angelina[2], scarlett[2], 0), (angelina[0], scarlett[1], 0)]
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("file_x,file_y,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    scores_file = tmp_path / "scores.csv"
    base = ["pairs", "--pairs", str(pairs_file), "--images", str(tmp_path), "--pack", str(pack)]
    base += ["--cache", str(tmp_path / "cache"), "--scores", str(scores_file), "--json"]
    images = 6

    def cache_counts(*extra: str) -> dict[str, int]:
        code, out, err = run([*base, *extra], capsys)
        assert code == 0, err
        counts: dict[str, int] = last_json(out)["cache"]
        return counts

    assert cache_counts() == {"hits": 0, "computed": images}
    assert cache_counts() == {"hits": images, "computed": 0}
    plain_scores = [row["score"] for row in read_scores(scores_file)]

    # A threshold edit in the copied manifest (not in its own sha256 list): new keys, nothing stale.
    manifest = json.loads((pack / MANIFEST_FILE).read_text())
    manifest["calibration"]["operating_points"]["far=1e-2"]["threshold"] = 0.31
    (pack / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert cache_counts() == {"hits": 0, "computed": images}
    assert cache_counts() == {"hits": images, "computed": 0}

    # calibration.json only adds named thresholds (no embedding changes): the entries stay valid,
    # and the report measures the added point too.
    point = {"threshold": 0.25, "far": 0.1, "source": "test"}
    calibration = {"pack_id": manifest["id"], "operating_points": {"far=1e-1": point}}
    (pack / CALIBRATION_FILE).write_text(json.dumps(calibration))
    code, out, _ = run(base, capsys)
    assert code == 0
    assert last_json(out)["cache"] == {"hits": images, "computed": 0}
    assert last_json(out)["operating_points"]["far=1e-1"]["threshold"] == 0.25

    # The face policy, flip TTA and the detector size each change the embedding: each its own key.
    assert cache_counts("--face", "largest") == {"hits": 0, "computed": images}
    assert cache_counts("--face", "centre") == {"hits": images, "computed": 0}  # the default's entries
    manifest_flip = bool(manifest["embedder"].get("flip_augmentation", False))
    code, out, _ = run([*base, "--flip", "off" if manifest_flip else "on"], capsys)
    assert code == 0
    flipped = last_json(out)
    assert flipped["cache"] == {"hits": 0, "computed": images}
    assert flipped["flip"] is not manifest_flip
    assert [row["score"] for row in read_scores(scores_file)] != plain_scores
    # Saying what the manifest says is the default's key.
    assert cache_counts("--flip", "on" if manifest_flip else "off") == {"hits": images, "computed": 0}
    assert cache_counts("--det-input-size", "320") == {"hits": 0, "computed": images}


def test_bad_face_or_detector_size_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--face", "biggest"], ["--det-input-size", "10"], ["--flip", "maybe"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["pairs", "--pairs", "p.txt", "--images", ".", *extra])
        assert exit_info.value.code == 2
        assert f"argument {extra[0]}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- progress


def test_progress_shows_rate_time_left_and_cache_hits(
    shared_faces: Path, default_pack_dir: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = format_progress("embedding images", EmbedProgress(100, 400, 60, 40, 10.0))
    assert text == (
        "embedding images: 100/400 images (60 from cache, 40 computed), 10.0 images/s, about 30 s left"
    )
    start = format_progress("x", EmbedProgress(0, 10, 0, 0, 0.0))
    assert start == "x: 0/10 images (0 from cache, 0 computed)"  # no rate before any time has passed

    root = shared_faces / DEEPFACE
    args = [
        "pairs",
        *deepface_pairs_args(root),
        "--pack",
        str(default_pack_dir),
        "--cache",
        str(shared_cache),
    ]
    run(args, capsys)  # fills the cache if no test did yet
    code, _, err = run(args, capsys)
    assert code == 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("embedding images: 25/25 images (25 from cache, 0 computed), ")
    assert "images/s, done" in last


# ------------------------------------------------------------------------------------ identification


def build_identity_folder(shared_faces: Path, root: Path, sizes: dict[str, int]) -> Path:
    """``root/<name>/`` with the first ``sizes[name]`` photos of each deepface identity (symlinks)."""
    folders = identity_folders(shared_faces / DEEPFACE)
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        for path in folders[name][:count]:
            (root / name / path.name).symlink_to(path)
    return root


def identify(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    code, out, err = run(["identify", *args, "--json", "--quiet"], capsys)
    assert code == 0, err
    return last_json(out), out


MATED = {"Angelina": 6, "Scarlett": 6, "Jennifer": 6, "Mark": 5, "Jack": 5, "unnamed_1": 6}
SINGLE = ("Jeff", "Sundar", "Marissa", "Elon", "unnamed_3", "unnamed_4")


def test_single_image_people_are_the_non_mated_probes(
    shared_faces: Path,
    default_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = build_identity_folder(
        shared_faces, tmp_path / "set", MATED | dict.fromkeys(SINGLE, 1) | {"unnamed_2": 2}
    )
    result, out = identify(
        [
            "--images",
            str(images),
            "--gallery-per-identity",
            "2",
            "--non-mated",
            "single-image",
            "--fpirs",
            "0.5",
            "0.2",
            "0.01",
            "--pack",
            str(default_pack_dir),
            "--cache",
            str(shared_cache),
        ],
        capsys,
    )
    assert result["impostor_identities"] == sorted(SINGLE)
    assert result["non_mated_probes"] == len(SINGLE)
    assert result["identities_enrolled"] == len(MATED)
    assert result["mated_probes"] == sum(MATED.values()) - 2 * len(MATED)
    # unnamed_2 has two photos: both would be enrolled, none searched. It is reported, not enrolled.
    assert result["skipped_identities"] == ["unnamed_2"]
    assert "skipped:    1 identity with too few images" in out
    assert "unnamed_2" in out
    assert result["rank_1"] == 1.0  # measured: every mated probe
    # Any FPIRs: six non-mated probes measure 50% and 20%, not 1%.
    assert set(result["tpir_at_fpir"]) == {"0.5", "0.2", "1e-2"}
    assert result["tpir_at_fpir"]["1e-2"] is None
    assert 0.0 < result["tpir_at_fpir"]["0.2"] <= 1.0
    at_default = result["default_threshold"]
    assert (
        at_default["threshold"]
        == load_pack(default_pack_dir).manifest.calibration.operating_points["default"].threshold
    )
    assert 0.8 < at_default["tpir"] <= 1.0
    assert at_default["fpir"] in {k / len(SINGLE) for k in range(len(SINGLE) + 1)}
    assert "at default: threshold" in out


def test_non_mated_from_a_file_and_unknown_names_refused(
    shared_faces: Path,
    default_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = build_identity_folder(shared_faces, tmp_path / "set", MATED)
    held_out = tmp_path / "non_mated.txt"
    held_out.write_text("# people never enrolled\nMark\n\nJack\n")
    args = ["--images", str(images), "--gallery-per-identity", "2", "--non-mated", str(held_out)]
    args += ["--pack", str(default_pack_dir), "--cache", str(shared_cache)]
    result, _ = identify(args, capsys)
    assert result["impostor_identities"] == ["Jack", "Mark"]
    assert result["non_mated_probes"] == MATED["Mark"] + MATED["Jack"]
    assert result["identities_enrolled"] == len(MATED) - 2
    assert result["skipped_identities"] == []

    held_out.write_text("Mark\nNobody\n")
    code, _, err = run(["identify", *args, "--quiet"], capsys)
    assert code == 2
    assert "Nobody" in err
    assert "--non-mated" in err
