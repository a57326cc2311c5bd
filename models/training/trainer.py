"""The training loop: backbone + margin head + cross-entropy, held-out verification after each epoch.

Determinism: the model is initialised from ``seed``; each epoch's shuffling and flips come from
generators seeded by ``(seed, epoch)``, and the global RNG state (dropout) is saved in every
checkpoint, so a run resumed from epoch k continues exactly as the uninterrupted run did.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.heads import build_head
from models.registry import backbone_entry, build_backbone
from models.training.checkpoint import (
    LAST,
    capture_rng_state,
    epoch_file_name,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from models.training.config import RESUMABLE_DIFFERENCES, TrainConfig
from models.training.dataset import (
    PIXEL_NORMALIZATION,
    FaceImageDataset,
    IdentitySplit,
    samples_of,
    scan_identities,
    split_identities,
    to_model_input,
)
from models.training.evaluate import evaluate_verification
from service.evaluation.metrics import VerificationReport

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
_T = TypeVar("_T")
BACKBONE_FILE = "backbone.pth"  # the bare backbone state dict (arcface_torch's convention), for export


# --------------------------------------------------------------------------------- named choices


def named(registry: Mapping[str, _T], name: str, what: str) -> _T:
    """``registry[name]`` with an error that lists the choices."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; use one of {', '.join(registry)}") from None


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device("cuda")


def _auto() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICES: Mapping[str, Callable[[], torch.device]] = MappingProxyType(
    {"cpu": lambda: torch.device("cpu"), "cuda": _cuda, "auto": _auto}
)


def resolve_device(name: str) -> torch.device:
    return named(DEVICES, name, "device")()


