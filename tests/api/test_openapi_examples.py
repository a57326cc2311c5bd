"""Every example the OpenAPI document shows is one the API's own models accept (examples don't lie)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel

from service.api import schemas


def _models_with_examples() -> list[tuple[str, type[BaseModel], Any]]:
    found = []
    for name, model in inspect.getmembers(schemas, inspect.isclass):
        if not issubclass(model, BaseModel) or model.__module__ != schemas.__name__:
            continue
        extra = model.model_config.get("json_schema_extra")
        for index, example in enumerate(extra.get("examples", []) if isinstance(extra, dict) else []):
            found.append((f"{name}[{index}]", model, example))
    return found


EXAMPLES = _models_with_examples()


def test_the_response_and_body_models_carry_examples() -> None:
    named = {label.split("[")[0] for label, _, _ in EXAMPLES}
    # The answers of every gallery feature (search pages, faces, keys, collections, archives, identify).
    assert {
        "SubjectPage",
        "SubjectOut",
        "FaceOut",
        "KeyOut",
        "KeyCreated",
        "CallerKeyOut",
        "CollectionList",
        "IdentifyResponse",
        "IdentifyEmbeddingResponse",
        "IdentifyJson",
    } <= named


@pytest.mark.parametrize(("label", "model", "example"), EXAMPLES, ids=[label for label, _, _ in EXAMPLES])
def test_every_example_validates_against_its_model(label: str, model: type[BaseModel], example: Any) -> None:
    model.model_validate(example)
