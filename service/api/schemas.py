"""Request and response models of the ``/v1`` API (pydantic at the edge; examples show in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from service.api.params import THRESHOLD_HELP
from service.api.uploads import base64_payload
from service.auth.keys import Scope
from service.gallery.input_limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    MAX_NAME_CHARS,
    check_metadata,
    check_name,
)
from service.settings import COLLECTION_NAME_PATTERN, FacePolicy

_EXAMPLE_BOX: JsonDict = {"x1": 31.2, "y1": 28.9, "x2": 118.4, "y2": 131.0}
_EXAMPLE_LANDMARKS: JsonDict = {
    "left_eye": [56.1, 69.3],
    "right_eye": [94.0, 69.0],
    "nose": [75.2, 91.7],
    "mouth_left": [59.8, 110.4],
    "mouth_right": [91.3, 110.1],
}
_EXAMPLE_QUALITY: JsonDict = {
    "size": 87.2,
    "det_score": 0.998,
    "sharpness": 412.5,
    "yaw_deg": 2.1,
    "pitch_deg": -3.4,
    "roll_deg": -0.5,
}
_EXAMPLE_SUBJECT_ID = "4f6c2d1e-3b5a-4c1e-9a7b-2d8e6f0a1b2c"
_EXAMPLE_FACE_ID = "a81b7c52-6d0e-4f3a-b1c9-5e2d4f6a7b8c"

_EXAMPLE_CANDIDATE: JsonDict = {
    "subject_id": _EXAMPLE_SUBJECT_ID,
    "name": "John Simm",
    "similarity": 0.93,
    "face_id": _EXAMPLE_FACE_ID,
}
_EXAMPLE_SUBJECT: JsonDict = {
    "id": _EXAMPLE_SUBJECT_ID,
    "name": "John Simm",
    "metadata": {"employee_id": "E-1042"},
    "face_count": 5,
    "created_at": "2025-01-31T10:15:02+00:00",
    "updated_at": "2025-01-31T10:15:02+00:00",
    "duplicate_name": False,
}

# Stored text and JSON: checked before anything is written (service.gallery.input_limits says why).
_NAME_RULES = "no control characters (NUL, CR/LF, ESC, ...), line separators or bidi controls"
SubjectName = Annotated[
    str,
    Field(
        min_length=1, max_length=MAX_NAME_CHARS, description=f"1-{MAX_NAME_CHARS} characters; {_NAME_RULES}"
    ),
    AfterValidator(check_name),
]
KeyName = Annotated[
    str,
    Field(max_length=MAX_NAME_CHARS, description=f"0-{MAX_NAME_CHARS} characters; {_NAME_RULES}"),
    AfterValidator(check_name),
]
Metadata = Annotated[
    dict[str, Any],
    Field(
        description=f"a JSON object of at most {MAX_METADATA_BYTES} bytes (compact UTF-8), "
        f"{MAX_METADATA_DEPTH} levels and {MAX_METADATA_KEYS} keys; finite numbers, 64-bit integers, "
        "valid Unicode"
    ),
    AfterValidator(check_metadata),
]
Similarity = Annotated[float, Field(ge=-1.0, le=1.0, description="cosine similarity, in [-1, 1]")]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- faces


class Box(_Out):
    """Face box in image pixels (x1, y1 top-left; x2, y2 bottom-right)."""

    x1: float
    y1: float
    x2: float
    y2: float


class Landmarks(_Out):
    """Five points ``[x, y]`` in image pixels; left/right as seen in the image (left = smaller x)."""

    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    nose: tuple[float, float]
    mouth_left: tuple[float, float]
    mouth_right: tuple[float, float]


class Quality(_Out):
    size: float = Field(description="shorter side of the box, pixels")
    det_score: float
    sharpness: float = Field(description="variance of the Laplacian of the aligned grey chip")
    yaw_deg: float
    pitch_deg: float
    roll_deg: float


class ImageSize(_Out):
    width: int
    height: int


class DetectedFaceOut(_Out):
    box: Box
    landmarks: Landmarks
    score: float = Field(description="detector confidence")
    quality: Quality


class DetectResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image": {"width": 150, "height": 150},
                    "faces": [
                        {
                            "box": _EXAMPLE_BOX,
                            "landmarks": _EXAMPLE_LANDMARKS,
                            "score": 0.998,
                            "quality": _EXAMPLE_QUALITY,
                        }
                    ],
                }
            ]
        }
    )
    image: ImageSize
    faces: list[DetectedFaceOut] = Field(description="largest face first")


class EmbeddedFaceOut(_Out):
    box: Box
    score: float
    embedding: list[float] = Field(description="unit-norm embedding of the pack's size")


class EmbedResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "pack_id": "default-dlib-r34-1a2b3c4d",
                    "embedding_size": 128,
                    "faces": [{"box": _EXAMPLE_BOX, "score": 0.998, "embedding": [0.0132, -0.0871, 0.1094]}],
                }
            ]
        }
    )
    pack_id: str
    embedding_size: int
    faces: list[EmbeddedFaceOut]


# --- matching


class ThresholdOut(_Out):
    name: str = Field(description='operating point name ("default", "far=1e-3") or "custom" for a number')
    value: float


class ComparedFace(_Out):
    face_index: int = Field(description="index in the image's faces, largest first")
    faces_in_image: int
    box: Box
    score: float


class SubjectRef(_Out):
    id: str
    name: str


class VerifyResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "mode": "pair",
                    "similarity": 0.912,
                    "threshold": {"name": "default", "value": 0.84},
                    "match": True,
                    "face_a": {"face_index": 0, "faces_in_image": 1, "box": _EXAMPLE_BOX, "score": 0.998},
                    "face_b": {"face_index": 0, "faces_in_image": 1, "box": _EXAMPLE_BOX, "score": 0.997},
                    "subject": None,
                }
            ]
        }
    )
    mode: Literal["pair", "subject"]
    similarity: Similarity
    threshold: ThresholdOut
    match: bool = Field(description="similarity >= threshold")
    face_a: ComparedFace = Field(description="the face of image_a (or of image in subject mode)")
    face_b: ComparedFace | None = None
    subject: SubjectRef | None = None


class CandidateOut(_Out):
    subject_id: str
    name: str
    similarity: Similarity
    face_id: str = Field(description="the subject's enrolled face that matched best")


class IdentifiedFaceOut(_Out):
    box: Box
    score: float
    unknown: bool = Field(description="no subject reached the threshold")
    candidates: list[CandidateOut] = Field(description="best first, at most top_k, all >= threshold")


class IdentifyResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "threshold": {"name": "default", "value": 0.84},
                    "top_k": 5,
                    "faces": [
                        {
                            "box": _EXAMPLE_BOX,
                            "score": 0.998,
                            "unknown": False,
                            "candidates": [_EXAMPLE_CANDIDATE],
                        }
                    ],
                }
            ]
        }
    )
    threshold: ThresholdOut
    top_k: int
    faces: list[IdentifiedFaceOut]


# --- gallery


class SubjectCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "John Simm", "metadata": {"employee_id": "E-1042"}}]},
    )
    name: SubjectName
    metadata: Metadata = Field(default_factory=dict)


class SubjectUpdate(_In):
    """Fields to change; ``metadata`` replaces the stored object as a whole."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "John Simm", "metadata": {"team": "B"}}]}
    )
    name: SubjectName | None = None
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> SubjectUpdate:
        if self.name is None and self.metadata is None:
            raise ValueError("give at least one of name, metadata")
        return self


