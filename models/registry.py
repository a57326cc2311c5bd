"""A registry of backbones: build one by name with typed keyword arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn


class BackboneFactory(Protocol):
    def __call__(self, *, embedding_size: int = ..., dropout: float = ..., fp16: bool = ...) -> nn.Module: ...


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int]  # (width, height) the backbone expects
    default_embedding_size: int
    description: str = ""


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, input_size: tuple[int, int], default_embedding_size: int, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator: ``@register_backbone("iresnet50", input_size=(112, 112), ...)``."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = BackboneEntry(name, factory, input_size, default_embedding_size, description)
        return factory

    return decorate


def backbone_entry(name: str) -> BackboneEntry:
    _load_builtin_backbones()
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, e.g. ``build_backbone("iresnet50", embedding_size=512)``."""
    return backbone_entry(name).factory(**kwargs)


def list_backbones() -> list[str]:
    _load_builtin_backbones()
    return sorted(_BACKBONES)


def _load_builtin_backbones() -> None:
    # Imported on first use, not at package import: registering is the modules' only side effect.
    from models import backbones  # noqa: F401
