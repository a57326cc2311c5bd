"""What the use cases refuse, as exceptions carrying a stable code, a detail and the inputs concerned.

Front ends map them to their own answers (the API: ``service.api.domain_errors``, one table). Fields
are the names the caller gave its inputs (``image_a``, ``face_index_a``, ``images[2]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.pipeline.decode import ImageDecodeError
from service.pipeline.quality import Rejection


@dataclass(frozen=True)
class FieldProblem:
    """One input an error is about."""

    field: str
    reason: str
    code: str


class UseCaseError(Exception):
    """A request a use case refuses; ``code`` is stable, ``detail`` is for people."""

    def __init__(self, code: str, detail: str, problems: Sequence[FieldProblem] = ()) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.problems = tuple(problems)


class InvalidImageError(UseCaseError):
    """Bytes that are no image within the limits (``code`` is the decoder's: too_large, truncated, ...)."""

    def __init__(self, field: str, error: ImageDecodeError) -> None:
        super().__init__(
            error.code, f"{field}: {error.detail}", [FieldProblem(field, error.detail, error.code)]
        )
        self.field = field


class BusyError(UseCaseError):
    """The pixel budget stayed full for longer than the wait allows; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "busy",
            f"the server is decoding as many images as its memory budget allows; retry in {retry_after_s} s",
        )
        self.retry_after_s = retry_after_s


class NoFaceError(UseCaseError):
    def __init__(self, field: str) -> None:
        super().__init__(
            "no_face", f"{field}: no face found", [FieldProblem(field, "no face found", "no_face")]
        )
        self.field = field


class FaceIndexOutOfRangeError(UseCaseError):
    def __init__(self, index_field: str, index: int, field: str, faces: int) -> None:
        super().__init__(
            "face_index_out_of_range",
            f"{index_field} is {index} but {field} has {faces} face(s)",
            [FieldProblem(index_field, f"{field} has {faces} face(s)", "face_index_out_of_range")],
        )


class InvalidVerifyRequestError(UseCaseError):
    """Neither exactly two images nor exactly one image and a subject."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "invalid_verify_request",
            detail,
            [
                FieldProblem(
                    "body", "send image_a and image_b, or image and subject_id", "invalid_combination"
                )
            ],
        )


class TooManyImagesError(UseCaseError):
    def __init__(self, field: str, count: int, limit: int) -> None:
        super().__init__(
            "too_many_images",
            f"{count} images in one request; the limit is {limit}",
            [FieldProblem(field, "too many images", "too_many_images")],
        )


class NoFaceAcceptedError(UseCaseError):
    """Every image of an enrollment was refused; nothing was stored."""

    def __init__(self, rejections: Sequence[tuple[str, Rejection]]) -> None:
        super().__init__(
            "no_face_accepted",
            "no image gave an acceptable face; nothing was enrolled",
            [FieldProblem(field, rejection.detail, rejection.code) for field, rejection in rejections],
        )


class KeyNotFoundError(UseCaseError):
    def __init__(self, detail: str) -> None:
        super().__init__("not_found", detail)


class SelfMergeError(UseCaseError):
    """A subject named as its own merge target: refused (the store would delete what it merged)."""

    def __init__(self, subject_id: str, field: str) -> None:
        reason = "is the subject being merged; name another subject"
        super().__init__(
            "merge_into_itself",
            f"cannot merge subject {subject_id!r} into itself",
            [FieldProblem(field, reason, "merge_into_itself")],
        )


class TargetSubjectNotFoundError(UseCaseError):
    """The subject a request's body names to receive faces does not exist (the path's may well)."""

    def __init__(self, subject_id: str, field: str) -> None:
        super().__init__(
            "subject_not_found",
            f"{field}: no subject with id {subject_id!r}",
            [FieldProblem(field, "no subject with this id", "subject_not_found")],
        )
