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


class KeyCollectionsRefusedError(UseCaseError):
    """Collections a new key cannot be limited to (unknown ones; any, for an admin key)."""

    def __init__(self, code: str, reason: str, field: str) -> None:
        super().__init__(code, f"{field}: {reason}", [FieldProblem(field, reason, code)])


class SelfMergeError(UseCaseError):
    """A subject named as its own merge target: refused (the store would delete what it merged)."""

    def __init__(self, subject_id: str, field: str) -> None:
        reason = "is the subject being merged; name another subject"
        super().__init__(
            "merge_into_itself",
            f"cannot merge subject {subject_id!r} into itself",
            [FieldProblem(field, reason, "merge_into_itself")],
        )


class DuplicateNameRefusedError(UseCaseError):
    """Another subject has the name already (trimmed, any case) and duplicates are refused."""

    def __init__(self, name: str, other_id: str, field: str) -> None:
        reason = f"subject {other_id} is already named so (names compare trimmed, ignoring case)"
        super().__init__(
            "duplicate_name",
            f"{name!r}: {reason}; FACE_DUPLICATE_NAMES=refuse allows one subject per name",
            [FieldProblem(field, reason, "duplicate_name")],
        )
        self.other_id = other_id


class MetadataValueWithoutKeyError(UseCaseError):
    """A metadata value to match was given without the key whose value it is."""

    def __init__(self, field: str, key_field: str) -> None:
        reason = f"needs {key_field.rsplit('.', 1)[-1]}: the top-level metadata key whose value to match"
        super().__init__(
            "metadata_value_without_key",
            f"{field} {reason}",
            [FieldProblem(field, reason, "metadata_value_without_key")],
        )


class FaceHasNoCropError(UseCaseError):
    """The face exists but no crop was stored for it (enrolled with FACE_STORE_CROPS off)."""

    def __init__(self, face_id: str) -> None:
        super().__init__(
            "face_has_no_crop",
            f"face {face_id!r} has no stored crop (it was enrolled with FACE_STORE_CROPS=false)",
        )


class TargetSubjectNotFoundError(UseCaseError):
    """The subject a request's body names to receive faces does not exist (the path's may well)."""

    def __init__(self, subject_id: str, field: str) -> None:
        super().__init__(
            "subject_not_found",
            f"{field}: no subject with id {subject_id!r}",
            [FieldProblem(field, "no subject with this id", "subject_not_found")],
        )


class InvalidEmbeddingError(UseCaseError):
    """A query embedding that cannot be searched with: wrong length, non-finite values, all zeros."""

    def __init__(self, field: str, reason: str, code: str) -> None:
        super().__init__(code, f"{field}: {reason}", [FieldProblem(field, reason, code)])


class EmbeddingPackMismatchError(UseCaseError):
    """A query embedding made by another pack than the gallery's: its similarities would mean nothing."""

    def __init__(self, field: str, given: str, gallery_pack: str) -> None:
        reason = f"the gallery holds embeddings of pack {gallery_pack!r}, not {given!r}"
        super().__init__(
            "pack_mismatch",
            f"{reason}: embed with pack {gallery_pack!r} (see /v1/info) to search this gallery",
            [FieldProblem(field, reason, "pack_mismatch")],
        )
        self.gallery_pack = gallery_pack


# ids named per kind in an import's refusal
_SHOWN_IDS = 5


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(sorted(ids)[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


class ImportConflictError(UseCaseError):
    """The archive names ids the gallery holds already (``on_conflict=refuse``): nothing was imported."""

    def __init__(self, subject_ids: Sequence[str], face_ids: Sequence[str], field_name: str) -> None:
        parts = [
            f"{len(ids)} {what} ids ({_examples(ids)})"
            for what, ids in (("subject", subject_ids), ("face", face_ids))
            if ids
        ]
        reason = "ids the gallery holds already: skip or new-ids imports the archive anyway"
        super().__init__(
            "import_conflict",
            f"the gallery already holds {' and '.join(parts)} of the archive; nothing was imported "
            f"({field_name}=skip leaves them out, {field_name}=new-ids gives them new ids)",
            [FieldProblem(field_name, reason, "import_conflict")],
        )
        self.subject_ids = tuple(sorted(subject_ids))
        self.face_ids = tuple(sorted(face_ids))


class FacesWithoutCropError(UseCaseError):
    """Re-embedding needs every face's crop; some have none (refused unless they may be skipped)."""

    def __init__(self, count: int, source_pack: str, pack: str, field_name: str) -> None:
        super().__init__(
            "faces_without_crop",
            f"{count} faces of the archive have no crop, so they cannot be re-embedded from pack "
            f"{source_pack!r} to this gallery's {pack!r}; nothing was imported "
            f"(set {field_name} to import the others)",
            [FieldProblem(field_name, f"{count} faces have no crop", "faces_without_crop")],
        )
        self.count = count


class CollectionNotFoundError(UseCaseError):
    """A path names a collection FACE_COLLECTIONS does not declare."""

    def __init__(self, name: str) -> None:
        reason = "no collection of this name (FACE_COLLECTIONS declares them)"
        super().__init__(
            "collection_not_found",
            f"no collection named {name!r}",
            [FieldProblem("path.collection", reason, "collection_not_found")],
        )
