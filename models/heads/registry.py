"""Heads by name: ``build_head("arcface", embedding_size=512, num_classes=n, s=64.0, m=0.5)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from models.heads.base import MarginHead
from models.heads.margins import (
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceArccosHead,
)
from models.heads.sphereface import SphereFaceHead

# Read-only: the set of heads is fixed by the code, not changed at run time.
HEADS: Mapping[str, type[MarginHead]] = MappingProxyType(
    {
        "softmax": SoftmaxHead,
        "normface": NormFaceHead,
        "sphereface": SphereFaceHead,
        "sphereface_arccos": SphereFaceArccosHead,
        "cosface": CosFaceHead,
        "arcface": ArcFaceHead,
        "combined": CombinedMarginHead,
    }
)

_SIZE_ARGUMENTS = ("self", "embedding_size", "num_classes")


def head_names() -> list[str]:
    """Registered head names, baseline first (the order of ``HEADS``)."""
    return list(HEADS)


def head_class(name: str) -> type[MarginHead]:
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; known: {', '.join(HEADS)}") from None


def head_options(name: str) -> dict[str, Any]:
    """A head's hyper-parameters and their defaults, e.g. ``{"s": 64.0, "m": 0.5}`` for ArcFace."""
    parameters = inspect.signature(head_class(name)).parameters
    return {key: p.default for key, p in parameters.items() if key not in _SIZE_ARGUMENTS}


def build_head(name: str, *, embedding_size: int, num_classes: int, **options: Any) -> MarginHead:
    """Build a registered head; ``options`` are its keyword hyper-parameters (see ``head_options``)."""
    cls = head_class(name)
    unknown = sorted(set(options) - set(head_options(name)))
    if unknown:
        raise TypeError(f"head {name!r} takes no option(s) {unknown}; it takes {sorted(head_options(name))}")
    return cls(embedding_size, num_classes, **options)
