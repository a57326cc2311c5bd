"""TrainConfig: every hyper-parameter of a face-train run, typed, and saved in each checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Settings that may differ when a run is resumed: where it runs, not what it computes.
RESUMABLE_DIFFERENCES = frozenset({"out", "device", "num_workers", "threads", "epochs", "keep_checkpoints"})

HeadOption = float | int | None


@dataclass(frozen=True)
class TrainConfig:
    data: str  # identity-per-folder root (aligned crops, or raw photos with ``align``)
    out: str  # run folder: checkpoints/, history.jsonl, summary.json
    backbone: str = "iresnet_tiny"
    embedding_size: int | None = None  # None: the backbone's default
    dropout: float = 0.0
    head: str = "arcface"
    head_options: dict[str, HeadOption] = field(default_factory=dict)  # e.g. {"s": 30.0, "m": 0.5}
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    lr_milestones: tuple[int, ...] = ()  # epochs at which "step" divides the rate by 10
    clip_grad_norm: float | None = 5.0
    seed: int = 0
    split_seed: int | None = None  # None: the same as ``seed``
    holdout: int = 0  # identities held out for open-set evaluation, picked with ``split_seed``
    holdout_ids: tuple[str, ...] = ()  # or exactly these identities
    flip: bool = True  # random horizontal flips while training
    eval_flip: bool = False  # embed each held-out image and its mirror, summed
    n_folds: int = 10
    fars: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    eval_every: int = 1  # epochs between held-out evaluations (the last epoch is always evaluated)
    device: str = "cpu"  # cpu | cuda | auto
    amp: bool = True  # mixed precision on CUDA (ignored on the CPU)
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads; None: torch's default
    keep_checkpoints: int = 2  # epoch checkpoints kept besides last.pt (0: keep them all)
    align: bool = False  # detect + align raw photos first (cached under out/aligned)
    align_pack: str | None = (
        None  # pack whose detector is used; None: the default pack (cli.DEFAULT_ALIGN_PACK)
    )
    template: str = "arcface"  # alignment template, scaled to the backbone's input size

    def __post_init__(self) -> None:
        checks = {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 2 (BatchNorm)": self.batch_size >= 2,
            "lr must be > 0": self.lr > 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
            "dropout must be in [0, 1)": 0.0 <= self.dropout < 1.0,
            "holdout must be >= 0": self.holdout >= 0,
            "give holdout or holdout_ids, not both": not (self.holdout and self.holdout_ids),
            "n_folds must be >= 2": self.n_folds >= 2,
            "eval_every must be >= 1": self.eval_every >= 1,
            "warmup_epochs must be >= 0": self.warmup_epochs >= 0,
            "keep_checkpoints must be >= 0": self.keep_checkpoints >= 0,
            "every FAR must be in (0, 1]": all(0.0 < far <= 1.0 for far in self.fars),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid training config: " + "; ".join(failed))

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        # JSON and torch.save turn tuples into lists; restore them.
        restored = dict(values)
        for key in ("lr_milestones", "holdout_ids", "fars"):
            if key in restored:
                restored[key] = tuple(restored[key])
        return cls(**restored)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, ``{name: (self, other)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}
