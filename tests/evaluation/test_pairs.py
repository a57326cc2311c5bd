"""Pairs files: LFW pairs.txt and CSV parsing over the shared photos, and LFW-style pair building."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.evaluation.pairs import (
    PairsFormatError,
    build_lfw_folds,
    format_lfw_pairs,
    identity_folders,
    parse_csv_pairs,
    parse_lfw_pairs,
    path_pattern,
    read_csv_pairs,
    read_labels_csv,
)


def lfw_layout(source: Path, target: Path, suffix: str) -> dict[str, int]:
    """Symlink an identity-per-folder set into LFW's ``name/name_%04d<suffix>`` layout."""
    counts = {}
    for name, files in identity_folders(source).items():
        (target / name).mkdir(parents=True)
        for number, path in enumerate(files, start=1):
            (target / name / f"{name}_{number:04d}{suffix}").symlink_to(path)
        counts[name] = len(files)
    return counts


def test_lfw_pairs_resolve_to_lfw_file_names_with_folds(shared_faces: Path, tmp_path: Path) -> None:
    lfw_layout(shared_faces / "dlib_johns", tmp_path, ".jpg")
    text = "2\t2\nJohn_Simm\t1\t2\nJohn_Salley\t3\t11\nJohn_Simm\t1\tJohn_Savage\t4\n"
    text += "John_Salley\t2\tJohn_Shimkus\t5\nJohn_Savage\t1\t2\nJohn_Savage\t3\t4\n"
    text += "John_Simm\t9\tJohn_Salley\t9\nJohn_Schneider\t1\tJohn_Savage\t1\n"

    pairs = parse_lfw_pairs(text, path_pattern(tmp_path))

    assert pairs.n_folds == 2
    assert [p.same for p in pairs.pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs.pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.pairs[0].first == tmp_path / "John_Simm" / "John_Simm_0001.jpg"
    assert pairs.pairs[2].second == tmp_path / "John_Savage" / "John_Savage_0004.jpg"
    assert pairs.missing_files() == []
    assert len(pairs.images) == len({p for pair in pairs.pairs for p in (pair.first, pair.second)})


def test_lfw_single_set_header_has_no_folds(shared_faces: Path, tmp_path: Path) -> None:
    lfw_layout(shared_faces / "orl_att_faces", tmp_path, ".pgm")
    pairs = parse_lfw_pairs("1\ns1 1 2\ns1 1 s2 1\n", path_pattern(tmp_path, ext="pgm"))
    assert pairs.n_folds is None
    assert {p.fold for p in pairs.pairs} == {None}
    assert pairs.pairs[1].second == tmp_path / "s2" / "s2_0001.pgm"
    assert pairs.missing_files() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ten 3\n", "first line"),
        ("1 2\na 1 2\n", "found 1 pair lines"),
        ("1 1\na 1\nb 1 c 2\n", "same-person line"),
        ("1 1\na 1 2\nb 1 c\n", "different-person line"),
        ("1 1\na x 2\nb 1 c 2\n", "integers"),
    ],
)
def test_malformed_lfw_pairs_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PairsFormatError, match=message):
        parse_lfw_pairs(text, path_pattern(tmp_path), source="pairs.txt")


def test_sorted_pattern_numbers_files_in_name_order(shared_faces: Path) -> None:
    root = shared_faces / "orl_att_faces"
    pattern = path_pattern(root, "sorted")
    assert pattern.path("s3", 1) == sorted((root / "s3").iterdir())[0]
    with pytest.raises(PairsFormatError, match="image 11 does not exist"):
        pattern.path("s3", 11)


def test_ext_needs_a_jpg_pattern(tmp_path: Path) -> None:
    with pytest.raises(PairsFormatError, match="--ext"):
        path_pattern(tmp_path, "{name}/{index}.pgm", ext="png")


def test_deepface_master_csv_resolves_through_labels(shared_faces: Path) -> None:
    root = shared_faces / "deepface_testset"
    labels = read_labels_csv(root / "labels.csv")
    pairs = read_csv_pairs(root / "master.csv", root, labels=labels)

    assert pairs.missing_files() == []
    assert pairs.n_folds is None
    # Decision Yes/No becomes the label; a "Yes" pair is two files of the same identity folder.
    assert 0 < int(pairs.labels.sum()) < len(pairs.pairs)
    for pair in pairs.pairs:
        assert (pair.first.parent == pair.second.parent) == pair.same


def test_plain_csv_with_relative_paths_and_same_column(shared_faces: Path) -> None:
    text = "file_x,file_y,same\ns1/1.pgm,s1/2.pgm,1\ns1/1.pgm,s2/1.pgm,0\ns3/4.pgm,s3/5.pgm,true\n"
    pairs = parse_csv_pairs(text, shared_faces / "orl_att_faces")
    assert [p.same for p in pairs.pairs] == [True, False, True]
    assert pairs.missing_files() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,same\nx,y,1\n", "first file column"),
        ("file_x,file_y\nx,y\n", "label column"),
        ("file_x,file_y,same\nx,y,maybe\n", "same/different"),
        ("file_x,file_y,same\n,y,1\n", "empty file name"),
        ("file_x,file_y,same\n", "no pairs"),
    ],
)
def test_malformed_csv_pairs_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PairsFormatError, match=message):
        parse_csv_pairs(text, tmp_path, source="pairs.csv")


def test_csv_name_missing_from_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PairsFormatError, match="not listed"):
        parse_csv_pairs("file_x,file_y,Decision\na.jpg,b.jpg,Yes\n", tmp_path, labels={"a.jpg": "A"})


def test_built_folds_are_valid_distinct_and_reproducible(shared_faces: Path, tmp_path: Path) -> None:
    counts = lfw_layout(shared_faces / "orl_att_faces", tmp_path, ".pgm")
    folds = build_lfw_folds(counts, n_folds=10, per_fold=40, seed=3)

    same = [pair for fold in folds for pair in fold.same]
    different = [pair for fold in folds for pair in fold.different]
    assert len(same) == len(set(same)) == 400
    assert len(different) == len(set(different)) == 400
    assert all(1 <= i < j <= counts[name] for name, i, j in same)
    assert all(a != b and 1 <= i <= counts[a] and 1 <= j <= counts[b] for a, i, b, j in different)
    assert build_lfw_folds(counts, n_folds=10, per_fold=40, seed=3) == folds
    assert build_lfw_folds(counts, n_folds=10, per_fold=40, seed=4) != folds

    parsed = parse_lfw_pairs(format_lfw_pairs(folds), path_pattern(tmp_path, ext="pgm"))
    assert parsed.n_folds == 10
    assert len(parsed.pairs) == 800
    assert parsed.missing_files() == []


def test_building_more_pairs_than_exist_is_refused() -> None:
    # 2 identities × 3 images: 6 same-person pairs and 9 different-person pairs exist.
    with pytest.raises(ValueError, match="need more data"):
        build_lfw_folds({"a": 3, "b": 3}, n_folds=2, per_fold=4)
    folds = build_lfw_folds({"a": 3, "b": 3}, n_folds=2)
    assert [len(f.same) for f in folds] == [3, 3]