class SubjectMerge(_In):
    """Where a subject's faces go: the subject named by ``into`` keeps its id, name and metadata."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"into": _EXAMPLE_SUBJECT_ID}]})
    into: str = Field(
        min_length=1,
        max_length=200,
        description="id of the subject that receives the faces (not the subject merged); metadata: its "
        "keys win, keys only the merged subject has are added",
    )


class SubjectOut(_Out):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_SUBJECT]})
    id: str
    name: str
    metadata: dict[str, Any]
    face_count: int
    created_at: str
    updated_at: str
    duplicate_name: bool = Field(
        description="another subject has the same name now (trimmed, ignoring case): worked out when "
        "the subject is read, so it turns false once the other one is renamed or deleted"
    )


class SubjectPage(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subjects": [_EXAMPLE_SUBJECT],
                    "next_cursor": "Mg",
                }
            ]
        }
    )
    subjects: list[SubjectOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class RejectionOut(_Out):
    code: Literal["no_face", "multiple_faces", "face_too_small", "low_quality", "invalid_image"]
    detail: str


class EnrollmentItem(_Out):
    index: int = Field(description="position of the image in the request's `images`")
    filename: str | None
    accepted: bool
    face_id: str | None = None
    rejection: RejectionOut | None = None


class EnrollmentResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject_id": _EXAMPLE_SUBJECT_ID,
                    "accepted": 1,
                    "rejected": 1,
                    "results": [
                        {
                            "index": 0,
                            "filename": "a.jpg",
                            "accepted": True,
                            "face_id": _EXAMPLE_FACE_ID,
                            "rejection": None,
                        },
                        {
                            "index": 1,
                            "filename": "group.jpg",
                            "accepted": False,
                            "face_id": None,
                            "rejection": {"code": "multiple_faces", "detail": "3 faces of enrollment size"},
                        },
                    ],
                }
            ]
        }
    )
    subject_id: str
    accepted: int
    rejected: int
    results: list[EnrollmentItem]


class FaceOut(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _EXAMPLE_FACE_ID,
                    "subject_id": _EXAMPLE_SUBJECT_ID,
                    "pack_id": "sface-int8-retinaface-940d1b7a",
                    "det_score": 0.998,
                    "quality": {
                        "size": 142.0,
                        "det_score": 0.998,
                        "sharpness": 311.5,
                        "yaw_deg": 4.1,
                        "pitch_deg": -2.0,
                        "roll_deg": -2.1,
                    },
                    "created_at": "2025-01-31T10:15:02+00:00",
                }
            ]
        }
    )
    id: str
    subject_id: str
    pack_id: str
    det_score: float
    quality: Quality | None
    created_at: str


class FaceList(_Out):
    faces: list[FaceOut]


class FaceMove(_In):
    """The subject a face moves to (its crop goes with it)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"subject_id": _EXAMPLE_SUBJECT_ID}]}
    )
    subject_id: str = Field(min_length=1, max_length=200, description="id of the subject the face moves to")


