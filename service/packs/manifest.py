"""The model-pack contract (``manifest.json``).

A pack declares everything the service needs to run its models: nothing is guessed from tensor
shapes. The export step writes it; the service reads and verifies it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION: Literal[1] = 1


class ColorOrder(StrEnum):
    RGB = "RGB"
    BGR = "BGR"


class LandmarkConvention(StrEnum):
    # Five points in image coordinates, in this order: left eye centre, right eye centre, nose tip,
    # left mouth corner, right mouth corner ("left" = smaller x in an upright, unmirrored image).
    # This is the order of RetinaFace, SCRFD and insightface's ArcFace template.
    FIVE_POINT = "5pt:eye_l,eye_r,nose,mouth_l,mouth_r"


Point = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Strict):
    source: str  # where the weights came from (package and file, or URL)
    license: str
    notes: str = ""


class PixelNormalization(_Strict):
    """``(pixel - mean) / std`` per channel, channels in ``color_order``, pixels in [0, 255]."""

    color_order: ColorOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class RetinaFaceDecoder(_Strict):
    """RetinaFace-style priors (SSD anchors) and box/landmark decoding."""

    kind: Literal["retinaface"] = "retinaface"
    steps: tuple[int, ...] = (8, 16, 32)
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    variances: tuple[float, float] = (0.1, 0.2)
    output_names: tuple[str, str, str] = ("loc", "conf", "landmarks")  # boxes, scores, 5 points
    scores_softmaxed: bool = True  # conf is [background, face] after softmax


class ScrfdDecoder(_Strict):
    """SCRFD distance-to-bbox decoding, one (score, bbox, kps) output triple per stride."""

    kind: Literal["scrfd"] = "scrfd"
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_location: int = 2
    # Output names per stride, in model order: (scores, bbox distances, keypoint offsets).
    outputs: tuple[tuple[str, str, str], ...]


class YuNetDecoder(_Strict):
    """YuNet (OpenCV zoo, 2023mar): anchor-free, one location per cell, score = sqrt(cls · obj).

    Per stride s and cell (row r, col c): centre ((c + dx)·s, (r + dy)·s), size (exp(dw)·s, exp(dh)·s),
    keypoint k at ((c + kx_k)·s, (r + ky_k)·s); cls and obj are already sigmoided. This is OpenCV's
    ``FaceDetectorYN`` decoding (``modules/objdetect/src/face_detect.cpp``).
    """

    kind: Literal["yunet"] = "yunet"
    strides: tuple[int, ...] = (8, 16, 32)
    # Output names per stride, in model order: (cls, obj, bbox, kps).
    outputs: tuple[tuple[str, str, str, str], ...] = (
        ("cls_8", "obj_8", "bbox_8", "kps_8"),
        ("cls_16", "obj_16", "bbox_16", "kps_16"),
        ("cls_32", "obj_32", "bbox_32", "kps_32"),
    )


Decoder = Annotated[RetinaFaceDecoder | ScrfdDecoder | YuNetDecoder, Field(discriminator="kind")]


class DetectorSpec(_Strict):
    role: Literal["detector"] = "detector"
    file: str
    input_name: str
    # Fixed (width, height) the model must be fed, or None when its spatial axes are dynamic.
    fixed_input_size: tuple[int, int] | None = None
    input_size_multiple: int = 32  # a dynamic input is padded to a multiple of this
    normalization: PixelNormalization
    decoder: Decoder
    landmark_convention: LandmarkConvention = LandmarkConvention.FIVE_POINT
    score_threshold: float = Field(0.6, gt=0.0, lt=1.0)  # recommended; settings may override
    nms_threshold: float = Field(0.4, gt=0.0, lt=1.0)
    provenance: Provenance


class TemplateDerivation(_Strict):
    """How an alignment template was obtained (recorded so it can be reproduced)."""

    method: str
    data: str = ""
    samples: int = 0
    residual_px: float | None = None  # mean landmark error of the fit, in input pixels


class EmbedderSpec(_Strict):
    role: Literal["embedder"] = "embedder"
    file: str
    input_name: str
    output_name: str
    input_size: tuple[int, int]  # (width, height) of the aligned chip
    normalization: PixelNormalization
    # Where the five landmarks (``landmark_convention`` order) land on the chip, in input pixels.
    template: tuple[Point, Point, Point, Point, Point]
    template_derivation: TemplateDerivation
    landmark_convention: LandmarkConvention = LandmarkConvention.FIVE_POINT
    embedding_size: int = Field(gt=0)
    flip_augmentation: bool = False  # embed chip and mirror, sum, then L2-normalize
    fp16_file: str | None = None
    provenance: Provenance


class EnsembleMember(_Strict):
    embedder: EmbedderSpec
    weight: float = Field(gt=0.0)  # multiplies the member's unit embedding before concatenation


class EnsembleSpec(_Strict):
    """Several embedders, one embedding: the weighted concatenation of their unit embeddings, normalized.

    The cosine of two such embeddings is ``Σ w_i² cos_i / Σ w_i²``, so one inner-product search serves
    1:1 and 1:N. The pipeline aligns each face once onto ``crop_template`` at ``crop_size`` (a crop
    large enough for every member) and each member's chip is cut from that crop by its own template.
    """

    crop_size: tuple[int, int]
    crop_template: tuple[Point, Point, Point, Point, Point]
    members: tuple[EnsembleMember, ...] = Field(min_length=2)
    procedure: str = ""  # how the weights were chosen, and what they gave

    @property
    def embedding_size(self) -> int:
        return sum(member.embedder.embedding_size for member in self.members)


class OperatingPoint(_Strict):
    """A cosine-similarity threshold with where it came from."""

    threshold: float = Field(ge=-1.0, le=1.0)
    far: float | None = None  # the false-accept rate it was calibrated for, if any
    source: str = ""  # data set / procedure


class Calibration(_Strict):
    """Recommended thresholds on cosine similarity; ``default`` must exist."""

    operating_points: dict[str, OperatingPoint]
    probability: dict[str, float] | None = None  # optional logistic fit {"a": .., "b": ..}

    @model_validator(mode="after")
    def _has_default(self) -> Calibration:
        if "default" not in self.operating_points:
            raise ValueError("calibration needs an operating point named 'default'")
        return self


class PackManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # pins galleries to this pack
    description: str = ""
    detector: DetectorSpec
    embedder: EmbedderSpec  # the only embedder, or an ensemble's first member
    ensemble: EnsembleSpec | None = None
    calibration: Calibration
    files: dict[str, str]  # relative file name -> sha256 hex, for every file the pack ships
    created_by: str = ""

    @property
    def embedders(self) -> tuple[EmbedderSpec, ...]:
        if self.ensemble is None:
            return (self.embedder,)
        return tuple(member.embedder for member in self.ensemble.members)

    @property
    def chip_size(self) -> tuple[int, int]:
        """(width, height) of what the pipeline aligns each face to."""
        return self.embedder.input_size if self.ensemble is None else self.ensemble.crop_size

    @property
    def chip_template(self) -> tuple[Point, Point, Point, Point, Point]:
        return self.embedder.template if self.ensemble is None else self.ensemble.crop_template

    @property
    def embedding_size(self) -> int:
        return self.embedder.embedding_size if self.ensemble is None else self.ensemble.embedding_size

    @model_validator(mode="after")
    def _files_listed(self) -> PackManifest:
        if self.ensemble is not None and self.ensemble.members[0].embedder != self.embedder:
            raise ValueError("an ensemble's first member must be the pack's embedder")
        needed = {self.detector.file}
        for embedder in self.embedders:
            needed.add(embedder.file)
            if embedder.fp16_file:
                needed.add(embedder.fp16_file)
        missing = needed - set(self.files)
        if missing:
            raise ValueError(f"files referenced but not listed with a sha256: {sorted(missing)}")
        for name in self.files:
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                raise ValueError(f"pack file name escapes the pack folder: {name!r}")
        return self
