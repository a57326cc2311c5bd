"""MarginHead: the one interface of the classification heads used to train face embedders."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module, ABC):
    """A class-weight matrix W (num_classes × embedding_size) and a rule for the true class's logit.

    ``forward(embeddings, labels)`` returns logits for cross-entropy. For the angular heads, with
    cos θ_j the cosine between an embedding and class j's weight,

        logit_j = scale · cos θ_j                    for j ≠ label (untouched)
        logit_y = scale · target_logit(cos θ_y)      for the labelled class

    where ``scale`` is ``logit_scale(embeddings)`` (a fixed s, or ‖x‖ for the original SphereFace).
    ``target_logit`` works on any tensor of cosines, so it can be checked at known angles.
    """

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 2:
            raise ValueError(
                f"need embedding_size >= 1 and num_classes >= 2, got {embedding_size} and {num_classes}"
            )
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    @abstractmethod
    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """The labelled class's logit, before ``logit_scale``, as a function of its cos θ (elementwise)."""

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The factor applied to every logit: a scalar, or one value per row (shape (B, 1))."""
        raise NotImplementedError(f"{type(self).__name__} does not define a logit scale")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos θ between each embedding and each class weight, shape (B, num_classes), within [-1, 1]."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        cos_theta = self.cosine(embeddings)
        label_index = labels.unsqueeze(1)
        target = self.target_logit(cos_theta.gather(1, label_index))
        logits = cos_theta.scatter(1, label_index, target)
        return logits * self.logit_scale(embeddings)

    def check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Raise ValueError unless embeddings are (B, embedding_size) and labels are B class indices."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype != torch.long:
            raise ValueError(f"labels must be torch.long class indices, got {labels.dtype}")
        if labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{low}, {high}]")

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"
