"""Open-set evaluation: embed held-out identities and score every same/different pair."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.training.dataset import FaceImageDataset, to_model_input
from service.evaluation.metrics import VerificationReport, all_pair_scores, verification_report


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 128,
    flip: bool = False,
) -> np.ndarray:
    """Unit-norm embeddings of uint8 (N, 3, H, W) images; with ``flip`` each is summed with its mirror."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            batch = to_model_input(images[start : start + batch_size].to(device))
            embeddings = model(batch).float()
            if flip:
                embeddings = embeddings + model(torch.flip(batch, dims=[3])).float()
            chunks.append(F.normalize(embeddings, dim=1).cpu())
        return torch.cat(chunks).numpy().astype(np.float64)
    finally:
        model.train(was_training)


def evaluate_verification(
    model: nn.Module,
    dataset: FaceImageDataset,
    *,
    device: torch.device,
    n_folds: int,
    fars: Sequence[float],
    flip: bool = False,
) -> VerificationReport:
    """All N·(N−1)/2 pairs of ``dataset`` (labels = identity indices) → a verification report."""
    embeddings = embed_images(model, dataset.all_images(), device=device, flip=flip)
    pairs = all_pair_scores(embeddings, dataset.labels.tolist())
    return verification_report(pairs.scores, pairs.same, n_folds=n_folds, fars=fars)
