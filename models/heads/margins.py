"""The softmax baseline and the normalized (scale s) margin heads: NormFace, CosFace, ArcFace, combined."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.heads.base import MarginHead
from models.heads.functional import angle, monotone_cos


def _check_scale(s: float) -> None:
    if not s > 0.0:
        raise ValueError(f"scale s must be positive, got {s}")


class SoftmaxHead(MarginHead):
    """The baseline: an ordinary linear layer with bias, logits = W x + b (no normalization, no margin)."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__(embedding_size, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # nn.Linear's own initialisation, so the baseline is the textbook classifier.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(embedding_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return cos_theta  # no margin: the true class is treated like any other

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        return F.linear(embeddings, self.weight, self.bias)


class NormFaceHead(MarginHead):
    """NormFace (Wang et al., 2017): s · cos θ_j for every class; features and weights L2-normalized."""

    def __init__(self, embedding_size: int, num_classes: int, *, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes)
        _check_scale(s)
        self.s = s

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return cos_theta

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.new_tensor(self.s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}"


class CosFaceHead(NormFaceHead):
    """CosFace / AM-Softmax (Wang et al., 2018): target s · (cos θ − m)."""

    def __init__(self, embedding_size: int, num_classes: int, *, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        if m < 0.0:
            raise ValueError(f"margin m must be >= 0, got {m}")
        self.m = m

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return cos_theta - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


class ArcFaceHead(NormFaceHead):
    """ArcFace (Deng et al., 2019): target s · cos(θ + m), with insightface's fallback past θ = π − m.

    cos(θ + m) would rise again once θ + m > π; there (cos θ <= cos(π − m)) insightface uses
    cos θ − m · sin(π − m) instead (``easy_margin=False``), which keeps the target decreasing in θ.
    """

    def __init__(self, embedding_size: int, num_classes: int, *, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        if not 0.0 <= m < math.pi / 2:
            raise ValueError(f"margin m must be in [0, π/2), got {m}")
        self.m = m
        self._threshold = math.cos(math.pi - m)  # insightface's "th"
        self._fallback_shift = math.sin(math.pi - m) * m  # insightface's "mm"

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        cos_theta_plus_m = torch.cos(angle(cos_theta) + self.m)
        return torch.where(cos_theta > self._threshold, cos_theta_plus_m, cos_theta - self._fallback_shift)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


class CombinedMarginHead(NormFaceHead):
    """insightface's combined margin: target s · (cos(m1 · θ + m2) − m3).

    m1 = 1, m2 = 0 gives CosFace; m1 = 1, m3 = 0 gives ArcFace (below its fallback angle); m2 = m3 = 0
    gives the arccos SphereFace. Where m1 · θ + m2 passes π, cos(·) is continued by SphereFace's
    ψ = (−1)^k cos(·) − 2k so the target keeps decreasing in θ up to π (insightface leaves it to rise).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        if m1 < 1.0 or m2 < 0.0 or m3 < 0.0:
            raise ValueError(f"need m1 >= 1, m2 >= 0, m3 >= 0, got m1={m1}, m2={m2}, m3={m3}")
        self.m1 = m1
        self.m2 = m2
        self.m3 = m3

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return monotone_cos(self.m1 * angle(cos_theta) + self.m2) - self.m3

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


class SphereFaceArccosHead(CombinedMarginHead):
    """The "SphereFace" of insightface's combined margin (m1 = 1.35): target s · cos(m θ) via arccos.

    A multiplicative angular margin with a fixed scale s on normalized features, unlike the original
    A-Softmax (``SphereFaceHead``); past θ = π / m it continues as (−1)^k cos(mθ) − 2k.
    """

    def __init__(self, embedding_size: int, num_classes: int, *, s: float = 64.0, m: float = 1.35) -> None:
        super().__init__(embedding_size, num_classes, s=s, m1=m, m2=0.0, m3=0.0)

    @property
    def m(self) -> float:
        return self.m1