# --- keys


_KEY_COLLECTIONS_HELP = "the collections the key may use; null: every collection"


class KeyCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "kiosk-3", "scopes": ["read"]},
                {"name": "kiosk-4", "scopes": ["read", "enroll"], "collections": ["kiosk"]},
            ]
        },
    )
    name: KeyName = ""
    scopes: list[Scope] = Field(min_length=1)
    collections: list[Annotated[str, Field(pattern=COLLECTION_NAME_PATTERN)]] | None = Field(
        None,
        min_length=1,
        description=f"{_KEY_COLLECTIONS_HELP} (the default). Only configured collections (and "
        "default); never with the admin scope",
    )


_EXAMPLE_KEY: JsonDict = {
    "id": "3f9c0a1b2d4e",
    "name": "gate-2",
    "scopes": ["read"],
    "collections": ["default", "kiosk"],
    "created_at": "2025-01-31T10:15:02+00:00",
    "revoked_at": None,
    "active": True,
}


class KeyOut(_Out):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_KEY]})
    id: str
    name: str
    scopes: list[Scope]
    collections: list[str] | None = Field(description=_KEY_COLLECTIONS_HELP)
    created_at: str
    revoked_at: str | None
    active: bool


class KeyCreated(KeyOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [_EXAMPLE_KEY | {"key": "fsk_3f9c0a1b2d4e_" + "x" * 43}]}
    )
    key: str = Field(description="the secret key: shown once, store it now")


class KeyList(_Out):
    keys: list[KeyOut]


