"""The one domain→HTTP table: every use-case refusal has an answer, with the status and body it had."""

from __future__ import annotations

import pytest

from service.api.domain_errors import DOMAIN_ERRORS, problem_for
from service.pipeline.decode import ImageDecodeError
from service.pipeline.quality import Rejection
from service.usecases import errors
from service.usecases.errors import (
    BusyError,
    FaceIndexOutOfRangeError,
    InvalidImageError,
    NoFaceAcceptedError,
    NoFaceError,
    TooManyImagesError,
    UseCaseError,
)


def _subclasses(cls: type[Exception]) -> set[type[Exception]]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found)) if found else found


def test_every_use_case_error_is_in_the_table() -> None:
    assert _subclasses(UseCaseError) - set(DOMAIN_ERRORS) == set()
    assert {cls.__module__ for cls in _subclasses(UseCaseError)} == {errors.__name__}


@pytest.mark.parametrize(
    ("code", "status"),
    [("too_large", 413), ("too_many_pixels", 413), ("not_an_image", 415), ("unsupported_format", 415),
     ("empty", 422), ("truncated", 422), ("something_new", 422)],
)  # fmt: skip
def test_an_invalid_image_takes_its_status_from_the_decoder_code(code: str, status: int) -> None:
    problem = problem_for(InvalidImageError("image_a", ImageDecodeError(code, "why")))
    assert problem is not None
    assert (problem.status, problem.code, problem.detail) == (status, code, "image_a: why")
    assert [e.as_dict() for e in problem.errors] == [{"field": "image_a", "reason": "why", "code": code}]


def test_refusals_keep_their_status_body_and_headers() -> None:
    busy = problem_for(BusyError(3))
    assert busy is not None
    assert (busy.status, busy.code, busy.headers) == (503, "busy", {"Retry-After": "3"})
    no_face = problem_for(NoFaceError("image"))
    assert no_face is not None
    assert (no_face.status, no_face.detail) == (422, "image: no face found")
    out_of_range = problem_for(FaceIndexOutOfRangeError("face_index_b", 2, "image_b", 1))
    assert out_of_range is not None
    assert out_of_range.detail == "face_index_b is 2 but image_b has 1 face(s)"
    assert [e.field for e in out_of_range.errors] == ["face_index_b"]
    too_many = problem_for(TooManyImagesError("images", 33, 32))
    assert too_many is not None
    assert (too_many.status, too_many.code) == (413, "too_many_images")
    none_accepted = problem_for(NoFaceAcceptedError([("images[1]", Rejection("no_face", "no face"))]))
    assert none_accepted is not None
    assert [e.as_dict() for e in none_accepted.errors] == [
        {"field": "images[1]", "reason": "no face", "code": "no_face"}
    ]
