"""Angular helpers shared by the margin heads: cos(mθ) without arccos, and a monotone continuation."""

from __future__ import annotations

import math

import torch
from numpy.polynomial import chebyshev

# Bounds arccos's gradient at cos θ = ±1 (|d arccos/dx| <= 1/sqrt(2·eps) ≈ 700); values stay exact.
ARCCOS_EPS = 1e-6


def angle(cos_theta: torch.Tensor) -> torch.Tensor:
    """θ = arccos(cos θ) in [0, π], exact in value, with a gradient that stays finite at cos θ = ±1.

    The gradient is taken at cos θ clamped just inside [-1, 1] (the exact one is infinite there);
    clamping the value instead would move θ by ~sqrt(2·eps) near 0 and π.
    """
    exact = torch.acos(cos_theta.detach().clamp(-1.0, 1.0))
    inside = torch.acos(cos_theta.clamp(-1.0 + ARCCOS_EPS, 1.0 - ARCCOS_EPS))
    return inside + (exact - inside.detach())


def cos_multiple_angle(cos_theta: torch.Tensor, m: int) -> torch.Tensor:
    """cos(mθ) as the Chebyshev polynomial T_m(cos θ): exact and differentiable everywhere (SphereFace).

    ``torch.special.chebyshev_polynomial_t`` has no autograd, so T_m's power-series coefficients come
    from numpy and are evaluated by Horner's rule in torch.
    """
    if m < 1:
        raise ValueError(f"m must be a positive integer, got {m}")
    unit = [0.0] * m + [1.0]
    coefficients = chebyshev.cheb2poly(unit)  # lowest degree first
    result = torch.full_like(cos_theta, float(coefficients[-1]))
    for coefficient in coefficients[-2::-1]:
        result = result * cos_theta + float(coefficient)
    return result


def monotone_cos(phi: torch.Tensor, cos_phi: torch.Tensor | None = None) -> torch.Tensor:
    """SphereFace's ψ: (−1)^k cos φ − 2k for φ in [kπ, (k+1)π], a continuous, decreasing extension of cos.

    cos φ alone turns back up past φ = π; this continuation keeps a margin-modified target logit
    monotonically decreasing in θ over the whole [0, π] (it equals cos φ wherever φ <= π).
    ``cos_phi`` lets a caller pass cos φ computed a better way (e.g. by Chebyshev polynomial);
    k is piecewise constant, so it carries no gradient.
    """
    cos_value = torch.cos(phi) if cos_phi is None else cos_phi
    k = torch.floor(phi.detach() / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (−1)^k
    return sign * cos_value - 2.0 * k
