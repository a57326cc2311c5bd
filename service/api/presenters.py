"""Use-case results, pipeline and gallery dataclasses → response models (the one place that knows both).

Stored data is shown defensively: a read must answer 200 whatever an older version (or a hand
edit of the SQLite file) left in a row. A name that isn't valid Unicode is shown with its lone
surrogates escaped (``\\ud800``); metadata that can't be returned as JSON is replaced by an object
holding only ``UNREADABLE_METADATA_KEY`` and why, so the subject can still be found, fixed with a
PATCH, or deleted by its id.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from service.api.schemas import (
    Box,
    CallerKeyOut,
    CandidateOut,
    CollectionList,
    CollectionOut,
    CollectionRef,
    ComparedFace,
    DetectedFaceOut,
    DetectResponse,
    EmbeddedFaceOut,
    EmbedResponse,
    EnrollmentItem,
    EnrollmentResponse,
    FaceOut,
    GalleryImportResponse,
    GalleryInfo,
    IdentifiedFaceOut,
    IdentifyEmbeddingResponse,
    IdentifyResponse,
    ImageSize,
    InfoResponse,
    KeyOut,
    Landmarks,
    OperatingPointOut,
    Quality,
    RejectionOut,
    ReplicationOut,
    SubjectOut,
    SubjectRef,
    ThresholdOut,
    VerifyResponse,
)
from service.auth.keys import ApiKey
from service.gallery.gallery import Candidate, ReplicationStatus
from service.gallery.input_limits import unicode_problem, walk_json
from service.gallery.store import UNREADABLE_METADATA_KEY, FaceRecord, Subject
from service.pipeline.types import DetectedFace, FaceQuality
from service.usecases import verify
from service.usecases.collections import CollectionInfo
from service.usecases.detect import DetectResult
from service.usecases.embed import EmbedResult
from service.usecases.enroll import EnrollmentResult, ImageOutcome
from service.usecases.gallery_archive import ImportReport
from service.usecases.identify import EmbeddingMatches, IdentifyResult
from service.usecases.info import ServiceInfo
from service.usecases.keys import CallerKey
from service.usecases.thresholds import ResolvedThreshold

# Well below pydantic-core's serialization depth limit (~254) once the response's own nesting is added.
_MAX_RETURNED_DEPTH = 64


def box_of(face: DetectedFace) -> Box:
    x1, y1, x2, y2 = (float(v) for v in face.box)
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


def landmarks_of(face: DetectedFace) -> Landmarks:
    # Rows follow LandmarkConvention.FIVE_POINT: eye_l, eye_r, nose, mouth_l, mouth_r.
    points = [(float(x), float(y)) for x, y in face.landmarks]
    return Landmarks(
        left_eye=points[0], right_eye=points[1], nose=points[2], mouth_left=points[3], mouth_right=points[4]
    )


def quality_of(quality: FaceQuality) -> Quality:
    return Quality(
        size=quality.size,
        det_score=quality.det_score,
        sharpness=quality.sharpness,
        yaw_deg=quality.yaw_deg,
        pitch_deg=quality.pitch_deg,
        roll_deg=quality.roll_deg,
    )


def readable_name(name: object) -> str:
    """A stored name as text that always encodes: lone surrogates escaped, non-text shown as text."""
    if isinstance(name, bytes):  # SQLite is dynamically typed: a hand-written row may hold a BLOB
        name = name.decode("utf-8", "backslashreplace")
    text = name if isinstance(name, str) else str(name)
    if unicode_problem(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def readable_metadata(metadata: object) -> dict[str, Any]:
    """Stored metadata as is when it can be returned as JSON, else a marker object saying why not."""
    if not isinstance(metadata, dict):
        return {UNREADABLE_METADATA_KEY: f"stored metadata is a {type(metadata).__name__}, not an object"}
    reason = _unreturnable(metadata)
    if reason is None:
        return metadata
    return {UNREADABLE_METADATA_KEY: f"stored metadata can't be returned as JSON ({reason}); replace it"}


def _unreturnable(metadata: dict[str, Any]) -> str | None:
    """Why ``metadata`` can't be serialized as JSON, or None."""
    for path, value, depth in walk_json(metadata):
        if isinstance(value, dict | list) and depth > _MAX_RETURNED_DEPTH:
            return f"{path}: nested more than {_MAX_RETURNED_DEPTH} levels"
        if isinstance(value, dict):
            if any(not isinstance(key, str) or unicode_problem(key) is not None for key in value):
                return f"{path}: a key is not valid Unicode text"
        elif isinstance(value, str):
            if unicode_problem(value) is not None:
                return f"{path}: not valid Unicode"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{path}: {value} is not a JSON number"
        elif value is not None and not isinstance(value, int | list):
            return f"{path}: {type(value).__name__} is not a JSON value"
    return None


