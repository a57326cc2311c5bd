"""Fixtures for the use-case tests: the real default pack and photos, resources on a temporary data
dir, and a runner that drives a use case on its own event loop (no HTTP anywhere)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from service.usecases.images import ImageInput
from service.usecases.resources import ServiceResources, build_resources
from tests.api.conftest import api_settings, johns, strangers

# The real photos, as the API tests pick them (fixtures are found by the name they are bound to here).
__all__ = ["johns", "strangers"]

T = TypeVar("T")


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[ServiceResources]:
    """Resources built from settings as the service builds them, on a fresh data dir per module."""
    built = build_resources(api_settings(tmp_path_factory.mktemp("usecases"), default_pack_dir))
    try:
        yield built
    finally:
        built.gallery.close()


def run(resources: ServiceResources, use: Callable[[ServiceResources], Awaitable[T]]) -> T:
    """``use(resources)`` on a new event loop, with the pipeline's embedding batcher running."""

    async def scenario() -> T:
        async with resources.pipeline:
            return await use(resources)

    return asyncio.run(scenario())


def photo(path: Path, field: str = "image") -> ImageInput:
    return ImageInput(path.read_bytes(), field, path.name)
