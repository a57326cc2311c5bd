"""Checkpoints: everything needed to resume a run bit-for-bit, written atomically.

A checkpoint is a dict saved with ``torch.save`` that loads with ``weights_only=True`` (only
tensors and plain Python values: no pickled classes). Keys:

``format``, ``config`` (TrainConfig as a dict), ``epoch`` (completed epochs), ``classes`` and
``holdout`` (identity names), ``backbone`` (name, embedding_size, input_size), ``preprocessing``
(colour order, mean, std, alignment template), ``model`` / ``head`` / ``optimizer`` / ``scheduler``
/ ``scaler`` state dicts, ``rng`` (torch CPU and CUDA, numpy, Python) and ``history`` (one dict of
metrics per epoch).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.registry import build_backbone

CHECKPOINT_FORMAT = "face-train-checkpoint/1"
LAST = "last.pt"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


def epoch_file_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def capture_rng_state() -> dict[str, Any]:
    """Every random generator a run may draw from, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash mid-write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a face-train checkpoint (tensors and plain values only: ``weights_only=True``)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a face-train checkpoint ({CHECKPOINT_FORMAT})")
    return checkpoint


def epoch_checkpoints(folder: Path) -> list[Path]:
    """``epoch_NNNN.pt`` files in a folder, oldest epoch first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch checkpoints (0 keeps every one)."""
    if keep <= 0:
        return
    for path in epoch_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def load_embedder(path: Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained backbone of a checkpoint, in eval mode (for export or evaluation).

    The backbone is built by its registered name (``models.registry``).
    """
    checkpoint = load_checkpoint(path, map_location=map_location)
    spec = checkpoint["backbone"]
    model = build_backbone(spec["name"], embedding_size=spec["embedding_size"], dropout=0.0)
    model.load_state_dict(checkpoint["model"])
    return model.eval()
