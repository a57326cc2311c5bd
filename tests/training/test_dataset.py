"""Identity folders, the open-set split, image loading, config and CLI parsing helpers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from models.training.cli import parse_head_options
from models.training.config import TrainConfig
from models.training.dataset import (
    FaceImageDataset,
    load_face_image,
    natural_key,
    samples_of,
    scan_identities,
    split_identities,
    to_model_input,
)
from models.training.trainer import epoch_generator, lr_factor_function


@pytest.fixture(scope="module")
def orl_dir(shared_faces: Path) -> Path:
    root = shared_faces / "orl_att_faces"
    if not root.is_dir():
        pytest.skip(f"ORL faces not found at {root}")
    return root


def test_scan_orl(orl_dir: Path):
    identities = scan_identities(orl_dir)
    assert len(identities) == 40
    assert [i.name for i in identities[:3]] == ["s1", "s2", "s3"]  # natural order, not s1, s10, s11
    assert all(len(i.images) == 10 for i in identities)
    assert identities[0].images[1].name == "2.pgm"
    # Files at the root (README, SHA256SUMS) are not identities.
    assert "README" not in {i.name for i in identities}


def test_natural_key():
    assert sorted(["s10", "s2", "s1"], key=natural_key) == ["s1", "s2", "s10"]


def test_split_is_disjoint_deterministic_and_seeded(orl_dir: Path):
    identities = scan_identities(orl_dir)
    split = split_identities(identities, holdout=10, seed=3)
    train = {i.name for i in split.train}
    held = {i.name for i in split.holdout}
    assert len(train) == 30
    assert len(held) == 10
    assert not train & held
    assert train | held == {i.name for i in identities}
    again = split_identities(identities, holdout=10, seed=3)
    assert [i.name for i in again.holdout] == [i.name for i in split.holdout]
    other = split_identities(identities, holdout=10, seed=4)
    assert {i.name for i in other.holdout} != held


def test_split_by_names(orl_dir: Path):
    identities = scan_identities(orl_dir)
    split = split_identities(identities, holdout_ids=["s5", "s40"])
    assert [i.name for i in split.holdout] == ["s5", "s40"]
    with pytest.raises(ValueError, match="not found"):
        split_identities(identities, holdout_ids=["nobody"])
    with pytest.raises(ValueError, match="at least 2 training identities"):
        split_identities(identities, holdout=39)


def test_greyscale_is_replicated_and_resized(orl_dir: Path):
    path = orl_dir / "s1" / "1.pgm"
    image = load_face_image(path, (64, 64))
    assert image.shape == (64, 64, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert image.std() > 10  # a real photo, not a blank
    native = load_face_image(path, (92, 112))
    assert native.shape == (112, 92, 3)


def test_dataset_preload_matches_lazy(orl_dir: Path):
    identities = scan_identities(orl_dir)[:2]
    lazy = FaceImageDataset(samples_of(identities), (64, 64))
    cached = FaceImageDataset(samples_of(identities), (64, 64)).preload()
    assert len(lazy) == 20
    assert lazy.labels.tolist() == [0] * 10 + [1] * 10
    torch.testing.assert_close(lazy.all_images(), cached.all_images())
    inputs = to_model_input(cached.all_images())
    assert inputs.shape == (20, 3, 64, 64)
    assert float(inputs.min()) >= -1.0
    assert float(inputs.max()) <= 1.0


def test_empty_data_folder(tmp_path: Path):
    (tmp_path / "person").mkdir()
    (tmp_path / "person" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="no identity folders"):
        scan_identities(tmp_path)


def test_config_round_trip_and_validation():
    config = TrainConfig(
        data="d", out="o", holdout_ids=("a", "b"), fars=(0.1, 0.01), head_options={"s": 30.0}
    )
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.effective_split_seed == config.seed
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(data="d", out="o", holdout=3, holdout_ids=("a",))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(data="d", out="o", epochs=0)
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"data": "d", "out": "o", "colour": "red"})


def test_head_options_are_typed_by_the_heads_defaults():
    assert parse_head_options("arcface", ["s=30", "m=0.4"]) == {"s": 30.0, "m": 0.4}
    sphere = parse_head_options("sphereface", ["m=2", "s=none"])
    assert sphere == {"m": 2, "s": None}
    assert isinstance(sphere["m"], int)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_head_options("arcface", ["margin=0.3"])


def test_lr_schedule_warms_up_then_decays():
    config = TrainConfig(data="d", out="o", epochs=10, warmup_epochs=1.0, scheduler="cosine")
    factor = lr_factor_function(config, steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1)  # first of 10 warm-up steps
    assert factor(9) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.09)))
    values = [factor(step) for step in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert factor(99) < 0.01
    step = TrainConfig(data="d", out="o", epochs=10, warmup_epochs=0, scheduler="step", lr_milestones=(5, 8))
    step_factor = lr_factor_function(step, steps_per_epoch=10)
    assert [step_factor(s) for s in (0, 49, 50, 80)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_epoch_generators_depend_only_on_seed_and_epoch():
    first = torch.rand(5, generator=epoch_generator(0, 3, stream=0))
    again = torch.rand(5, generator=epoch_generator(0, 3, stream=0))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, torch.rand(5, generator=epoch_generator(0, 4, stream=0)))
    assert not torch.equal(first, torch.rand(5, generator=epoch_generator(1, 3, stream=0)))
    assert not torch.equal(first, torch.rand(5, generator=epoch_generator(0, 3, stream=1)))