class CallerKeyOut(_Out):
    """The key a request was made with (``GET /v1/keys/me``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "3f9c0a1b2d4e", "name": "gate-2", "scopes": ["read"], "collections": ["kiosk"]}
            ]
        }
    )

    id: str = Field(description='the key\'s id; "env" for FACE_API_KEY, "auth-disabled" with auth off')
    name: str
    scopes: list[Scope] = Field(description="admin implies every other scope")
    collections: list[str] | None = Field(description=_KEY_COLLECTIONS_HELP)


# --- service


class OperatingPointOut(_Out):
    threshold: float
    far: float | None
    source: str


class ReplicationOut(_Out):
    """A replica's place in the shared gallery's change feed (FACE_DATABASE_URL set)."""

    applied_seq: int = Field(description="the last change applied to this replica's search index")
    database_seq: int = Field(description="the last change committed to the shared database")
    lag_changes: int
    lag_s: float = Field(description="age of the oldest change not applied yet; 0 when caught up")
    following: bool = Field(description="false while the replica cannot reach the database")


class GalleryInfo(_Out):
    subjects: int
    faces: int
    index_type: str
    backend: str = Field(description="sqlite (embedded) or postgresql (shared by replicas)")
    replication: ReplicationOut | None = None


class CollectionRef(_Out):
    name: str = Field(
        description='the path segment of /v1/collections/{collection}/...; "default": the /v1/... routes'
    )
    pack_id: str


class CollectionOut(CollectionRef):
    embedding_size: int
    threshold: ThresholdOut = Field(description="the threshold used when a request names none (its pack's)")
    subjects: int
    faces: int


class CollectionList(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collections": [
                        {
                            "name": "default",
                            "pack_id": "sface-int8-retinaface-940d1b7a",
                            "embedding_size": 128,
                            "threshold": {"name": "default", "value": 0.3819},
                            "subjects": 120,
                            "faces": 604,
                        },
                        {
                            "name": "kiosk",
                            "pack_id": "sface-int8-yunet-940d1b7a",
                            "embedding_size": 128,
                            "threshold": {"name": "default", "value": 0.3819},
                            "subjects": 12,
                            "faces": 40,
                        },
                    ]
                }
            ]
        }
    )
    collections: list[CollectionOut] = Field(description="the default collection first, then by name")


class InfoResponse(_Out):
    pack_id: str
    pack_description: str
    embedding_size: int
    embedder_input_size: tuple[int, int]
    flip_augmentation: bool
    providers: dict[str, list[str]] = Field(description="ONNX Runtime providers in use, per model role")
    operating_points: dict[str, OperatingPointOut]
    threshold: ThresholdOut = Field(description="the threshold used when a request names none")
    subject_score: str
    gallery: GalleryInfo
    auth_enabled: bool
    collections: list[CollectionRef] = Field(
        description="every collection the service serves, the default one (this answer's) first"
    )


class HealthResponse(_Out):
    status: Literal["ok"]


class ReadyResponse(_Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    replication: ReplicationOut | None = None


class ProblemFieldError(_Out):
    field: str
    reason: str
    code: str | None = None


class Problem(_Out):
    """RFC 7807 problem details (``application/problem+json``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:face-service:problem:not_found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": f"no subject {_EXAMPLE_SUBJECT_ID}",
                    "instance": f"/v1/subjects/{_EXAMPLE_SUBJECT_ID}",
                    "request_id": "7c0e5b3f9d2a4e6b8f1c3a5d7e9b0c2d",
                    "errors": [],
                }
            ]
        }
    )
    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None
    errors: list[ProblemFieldError]


# --- image requests: a multipart form or a JSON body, the same fields (service.api.request_bodies)

_IMAGE_HELP = "JPEG, PNG, WebP, BMP, TIFF or PGM/PPM"
_BASE64_HELP = (
    "the image file, base64 (standard alphabet, padded; line breaks allowed) or a data: URL "
    "(data:image/jpeg;base64,...); URLs are refused, never fetched"
)
_FACE_POLICY_HELP = (
    "which face to use: largest, centre (nearest the centre, weighted by size) or score (most "
    "confident); default: the FACE_FACE_POLICY setting"
)
_EXAMPLE_BASE64 = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsL..."
Base64Image = Annotated[str, Field(description=_BASE64_HELP), AfterValidator(base64_payload)]
_MAX_FACE_INDEX = 999
Threshold = Annotated[str | None, Field(max_length=64, description=THRESHOLD_HELP)]


class ImageForm(BaseModel):
    image: UploadFile = Field(description=_IMAGE_HELP)


class ImageJson(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"image": _EXAMPLE_BASE64}]})
    image: Base64Image


class _VerifyFields(BaseModel):
    subject_id: str | None = Field(None, max_length=64, description="enrolled subject (subject mode)")
    face_index_a: int | None = Field(
        None, ge=0, le=_MAX_FACE_INDEX, description="face of image_a/image, largest first; unset: face_policy"
    )
    face_index_b: int | None = Field(
        None, ge=0, le=_MAX_FACE_INDEX, description="face of image_b, largest first; unset: face_policy"
    )
    face_policy: FacePolicy | None = Field(None, description=_FACE_POLICY_HELP)
    threshold: Threshold = None


class VerifyForm(_VerifyFields):
    image_a: UploadFile | None = Field(None, description="first image (pair mode)")
    image_b: UploadFile | None = Field(None, description="second image (pair mode)")
    image: UploadFile | None = Field(None, description="probe image (subject mode)")


