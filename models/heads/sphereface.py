"""SphereFace / A-Softmax (Liu et al., 2017) with the paper's softmax-annealing schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.heads.base import MarginHead
from models.heads.functional import angle, cos_multiple_angle, monotone_cos


@dataclass(frozen=True)
class LambdaSchedule:
    """λ = max(λ_min, base · (1 + γ · iteration)^(−power)): the released Caffe model's annealing."""

    base: float = 1000.0
    gamma: float = 0.12
    power: float = 1.0
    lambda_min: float = 5.0

    def __post_init__(self) -> None:
        if self.base < 0.0 or self.gamma < 0.0 or self.power < 0.0 or self.lambda_min < 0.0:
            raise ValueError(f"lambda schedule values must be >= 0, got {self}")

    def at(self, iteration: int) -> float:
        decayed: float = self.base * (1.0 + self.gamma * iteration) ** (-self.power)
        return max(self.lambda_min, decayed)


class SphereFaceHead(MarginHead):
    """A-Softmax: target f(θ) = (λ cos θ + ψ(θ)) / (1 + λ), ψ(θ) = (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m].

    Weights are L2-normalized and have no bias. By default (``s=None``) logits are multiplied by the
    feature norm ‖x‖, as in the original; pass a number ``s`` to normalize features too and use a
    fixed scale instead (a common, more stable variant). cos(mθ) is the Chebyshev polynomial
    T_m(cos θ) (integer m), as in the original, so its gradient has no arccos in it.

    λ anneals from softmax (λ = base) towards A-Softmax (λ_min) with a counter, the ``iteration``
    buffer (saved in the state dict), which advances once per forward in training mode.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        m: int = 4,
        s: float | None = None,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"SphereFace's m must be a positive integer, got {m!r}")
        if s is not None and not s > 0.0:
            raise ValueError(f"scale s must be positive or None (feature norm), got {s}")
        self.m = m
        self.s = s
        self.schedule = LambdaSchedule(lambda_base, lambda_gamma, lambda_power, lambda_min)
        self.iteration: torch.Tensor
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def current_lambda(self) -> float:
        return self.schedule.at(int(self.iteration))

    def psi(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """ψ(θ) = (−1)^k cos(mθ) − 2k: the pure angular-margin target (λ = 0)."""
        theta = angle(cos_theta)
        return monotone_cos(self.m * theta, cos_phi=cos_multiple_angle(cos_theta, self.m))

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda
        return (lam * cos_theta + self.psi(cos_theta)) / (1.0 + lam)

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.s is None:
            return embeddings.norm(dim=1, keepdim=True)
        return embeddings.new_tensor(self.s)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = super().forward(embeddings, labels)
        if self.training:
            self.iteration += 1
        return logits

    def extra_repr(self) -> str:
        scale = "‖x‖" if self.s is None else self.s
        return f"{super().extra_repr()}, m={self.m}, scale={scale}, {self.schedule}"
