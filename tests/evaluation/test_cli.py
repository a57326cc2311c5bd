"""``face-eval pairs`` / ``make-pairs`` end to end on the shared photos.

The in-the-wild photos go through the default pack; ORL's small grey crops and the dlib_johns chips
(tight crops the default pack is not made for) through the dlib pack, the default before it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.evaluation.cli import main
from service.evaluation.pairs import (
    build_lfw_folds,
    format_lfw_pairs,
    identity_folders,
    path_pattern,
    read_lfw_pairs,
)
from tests.evaluation.test_pairs import lfw_layout

JSON_KEYS = {
    "accuracy",
    "accuracy_std",
    "tar_at_far",
    "threshold",
    "no_face",
    "auc",
    "eer",
    "seconds_per_image",
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")  # the test machine's cores are shared


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the session's evaluation tests (keys are content hashes)."""
    return tmp_path_factory.getbasetemp() / "face-eval-cache"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_json(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_lfw_pairs_on_dlib_johns_json_then_cached(
    shared_faces: Path, dlib_pack_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "johns"
    counts = lfw_layout(shared_faces / "dlib_johns", images, ".jpg")
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(format_lfw_pairs(build_lfw_folds(counts, n_folds=10, per_fold=12, seed=1)))
    args = ["pairs", "--pairs", str(pairs_file), "--images", str(images), "--pack", str(dlib_pack_dir)]
    args += ["--cache", str(tmp_path / "cache"), "--json"]

    code, out, _ = run(args, capsys)
    assert code == 0
    first = last_json(out)
    assert set(first) >= JSON_KEYS
    assert first["pairs"] == 240
    assert first["folds"] == 10
    # Five people, chips the embedder was made for: measured right on every pair.
    assert first["accuracy"] == 1.0
    assert 0.0 <= first["accuracy_std"] < 0.1
    assert first["tar_at_far"]["1e-1"] == 1.0
    assert first["tar_at_far"]["1e-3"] is None  # 120 different-person pairs cannot measure FAR 1e-3
    assert -1.0 < first["threshold"] < 1.0
    assert first["no_face"] == 0
    assert first["cache"]["computed"] + first["cache"]["hits"] == first["images"] > 0
    assert first["seconds_per_image"] > 0
    assert "not measurable: needs 1000 different-person pairs" in out

    code, out, _ = run(args, capsys)
    assert code == 0
    second = last_json(out)
    assert second["cache"] == {"hits": first["images"], "computed": 0}
    for key in ("accuracy", "accuracy_std", "threshold", "auc", "tar_at_far"):
        assert second[key] == first[key]


def test_lfw_pairs_with_pgm_extension_on_orl(
    shared_faces: Path,
    dlib_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    subset = tmp_path / "orl10"
    subset.mkdir()
    for name in [f"s{n}" for n in range(1, 11)]:
        (subset / name).symlink_to(shared_faces / "orl_att_faces" / name, target_is_directory=True)
    images = tmp_path / "lfw"
    counts = lfw_layout(subset, images, ".pgm")
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(format_lfw_pairs(build_lfw_folds(counts, n_folds=5, per_fold=30, seed=2)))

    code, out, _ = run(
        [
            "pairs",
            "--pairs",
            str(pairs_file),
            "--images",
            str(images),
            "--ext",
            "pgm",
            "--pack",
            str(dlib_pack_dir),
            "--cache",
            str(shared_cache),
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    result = last_json(out)
    assert result["folds"] == 5
    assert result["pairs"] == 300
    assert result["accuracy"] >= 0.99  # measured 0.99 (3 of 300 pairs wrong)
    assert result["auc"] > 0.999  # measured 0.99987


def test_deepface_master_csv_through_labels(
    shared_faces: Path, default_pack_dir: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_faces / "deepface_testset"
    code, out, _ = run(
        [
            "pairs",
            "--pairs",
            str(root / "master.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--images",
            str(root),
            "--pack",
            str(default_pack_dir),
            "--cache",
            str(shared_cache),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = last_json(out)
    rows = (root / "master.csv").read_text().strip().splitlines()[1:]
    assert result["pairs"] == len(rows)
    assert result["genuine_pairs"] == sum(row.strip().endswith("Yes") for row in rows)
    assert result["accuracy"] == 1.0  # measured: every pair
    assert result["folds"] == 10


def test_no_face_policy_fail_or_exclude(
    shared_faces: Path,
    dlib_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A plain grey picture holds no face; every pair that uses it is affected.
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    johns = identity_folders(shared_faces / "dlib_johns")
    salley, simm = johns["John_Salley"], johns["John_Simm"]
    rows = [(salley[0], salley[1], 1), (salley[2], salley[3], 1), (simm[0], simm[1], 1)]
    rows += [(salley[0], simm[0], 0), (salley[1], simm[1], 0), (simm[2], salley[4], 0)]
    rows += [(blank, salley[5], 1), (blank, simm[3], 0)]
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("file_x,file_y,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    base = ["pairs", "--pairs", str(pairs_file), "--images", str(tmp_path), "--pack", str(dlib_pack_dir)]
    base += ["--cache", str(shared_cache), "--json"]

    code, out, _ = run(base, capsys)
    assert code == 0
    failed = last_json(out)
    assert failed["no_face"] == 1
    assert failed["pairs_with_no_face"] == 2
    assert failed["no_face_policy"] == "fail"
    assert failed["pairs"] == 8
    assert "blank.jpg" in out
    # The same-person pair with the blank image is a false reject at any threshold above -1.
    assert failed["best_accuracy"] == pytest.approx(7 / 8)

    code, out, _ = run([*base, "--exclude-no-face"], capsys)
    assert code == 0
    excluded = last_json(out)
    assert excluded["pairs"] == 6
    assert excluded["pairs_excluded"] == 2
    assert excluded["best_accuracy"] == 1.0


def test_plot_writes_a_png(
    shared_faces: Path,
    default_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("matplotlib")
    root = shared_faces / "deepface_testset"
    plot = tmp_path / "roc.png"
    code, _, _ = run(
        [
            "pairs",
            "--pairs",
            str(root / "master.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--images",
            str(root),
            "--pack",
            str(default_pack_dir),
            "--cache",
            str(shared_cache),
            "--plot",
            str(plot),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.width >= 600


def test_make_pairs_writes_an_lfw_file_for_the_sorted_pattern(
    shared_faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "orl_pairs.txt"
    images = shared_faces / "orl_att_faces"
    code, out, _ = run(
        ["make-pairs", "--images", str(images), "--out", str(out_file), "--per-fold", "20"], capsys
    )
    assert code == 0
    assert "--pattern sorted" in out
    pairs = read_lfw_pairs(out_file, path_pattern(images, "sorted"))
    assert pairs.n_folds == 10
    assert len(pairs.pairs) == 400
    assert pairs.missing_files() == []
    assert all((p.first.parent == p.second.parent) == p.same for p in pairs.pairs)


def test_bad_input_exits_2_with_a_message(
    default_pack_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        [
            "pairs",
            "--pairs",
            str(tmp_path / "nope.txt"),
            "--images",
            str(tmp_path),
            "--pack",
            str(default_pack_dir),
        ],
        capsys,
    )
    assert code == 2
    assert "does not exist" in err

    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("1\nalice 1 2\nalice 1 bob 1\n")
    code, _, err = run(
        ["pairs", "--pairs", str(pairs_file), "--images", str(tmp_path), "--pack", str(default_pack_dir)],
        capsys,
    )
    assert code == 2
    assert "not found" in err
    assert "alice_0001.jpg" in err


def test_aligned_chips_skip_detection_and_are_cached_separately(
    shared_faces: Path, dlib_pack_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # dlib_johns are dlib chips already (the dlib pack's chip geometry): embed them as they are.
    root = shared_faces / "dlib_johns"
    pairs_file = tmp_path / "pairs.txt"
    counts = {name: len(files) for name, files in identity_folders(root).items()}
    pairs_file.write_text(format_lfw_pairs(build_lfw_folds(counts, n_folds=10, per_fold=10, seed=4)))
    args = ["pairs", "--pairs", str(pairs_file), "--images", str(root), "--pattern", "sorted"]
    args += ["--pack", str(dlib_pack_dir), "--cache", str(tmp_path / "cache"), "--json", "--quiet"]

    code, out, _ = run([*args, "--aligned"], capsys)
    assert code == 0
    aligned = last_json(out)
    assert aligned["accuracy"] == 1.0  # measured
    assert aligned["cache"]["computed"] > 0

    # The same files with detection are other cache entries: computed again, not read back.
    code, out, _ = run(args, capsys)
    assert code == 0
    assert last_json(out)["cache"]["computed"] == aligned["cache"]["computed"]