def _sgd(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _adamw(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


OPTIMIZERS: Mapping[str, Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = (
    MappingProxyType({"sgd": _sgd, "adamw": _adamw})
)


def _constant(progress: float, epoch: float, config: TrainConfig) -> float:
    return 1.0


def _cosine(progress: float, epoch: float, config: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(progress: float, epoch: float, config: TrainConfig) -> float:
    return float(0.1 ** sum(1 for milestone in config.lr_milestones if epoch >= milestone))


# name -> learning-rate factor from (fraction of training done, fractional epoch, config)
SCHEDULES: Mapping[str, Callable[[float, float, TrainConfig], float]] = MappingProxyType(
    {"constant": _constant, "cosine": _cosine, "step": _step}
)


def lr_factor_function(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-iteration factor: linear warm-up over ``warmup_epochs``, then the named schedule."""
    schedule = named(SCHEDULES, config.scheduler, "scheduler")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warmup * schedule(min(step / total_steps, 1.0), step / steps_per_epoch, config)

    return factor


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resuming needs no generator state."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ----------------------------------------------------------------------------------------- trainer


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float  # argmax of the head's logits (margins included) on the training batches
    lr: float  # at the end of the epoch
    seconds: float
    heldout: dict[str, Any] | None  # summary of the held-out verification report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_summary(report: VerificationReport) -> dict[str, Any]:
    """The numbers a run is judged by (the full report goes to summary.json)."""
    return {
        "accuracy": report.accuracy_mean,
        "accuracy_std": report.accuracy_std,
        "auc": report.auc,
        "eer": report.eer,
        "best_threshold": report.best_threshold,
        "tar_at_far": {f"{p.target_far:g}": p.tar for p in report.tar_at_far},
        "pairs": report.pairs,
    }


def _check_heldout_pairs(split: IdentitySplit, n_folds: int) -> None:
    """Fail before training, not after the first epoch, when the held-out pairs cannot be scored."""
    sizes = [len(identity.images) for identity in split.holdout]
    genuine = sum(n * (n - 1) // 2 for n in sizes)
    impostor = (sum(sizes) ** 2 - sum(n * n for n in sizes)) // 2
    if genuine < 1 or impostor < 1 or genuine + impostor < n_folds:
        raise ValueError(
            f"the held-out identities give {genuine} genuine and {impostor} impostor pairs: need both, "
            f"and at least {n_folds} pairs for {n_folds} folds (hold out more identities or images)"
        )


class Trainer:
    """One training run. ``Trainer(config).fit()`` trains; ``resume(path)`` first restores a checkpoint."""

    def __init__(self, config: TrainConfig, *, data_root: Path | None = None, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.use_amp = config.amp and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False  # autotuning picks kernels non-deterministically
            torch.backends.cudnn.deterministic = True

        entry = backbone_entry(config.backbone)
        self.input_size = entry.input_size
        self.embedding_size = config.embedding_size or entry.default_embedding_size
        identities = scan_identities(data_root or Path(config.data))
        self.split: IdentitySplit = split_identities(
            identities,
            holdout=config.holdout,
            holdout_ids=config.holdout_ids,
            seed=config.effective_split_seed,
        )
        self.train_set = FaceImageDataset(samples_of(self.split.train), self.input_size).preload()
        self.heldout_set = (
            FaceImageDataset(samples_of(self.split.holdout), self.input_size).preload()
            if self.split.holdout
            else None
        )
        if self.split.holdout:
            _check_heldout_pairs(self.split, config.n_folds)

        torch.manual_seed(config.seed)
        self.model = build_backbone(
            config.backbone, embedding_size=self.embedding_size, dropout=config.dropout, fp16=self.use_amp
        ).to(self.device)
        self.head = build_head(
            config.head,
            embedding_size=self.embedding_size,
            num_classes=len(self.split.train),
            **config.head_options,
        ).to(self.device)
        parameters = [p for p in [*self.model.parameters(), *self.head.parameters()] if p.requires_grad]
        self.optimizer = named(OPTIMIZERS, config.optimizer, "optimizer")(parameters, config)
        self.drop_last = len(self.train_set) > config.batch_size  # a last batch of 1 breaks BatchNorm
        self.steps_per_epoch = (
            len(self.train_set) // config.batch_size
            if self.drop_last
            else math.ceil(len(self.train_set) / config.batch_size)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor_function(config, self.steps_per_epoch)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.epoch = 0
        self.history: list[EpochRecord] = []
        self.last_report: VerificationReport | None = None

    # ------------------------------------------------------------------------------------ resume

    def resume(self, path: Path) -> None:
        """Restore model, head, optimizer, scheduler, scaler, RNG state and history from a checkpoint."""
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        checkpoint = load_checkpoint(path, map_location="cpu")
        saved = TrainConfig.from_dict(checkpoint["config"])
        blocking = {k: v for k, v in saved.differences(self.config).items() if k not in RESUMABLE_DIFFERENCES}
        if blocking:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in blocking.items())
            raise ValueError(f"cannot resume {path}: the run's settings differ ({details})")
        classes = [identity.name for identity in self.split.train]
        if checkpoint["classes"] != classes:
            raise ValueError(f"cannot resume {path}: the training identities differ from the checkpoint's")
        if saved.epochs != self.config.epochs:
            logger.warning(
                "resuming with epochs=%d (was %d): the schedule's horizon changes",
                self.config.epochs,
                saved.epochs,
            )
        self.model.load_state_dict(checkpoint["model"])
        self.head.load_state_dict(checkpoint["head"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"] and self.use_amp:  # empty when the run had no mixed precision
            self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.history = [EpochRecord(**record) for record in checkpoint["history"]]

    # -------------------------------------------------------------------------------------- train

    def fit(self) -> list[EpochRecord]:
        """Train from the current epoch to ``config.epochs``, evaluating and checkpointing as it goes."""
        remaining = range(self.epoch + 1, self.config.epochs + 1)
        bar = tqdm(remaining, desc=f"{self.config.head}", unit="epoch", disable=not self.progress)
        for epoch in bar:
            record = self.train_epoch(epoch)
            self.history.append(record)
            self.epoch = epoch
            self.save_checkpoint()
            postfix: dict[str, Any] = {"loss": f"{record.loss:.3f}"}
            if record.heldout is not None:
                postfix["heldout_acc"] = f"{record.heldout['accuracy']:.4f}"
            bar.set_postfix(postfix)
        if self.last_report is None and self.heldout_set is not None:  # resumed after the last epoch
            self.last_report = self.evaluate()
        self.write_summary()
        return self.history

    def train_epoch(self, epoch: int) -> EpochRecord:
        started = time.perf_counter()
        self.model.train()
        self.head.train()
        loader = DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=self.drop_last,
            generator=epoch_generator(self.config.seed, epoch, stream=0),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        flips = epoch_generator(self.config.seed, epoch, stream=1)
        total_loss = total_correct = total_seen = 0.0
        batches = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not self.progress)
        for images, labels in batches:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.config.flip:
                mirror = (torch.rand(images.shape[0], generator=flips) < 0.5).to(self.device)
                images = torch.where(mirror[:, None, None, None], torch.flip(images, dims=[3]), images)
            loss, correct = self.train_step(to_model_input(images), labels)
            total_loss += loss * labels.shape[0]
            total_correct += correct
            total_seen += labels.shape[0]
        heldout = None
        due = epoch % self.config.eval_every == 0 or epoch == self.config.epochs
        if self.heldout_set is not None and due:
            self.last_report = self.evaluate()
            heldout = report_summary(self.last_report)
        return EpochRecord(
            epoch=epoch,
            loss=total_loss / total_seen,
            train_accuracy=total_correct / total_seen,
            lr=float(self.scheduler.get_last_lr()[0]),
            seconds=time.perf_counter() - started,
            heldout=heldout,
        )

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            embeddings = self.model(inputs)
        # Margins act on angles near 0 and π, where float16 is coarse: the head runs in float32.
        logits = self.head(embeddings.float(), labels)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {self.epoch + 1}; lower --lr")
        self.scaler.scale(loss).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        correct = int((logits.argmax(dim=1) == labels).sum())
        return float(loss.detach()), correct

    def evaluate(self) -> VerificationReport:
        """Verification over every pair of the held-out identities (never seen in training)."""
        if self.heldout_set is None:
            raise ValueError("no held-out identities: set holdout or holdout_ids")
        return evaluate_verification(
            self.model,
            self.heldout_set,
            device=self.device,
            n_folds=self.config.n_folds,
            fars=self.config.fars,
            flip=self.config.eval_flip,
        )

    # ---------------------------------------------------------------------------------- outputs

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "classes": [identity.name for identity in self.split.train],
            "holdout": [identity.name for identity in self.split.holdout],
            "backbone": {
                "name": self.config.backbone,
                "embedding_size": self.embedding_size,
                "input_size": list(self.input_size),
            },
            "preprocessing": {
                "color_order": PIXEL_NORMALIZATION.color_order.value,
                "mean": list(PIXEL_NORMALIZATION.mean),
                "std": list(PIXEL_NORMALIZATION.std),
                "greyscale": "replicated to 3 channels",
                # The template the service should align to; ``aligned`` says whether training did
                # (without --align the photos were whole-image resized, e.g. pre-cropped faces).
                "template": self.config.template,
                "aligned": self.config.align,
            },
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "history": [record.to_dict() for record in self.history],
        }

    def save_checkpoint(self) -> Path:
        folder = self.out / CHECKPOINT_DIR
        payload = self.checkpoint_payload()
        path = save_checkpoint(payload, folder / epoch_file_name(self.epoch))
        save_checkpoint(payload, folder / LAST)
        prune_checkpoints(folder, self.config.keep_checkpoints)
        history = "".join(json.dumps(record.to_dict()) + "\n" for record in self.history)
        (self.out / HISTORY_FILE).write_text(history)
        return path

    def write_summary(self) -> Path:
        torch.save(self.model.state_dict(), self.out / BACKBONE_FILE)
        summary = {
            "config": self.config.to_dict(),
            "epochs_completed": self.epoch,
            "train_identities": [identity.name for identity in self.split.train],
            "heldout_identities": [identity.name for identity in self.split.holdout],
            "train_images": len(self.train_set),
            "heldout_images": 0 if self.heldout_set is None else len(self.heldout_set),
            "backbone": {"name": self.config.backbone, "embedding_size": self.embedding_size},
            "final_heldout": None if self.last_report is None else self.last_report.to_dict(),
            "history": [record.to_dict() for record in self.history],
        }
        path = self.out / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2) + "\n")
        return path