def subject_out(subject: Subject) -> SubjectOut:
    return SubjectOut(
        id=subject.id,
        name=readable_name(subject.name),
        metadata=readable_metadata(subject.metadata),
        face_count=subject.face_count,
        created_at=subject.created_at,
        updated_at=subject.updated_at,
        duplicate_name=subject.duplicate_name,
    )


def face_out(record: FaceRecord) -> FaceOut:
    return FaceOut(
        id=record.id,
        subject_id=record.subject_id,
        pack_id=record.pack_id,
        det_score=record.det_score,
        quality=_stored_quality(record.quality),
        created_at=record.created_at,
    )


def _stored_quality(quality: object) -> Quality | None:
    """The stored quality measures, or None when a row holds none (or none that still validates)."""
    if not quality:
        return None
    try:
        return Quality.model_validate(quality)
    except ValidationError:
        return None


def key_out(record: ApiKey) -> KeyOut:
    return KeyOut(
        id=record.id,
        name=readable_name(record.name),
        scopes=sorted(record.scopes),
        collections=_collections_out(record.collections),
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        active=record.active,
    )


def caller_key_out(key: CallerKey) -> CallerKeyOut:
    return CallerKeyOut(
        id=key.id,
        name=readable_name(key.name),
        scopes=sorted(key.scopes),
        collections=_collections_out(key.collections),
    )


def _collections_out(collections: frozenset[str] | None) -> list[str] | None:
    return None if collections is None else sorted(collections)


def threshold_out(threshold: ResolvedThreshold) -> ThresholdOut:
    return ThresholdOut(name=threshold.name, value=threshold.value)


def detect_response(result: DetectResult) -> DetectResponse:
    return DetectResponse(
        image=ImageSize(width=result.width, height=result.height),
        faces=[
            DetectedFaceOut(
                box=box_of(item.face),
                landmarks=landmarks_of(item.face),
                score=item.face.score,
                quality=quality_of(item.quality),
            )
            for item in result.faces
        ],
    )


def embed_response(result: EmbedResult) -> EmbedResponse:
    return EmbedResponse(
        pack_id=result.pack_id,
        embedding_size=result.embedding_size,
        faces=[
            EmbeddedFaceOut(box=box_of(face.face), score=face.face.score, embedding=face.embedding.tolist())
            for face in result.faces
        ],
    )


def compared_face_out(compared: verify.ComparedFace) -> ComparedFace:
    face = compared.face.face
    return ComparedFace(
        face_index=compared.index, faces_in_image=compared.faces_in_image, box=box_of(face), score=face.score
    )


def verify_response(result: verify.VerifyResult) -> VerifyResponse:
    subject = result.subject
    return VerifyResponse(
        mode=result.mode,
        similarity=result.similarity,
        threshold=threshold_out(result.threshold),
        match=result.match,
        face_a=compared_face_out(result.face_a),
        face_b=None if result.face_b is None else compared_face_out(result.face_b),
        subject=None if subject is None else SubjectRef(id=subject.id, name=readable_name(subject.name)),
    )


