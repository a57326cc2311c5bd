"""Manifests for insightface model packs placed locally (buffalo_l, antelopev2).

Roles come from known file tables, never from tensor shapes: each table names the detector and
the embedder file of a pack and the conventions insightface itself uses for them
(``insightface/model_zoo/scrfd.py``, ``arcface_onnx.py``, ``utils/face_align.py``; the embedders'
chips are ``service.packs.conventions.ARCFACE_112``). Only tensor *names* are read from the graphs,
in the model's output order. Other files of those packs (1k3d68, 2d106det, genderage) are ignored.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from service.packs.conventions import ARCFACE_112, ChipConvention
from service.packs.files import PackError, sha256_file, write_manifest
from service.packs.manifest import (
    Calibration,
    ColorOrder,
    DetectorSpec,
    EmbedderSpec,
    OperatingPoint,
    PackManifest,
    PixelNormalization,
    Provenance,
    ScrfdDecoder,
)

# SCRFD._prepare_input_blob: blobFromImage(img, 1/128, ..., mean 127.5, swapRB=True): RGB.
SCRFD_NORMALIZATION = PixelNormalization(
    color_order=ColorOrder.RGB, mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0)
)
SCRFD_STRIDES = (8, 16, 32)
SCRFD_INPUT_SIZE = (640, 640)  # insightface's det_size for these packs (FaceAnalysis.prepare)
INSIGHTFACE_LICENSE = (
    "non-commercial research use only (insightface model packs; "
    "see https://github.com/deepinsight/insightface#license)"
)
# Not measured here (no insightface weights offline): a provisional cosine threshold in the range
# commonly used with ArcFace models, to be replaced by `face-eval calibrate` on your data.
PROVISIONAL_ARCFACE_THRESHOLD = 0.3


@dataclass(frozen=True)
class InsightfacePackLayout:
    name: str
    detector_file: str
    detector_description: str
    embedder_file: str
    embedder_description: str
    embedding_size: int
    embedder_convention: ChipConvention = ARCFACE_112


INSIGHTFACE_PACKS: Mapping[str, InsightfacePackLayout] = MappingProxyType(
    {
        "buffalo_l": InsightfacePackLayout(
            name="buffalo_l",
            detector_file="det_10g.onnx",
            detector_description="SCRFD-10GF with keypoints",
            embedder_file="w600k_r50.onnx",
            embedder_description="ArcFace ResNet-50 trained on WebFace600K",
            embedding_size=512,
        ),
        "antelopev2": InsightfacePackLayout(
            name="antelopev2",
            detector_file="scrfd_10g_bnkps.onnx",
            detector_description="SCRFD-10GF (BN) with keypoints",
            embedder_file="glintr100.onnx",
            embedder_description="ArcFace ResNet-100 trained on Glint360K",
            embedding_size=512,
        ),
    }
)


@dataclass(frozen=True)
class MatchedLayout:
    """A known layout found in a folder; ``prefix`` is "" or the nested folder the zip unpacked to."""

    layout: InsightfacePackLayout
    prefix: str

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def detector_file(self) -> str:
        return self.prefix + self.layout.detector_file

    @property
    def embedder_file(self) -> str:
        return self.prefix + self.layout.embedder_file


def match_insightface_layout(pack_dir: Path) -> MatchedLayout | None:
    """The known pack whose detector and embedder files are in ``pack_dir`` (or ``pack_dir/<name>/``)."""
    for layout in INSIGHTFACE_PACKS.values():
        # antelopev2.zip unpacks into antelopev2/antelopev2/: accept that nesting too.
        for prefix in ("", f"{layout.name}/"):
            base = pack_dir / prefix if prefix else pack_dir
            if (base / layout.detector_file).is_file() and (base / layout.embedder_file).is_file():
                return MatchedLayout(layout, prefix)
    return None


def insightface_manifest(pack_dir: Path, matched: MatchedLayout) -> PackManifest:
    """The manifest of an insightface pack, from its file table and the graphs' tensor names."""
    layout = matched.layout
    det_path = pack_dir / matched.detector_file
    emb_path = pack_dir / matched.embedder_file
    det_input, det_outputs = _graph_io(det_path)
    emb_input, emb_outputs = _graph_io(emb_path)

    per_stride = len(SCRFD_STRIDES)
    if len(det_outputs) != 3 * per_stride:
        raise PackError(
            f"{matched.detector_file}: expected {3 * per_stride} outputs (scores, boxes, keypoints "
            f"for strides {SCRFD_STRIDES}) as in insightface's {layout.name}, found {len(det_outputs)}"
        )
    # SCRFD.forward reads outputs as [scores x strides, boxes x strides, keypoints x strides].
    outputs = tuple(
        (det_outputs[i], det_outputs[i + per_stride], det_outputs[i + 2 * per_stride])
        for i in range(per_stride)
    )
    if len(emb_outputs) != 1:
        raise PackError(
            f"{matched.embedder_file}: expected one output (the embedding), found {len(emb_outputs)}"
        )

    embedder_sha = sha256_file(emb_path)
    files = {matched.detector_file: sha256_file(det_path), matched.embedder_file: embedder_sha}
    pack_source = f"insightface model pack {layout.name!r}, placed locally"
    chips = layout.embedder_convention
    return PackManifest(
        id=f"insightface-{layout.name}-{embedder_sha[:8]}",
        description=(
            f"insightface {layout.name}: {layout.detector_description} + {layout.embedder_description} "
            f"({layout.embedding_size}-d). Manifest written from face-service's insightface file table."
        ),
        detector=DetectorSpec(
            file=matched.detector_file,
            input_name=det_input,
            fixed_input_size=SCRFD_INPUT_SIZE,
            normalization=SCRFD_NORMALIZATION,
            decoder=ScrfdDecoder(strides=SCRFD_STRIDES, anchors_per_location=2, outputs=outputs),
            score_threshold=0.5,  # insightface's det_thresh
            nms_threshold=0.4,
            provenance=Provenance(
                source=f"{pack_source}: {layout.detector_file}",
                license=INSIGHTFACE_LICENSE,
                notes=layout.detector_description,
            ),
        ),
        embedder=EmbedderSpec(
            file=matched.embedder_file,
            input_name=emb_input,
            output_name=emb_outputs[0],
            input_size=chips.input_size,
            normalization=chips.normalization,
            template=chips.template,
            template_derivation=chips.template_derivation,
            embedding_size=layout.embedding_size,
            flip_augmentation=False,  # insightface embeds the chip alone
            provenance=Provenance(
                source=f"{pack_source}: {layout.embedder_file}",
                license=INSIGHTFACE_LICENSE,
                notes=layout.embedder_description,
            ),
        ),
        calibration=Calibration(
            operating_points={
                "default": OperatingPoint(
                    threshold=PROVISIONAL_ARCFACE_THRESHOLD,
                    source="provisional, not measured on this pack: a typical ArcFace cosine threshold; "
                    "refine with `face-eval calibrate`",
                )
            }
        ),
        files=files,
        created_by="face-service insightface file table",
    )


def write_insightface_manifest(pack_dir: Path) -> Path:
    """Write ``manifest.json`` for the insightface pack in ``pack_dir``; ``PackError`` if none matches."""
    matched = match_insightface_layout(pack_dir)
    if matched is None:
        known = ", ".join(
            f"{lay.name} ({lay.detector_file} + {lay.embedder_file})" for lay in INSIGHTFACE_PACKS.values()
        )
        raise PackError(f"{pack_dir} holds no known insightface pack; known layouts: {known}")
    return write_manifest(pack_dir, insightface_manifest(pack_dir, matched))


def _graph_io(path: Path) -> tuple[str, list[str]]:
    """The first input name and all output names of an ONNX graph, in model order."""
    import onnxruntime as ort  # the service's runtime; imported lazily like the other heavy deps

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise PackError(f"{path.name}: not a loadable ONNX model ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PackError(f"{path.name}: expected one input, found {len(inputs)}")
    return inputs[0].name, [out.name for out in session.get_outputs()]
