"""Identification through the real Gallery/FaissIndex: splits, rank-k, open set, no-face policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.evaluation.cli import main
from service.evaluation.embed_files import EmbedOptions, FileEmbedder
from service.evaluation.embedding_cache import EmbeddingCache
from service.evaluation.identify import (
    IdentificationSplit,
    Probe,
    RunFacts,
    evaluate_identification,
    split_identities,
)
from service.evaluation.pairs import identity_folders
from service.evaluation.verification import NoFacePolicy
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_INTRA_OP_THREADS", "1")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "face-eval-cache"


def identify(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], str]:
    assert main(["identify", *args, "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1]), out


def test_split_enrolls_k_per_identity_and_leaves_impostors_out(shared_faces: Path) -> None:
    folders = identity_folders(shared_faces / "orl_att_faces")
    split = split_identities(folders, 2, impostors=5, seed=7)

    assert len(split.impostor_identities) == 5
    assert set(split.gallery).isdisjoint(split.impostor_identities)
    assert len(split.gallery) == 35
    assert all(len(files) == 2 for files in split.gallery.values())
    enrolled_files = {path for files in split.gallery.values() for path in files}
    probe_files = [probe.path for probe in split.probes]
    assert enrolled_files.isdisjoint(probe_files)
    assert len(probe_files) == len(set(probe_files)) == 400 - 70
    assert sum(probe.identity in split.impostor_identities for probe in split.probes) == 50
    assert all(path.parent.name == name for name, files in split.gallery.items() for path in files)

    assert split_identities(folders, 2, impostors=5, seed=7) == split
    assert split_identities(folders, 2, impostors=5, seed=8) != split


def test_identities_too_small_to_probe_are_skipped_not_enrolled_and_bad_arguments_refused(
    shared_faces: Path,
) -> None:
    folders = identity_folders(shared_faces / "deepface_testset")
    split = split_identities(folders, 3)
    small = sorted(name for name, files in folders.items() if len(files) <= 3)
    assert small  # Jeff, Sundar, Marissa (2 each), Elon (3)
    assert list(split.skipped_identities) == small
    for name, files in folders.items():
        probes = [p for p in split.probes if p.identity == name]
        if name in small:
            assert name not in split.gallery
            assert probes == []
        else:
            assert len(split.gallery[name]) == 3
            assert len(probes) == len(files) - 3
    with pytest.raises(ValueError, match="at least 1"):
        split_identities(folders, 0)
    with pytest.raises(ValueError, match="--impostors"):
        split_identities(folders, 2, impostors=len(folders))


def test_dlib_johns_five_enrolled_rank_1(
    shared_faces: Path, dlib_pack_dir: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, out = identify(
        [
            "--images",
            str(shared_faces / "dlib_johns"),
            "--gallery-per-identity",
            "5",
            "--pack",
            str(dlib_pack_dir),
            "--cache",
            str(shared_cache),
        ],
        capsys,
    )
    assert result["identities_enrolled"] == 5
    assert result["gallery_faces"] == 25
    assert result["mated_probes"] == 30
    assert result["non_mated_probes"] == 0
    assert isinstance(result["rank_1"], float)
    assert result["rank_1"] == 1.0  # measured: all 30 mated probes
    assert result["rank_5"] == 1.0  # only five subjects are enrolled
    assert result["tpir_at_fpir"] == {}
    assert "open set:   not measured" in out


def test_orl_open_set_with_left_out_identities(
    shared_faces: Path,
    dlib_pack_dir: Path,
    shared_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    subset = tmp_path / "orl12"
    subset.mkdir()
    for n in range(1, 13):
        (subset / f"s{n}").symlink_to(shared_faces / "orl_att_faces" / f"s{n}", target_is_directory=True)
    result, out = identify(
        [
            "--images",
            str(subset),
            "--gallery-per-identity",
            "2",
            "--impostors",
            "2",
            "--seed",
            "1",
            "--pack",
            str(dlib_pack_dir),
            "--cache",
            str(shared_cache),
        ],
        capsys,
    )
    assert result["identities_enrolled"] == 10
    assert result["gallery_faces"] == 20
    assert result["mated_probes"] == 80
    assert result["non_mated_probes"] == 20
    assert isinstance(result["rank_1"], float)
    assert result["rank_1"] == 1.0  # measured: all 80 mated probes
    tpir = result["tpir_at_fpir"]
    assert isinstance(tpir, dict)
    assert 0.5 < tpir["1e-1"] <= 1.0  # 20 non-mated probes measure FPIR 10%...
    assert tpir["1e-2"] is None  # ...but not 1% (needs 100)
    assert "needs 100 non-mated probes" in out


def test_probe_without_a_face_fails_or_is_excluded(
    shared_faces: Path, dlib_pack_dir: Path, shared_cache: Path, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(blank)
    folders = identity_folders(shared_faces / "dlib_johns")
    split = IdentificationSplit(
        gallery={name: files[:5] for name, files in folders.items()},
        probes=(
            *tuple(Probe(name, path) for name, files in folders.items() for path in files[5:]),
            Probe("John_Simm", blank),
        ),
        impostor_identities=(),
    )
    pack = load_pack(dlib_pack_dir)
    settings = Settings(intra_op_threads=1, data_dir=tmp_path / "unused")
    embedder = FileEmbedder(
        pack,
        lambda: FacePipeline.from_pack(pack, settings),
        EmbedOptions.from_settings(settings),
        EmbeddingCache(shared_cache),
    )
    run = embedder.embed_files(split.images)
    assert run.no_face == [blank]
    facts = RunFacts(pack.manifest.id, pack.manifest.embedder.embedding_size)

    failed = evaluate_identification(split, run.results, facts, settings, policy=NoFacePolicy.FAIL)
    excluded = evaluate_identification(split, run.results, facts, settings, policy=NoFacePolicy.EXCLUDE)

    assert failed.mated_probes == 31
    assert excluded.mated_probes == 30
    assert failed.probes_no_face == excluded.probes_no_face == 1
    # The faceless probe is a miss at every rank; everything else is scored the same way.
    hits = round(excluded.rank_accuracy[1] * 30)
    assert failed.rank_accuracy[1] == pytest.approx(hits / 31)
    assert failed.rank_accuracy[5] == pytest.approx(30 / 31)