def candidate_out(candidate: Candidate) -> CandidateOut:
    return CandidateOut(
        subject_id=candidate.subject_id,
        name=readable_name(candidate.name),
        similarity=verify.cosine(candidate.similarity),
        face_id=candidate.face_id,
    )


def embedding_matches_response(matches: EmbeddingMatches) -> IdentifyEmbeddingResponse:
    return IdentifyEmbeddingResponse(
        threshold=threshold_out(matches.threshold),
        top_k=matches.top_k,
        unknown=not matches.candidates,
        candidates=[candidate_out(c) for c in matches.candidates],
    )


def identify_response(result: IdentifyResult) -> IdentifyResponse:
    return IdentifyResponse(
        threshold=threshold_out(result.threshold),
        top_k=result.top_k,
        faces=[
            IdentifiedFaceOut(
                box=box_of(item.face.face),
                score=item.face.face.score,
                unknown=not item.candidates,
                candidates=[candidate_out(c) for c in item.candidates],
            )
            for item in result.faces
        ],
    )


def enrollment_item(outcome: ImageOutcome) -> EnrollmentItem:
    rejection = outcome.rejection
    return EnrollmentItem(
        index=outcome.index,
        filename=outcome.filename,
        accepted=outcome.face_id is not None,
        face_id=outcome.face_id,
        rejection=None
        if rejection is None
        else RejectionOut.model_validate({"code": rejection.code, "detail": rejection.detail}),
    )


def enrollment_response(result: EnrollmentResult) -> EnrollmentResponse:
    return EnrollmentResponse(
        subject_id=result.subject_id,
        accepted=result.accepted,
        rejected=result.rejected,
        results=[enrollment_item(outcome) for outcome in result.outcomes],
    )


def info_response(info: ServiceInfo) -> InfoResponse:
    manifest = info.manifest
    return InfoResponse(
        pack_id=manifest.id,
        pack_description=manifest.description,
        embedding_size=manifest.embedding_size,
        embedder_input_size=manifest.chip_size,
        flip_augmentation=manifest.embedder.flip_augmentation,
        providers=info.providers,
        operating_points={
            name: OperatingPointOut(threshold=point.threshold, far=point.far, source=point.source)
            for name, point in sorted(manifest.calibration.operating_points.items())
        },
        threshold=threshold_out(info.threshold),
        subject_score=info.subject_score,
        gallery=GalleryInfo(
            subjects=info.gallery.subjects,
            faces=info.gallery.faces,
            index_type=info.index_kind,
            backend=info.backend,
            replication=replication_out(info.replication),
        ),
        auth_enabled=info.auth_enabled,
        collections=[CollectionRef(name=name, pack_id=pack_id) for name, pack_id in info.collections.items()],
    )


def collection_list(collections: list[CollectionInfo]) -> CollectionList:
    return CollectionList(
        collections=[
            CollectionOut(
                name=collection.name,
                pack_id=collection.pack_id,
                embedding_size=collection.embedding_size,
                threshold=threshold_out(collection.threshold),
                subjects=collection.gallery.subjects,
                faces=collection.gallery.faces,
            )
            for collection in collections
        ]
    )


def replication_out(status: ReplicationStatus | None) -> ReplicationOut | None:
    if status is None:
        return None
    return ReplicationOut(
        applied_seq=status.applied_seq,
        database_seq=status.database_seq,
        lag_changes=status.lag_changes,
        lag_s=round(status.lag_s, 3),
        following=status.following,
    )


def import_response(report: ImportReport) -> GalleryImportResponse:
    return GalleryImportResponse(
        source_pack_id=report.source_pack.pack_id,
        pack_id=report.pack.pack_id,
        subjects=report.subjects,
        faces=report.faces,
        reembedded=report.reembedded,
        skipped_subjects=report.skipped_subjects,
        skipped_faces=report.skipped_faces,
        skipped_without_crop=report.skipped_without_crop,
        new_subject_ids=report.new_subject_ids,
        new_face_ids=report.new_face_ids,
    )
