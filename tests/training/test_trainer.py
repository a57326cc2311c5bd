"""face-train end to end on a small ORL subset: checkpoints, exact resume, open-set split, CLI.

Runs use the 64×64 ``iresnet_tiny`` on 8 ORL identities (5 trained, 3 held out): a few seconds each.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.training.checkpoint import LAST, epoch_checkpoints, load_checkpoint, load_embedder
from models.training.cli import main
from models.training.config import TrainConfig
from models.training.experiment import ORL, markdown_table, run_experiment
from models.training.trainer import BACKBONE_FILE, HISTORY_FILE, SUMMARY_FILE, Trainer

SUBSET = [f"s{i}" for i in range(1, 9)]
EPOCHS = 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one thread keeps runs fast and the results independent of the core count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def orl_subset(shared_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = shared_faces / "orl_att_faces"
    if not source.is_dir():
        pytest.skip(f"ORL faces not found at {source}")
    subset = tmp_path_factory.mktemp("orl_subset")
    for name in SUBSET:
        (subset / name).symlink_to(source / name, target_is_directory=True)
    return subset


def small_config(data: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        out=str(out),
        backbone="iresnet_tiny",
        head="arcface",
        head_options={"s": 16.0, "m": 0.3},
        epochs=EPOCHS,
        batch_size=16,
        lr=0.05,
        holdout=3,
        n_folds=5,
        fars=(0.1, 0.01),
        keep_checkpoints=0,
        dropout=0.1,  # so the restored global RNG state matters for an exact resume
    )
    return replace(base, **changes)


@pytest.fixture(scope="module")
def finished_run(orl_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    trainer = Trainer(small_config(orl_subset, tmp_path_factory.mktemp("run")), progress=False)
    trainer.fit()
    return trainer


def test_writes_checkpoints_history_and_summary(finished_run: Trainer):
    out = Path(finished_run.config.out)
    folder = out / "checkpoints"
    assert [p.name for p in epoch_checkpoints(folder)] == [f"epoch_{e:04d}.pt" for e in range(1, EPOCHS + 1)]
    last = load_checkpoint(folder / LAST)
    assert last["epoch"] == EPOCHS
    for key in ("model", "head", "optimizer", "scheduler", "rng", "config", "history"):
        assert key in last
    assert TrainConfig.from_dict(last["config"]) == finished_run.config
    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    assert [record["epoch"] for record in history] == list(range(1, EPOCHS + 1))
    assert all(record["heldout"]["pairs"] == 435 for record in history)  # 30 images → 30·29/2 pairs
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["final_heldout"]["genuine_pairs"] == 3 * 45
    assert (out / BACKBONE_FILE).is_file()


def test_heldout_identities_are_never_trained_on(finished_run: Trainer):
    trained = {identity.name for identity in finished_run.split.train}
    held = {identity.name for identity in finished_run.split.holdout}
    assert len(held) == 3
    assert not trained & held
    assert trained | held == set(SUBSET)
    # The head only has classes for trained identities, and no held-out image is in the training set.
    assert finished_run.head.num_classes == len(trained)
    train_folders = {sample.path.parent.name for sample in finished_run.train_set.samples}
    assert finished_run.heldout_set is not None
    heldout_folders = {sample.path.parent.name for sample in finished_run.heldout_set.samples}
    assert train_folders == trained
    assert heldout_folders == held
    checkpoint = load_checkpoint(Path(finished_run.config.out) / "checkpoints" / LAST)
    assert set(checkpoint["classes"]).isdisjoint(checkpoint["holdout"])


def test_loss_decreases(finished_run: Trainer):
    losses = [record.loss for record in finished_run.history]
    assert losses[-1] < losses[0]


def test_resume_is_identical_to_an_uninterrupted_run(finished_run: Trainer, tmp_path: Path):
    first_epoch = Path(finished_run.config.out) / "checkpoints" / "epoch_0001.pt"
    resumed = Trainer(replace(finished_run.config, out=str(tmp_path / "resumed")), progress=False)
    resumed.resume(first_epoch)
    assert resumed.epoch == 1
    resumed.fit()
    assert resumed.epoch == EPOCHS
    for name, value in finished_run.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(resumed.head.weight, finished_run.head.weight, rtol=0, atol=0)
    assert [r.loss for r in resumed.history] == [r.loss for r in finished_run.history]
    assert resumed.history[-1].heldout == finished_run.history[-1].heldout


def test_resume_refuses_different_settings(finished_run: Trainer, tmp_path: Path):
    changed = Trainer(replace(finished_run.config, out=str(tmp_path), lr=0.01), progress=False)
    with pytest.raises(ValueError, match="lr"):
        changed.resume(Path(finished_run.config.out) / "checkpoints" / LAST)


def test_load_embedder_reproduces_the_trained_backbone(finished_run: Trainer):
    embedder = load_embedder(Path(finished_run.config.out) / "checkpoints" / LAST)
    assert not embedder.training
    images = finished_run.train_set.all_images()[:4].float().sub(127.5).div(127.5)
    finished_run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(embedder(images), finished_run.model(images))


def test_cli_train_and_resume_auto(orl_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "cli-run"
    argv = [
        "train",
        "--data",
        str(orl_subset),
        "--out",
        str(out),
        "--head",
        "cosface",
        "--head-option",
        "s=16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--holdout",
        "3",
        "--n-folds",
        "5",
        "--fars",
        "0.1",
        "0.001",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 training identities (50 images), 3 held out" in printed
    assert "5-fold accuracy" in printed
    assert "TAR@FAR=0.001 n/a (needs 1000 impostor pairs)" in printed  # 300 impostor pairs only
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["config"]["head_options"] == {"s": 16.0}
    # The same command with two epochs and --resume auto continues after epoch 1.
    longer = [*argv, "--resume", "auto"]
    longer[longer.index("--epochs") + 1] = "2"
    assert main(longer) == 0
    assert f"resumed from {out / 'checkpoints' / 'last.pt'} at epoch 1" in capsys.readouterr().out
    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    assert [record["epoch"] for record in history] == [1, 2]


def test_too_few_heldout_pairs_fail_before_training(orl_subset: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="0 impostor pairs"):
        Trainer(small_config(orl_subset, tmp_path, holdout=1), progress=False)


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "iresnet_tiny" in listed
    assert "arcface" in listed


def test_experiment_writes_results_and_table(orl_subset: Path, tmp_path: Path):
    spec = replace(ORL, base=replace(ORL.base, holdout=3, n_folds=5, batch_size=16, epochs=1))
    results = run_experiment(
        spec, data=orl_subset, out=tmp_path, seeds=[0, 1], heads=["softmax", "arcface"], progress=False
    )
    assert len(results["runs"]) == 4
    assert {(r["head"], r["seed"]) for r in results["runs"]} == {
        (h, s) for h in ("softmax", "arcface") for s in (0, 1)
    }
    # For one seed every head is judged on the same held-out identities.
    by_seed = {}
    for run in results["runs"]:
        by_seed.setdefault(run["seed"], set()).add(tuple(run["heldout_identities"]))
    assert all(len(splits) == 1 for splits in by_seed.values())
    table = markdown_table(results)
    assert table.count("\n| ") >= 3  # untrained + two heads
    assert "Samaria & Harter, 1994" in table
    assert json.loads((tmp_path / "results.json").read_text())["aggregate"]["arcface"]["auc"]["mean"] > 0.5