class VerifyJson(_VerifyFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image_a": _EXAMPLE_BASE64, "image_b": _EXAMPLE_BASE64}]},
    )
    image_a: Base64Image | None = Field(None, description="first image (pair mode); " + _BASE64_HELP)
    image_b: Base64Image | None = Field(None, description="second image (pair mode); " + _BASE64_HELP)
    image: Base64Image | None = Field(None, description="probe image (subject mode); " + _BASE64_HELP)


class _IdentifyFields(BaseModel):
    top_k: int | None = Field(
        None, ge=1, le=100, description="subjects per face (default FACE_IDENTIFY_TOP_K)"
    )
    largest_only: bool = Field(
        False, description="only one face: the one face_policy chooses (the name predates the policy)"
    )
    face_policy: FacePolicy | None = Field(None, description=_FACE_POLICY_HELP)
    threshold: Threshold = None


class IdentifyForm(_IdentifyFields):
    image: UploadFile = Field(description=_IMAGE_HELP)


class IdentifyJson(_IdentifyFields):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image": _EXAMPLE_BASE64, "top_k": 3}]}
    )
    image: Base64Image


_ENROLL_POLICY_HELP = (
    "for images with several faces of enrollment size: enroll the one this policy chooses (largest, "
    "centre, score); unset: such images are refused (multiple_faces)"
)


class _EnrollFields(BaseModel):
    face_policy: FacePolicy | None = Field(None, description=_ENROLL_POLICY_HELP)


class EnrollForm(_EnrollFields):
    images: list[UploadFile] = Field(description="one or more images, one person each")


class EnrollJson(_EnrollFields):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"images": [_EXAMPLE_BASE64, _EXAMPLE_BASE64]}]}
    )
    images: list[Base64Image] = Field(min_length=1, description="one or more images, one person each")


# --- search by embedding


class IdentifyEmbeddingRequest(_In):
    # strict: a number sent as a string is refused, as the schema says
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"embedding": [0.0123, -0.0456, 0.0789], "pack_id": "default-1a2b3c4d", "top_k": 3}]
        },
    )
    embedding: list[float] = Field(
        min_length=1,
        max_length=4096,
        description="the pack's embedding size, finite, not all zero; normalized to unit length here",
    )
    pack_id: str = Field(
        min_length=1, max_length=200, description="the pack that made the embedding (`pack_id` of /v1/embed)"
    )
    top_k: int | None = Field(
        None, ge=1, le=100, description="subjects to return (default FACE_IDENTIFY_TOP_K)"
    )
    threshold: Threshold = None


class IdentifyEmbeddingResponse(_Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "threshold": {"name": "default", "value": 0.84},
                    "top_k": 3,
                    "unknown": False,
                    "candidates": [_EXAMPLE_CANDIDATE],
                }
            ]
        }
    )
    threshold: ThresholdOut
    top_k: int
    unknown: bool = Field(description="no subject reached the threshold")
    candidates: list[CandidateOut] = Field(description="best first, at most top_k, all >= threshold")


class GalleryImportResponse(_Out):
    """What ``POST /v1/gallery/import`` did (service/usecases/gallery_archive.py)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "source_pack_id": "sface-int8-retinaface-940d1b7a",
                    "pack_id": "sface-int8-retinaface-940d1b7a",
                    "subjects": 5,
                    "faces": 25,
                    "reembedded": 0,
                    "skipped_subjects": 0,
                    "skipped_faces": 0,
                    "skipped_without_crop": 0,
                    "new_subject_ids": {},
                    "new_face_ids": {},
                }
            ]
        }
    )
    source_pack_id: str = Field(description="the pack that made the archive's embeddings")
    pack_id: str = Field(description="this gallery's pack")
    subjects: int = Field(description="subjects imported")
    faces: int = Field(description="faces imported (searchable once this answer is sent)")
    reembedded: int = Field(description="of those, re-embedded from their crops (another pack's archive)")
    skipped_subjects: int = Field(description="subjects left out, their id taken (on_conflict=skip)")
    skipped_faces: int = Field(description="faces left out: id taken, or of a skipped subject")
    skipped_without_crop: int = Field(description="faces left out: no crop to re-embed")
    new_subject_ids: dict[str, str] = Field(description="archive id -> new id (on_conflict=new-ids)")
    new_face_ids: dict[str, str] = Field(description="archive id -> new id (on_conflict=new-ids)")
