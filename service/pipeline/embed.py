"""The embedder: aligned chips → unit-length embeddings, as the pack's manifest prescribes.

Embeddings leaving the embedder are unit vectors; nothing downstream re-normalizes. The embedder
normalizes once (``l2_normalize``) and checks its output (``check_unit_rows``): a row that is not of
unit norm (a model that emits NaN, infinity or all zeros) is an ``EmbeddingOutputError``, never
passed on: the gallery and the scores trust the norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from service.packs.manifest import ColorOrder, EmbedderSpec
from service.pipeline.session import InferenceSession, TensorInfo
from service.pipeline.types import FloatArray, ImageArray

_NORM_EPS: Final = 1e-12
# How far from 1 a normalized float32 row's norm may be (rounding is ~1e-7; anything larger is a bug).
_UNIT_NORM_TOLERANCE: Final = 1e-4


class EmbeddingOutputError(RuntimeError):
    """The embedder model produced rows that cannot be unit vectors (NaN, infinity)."""


def l2_normalize(x: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Rows (or one vector) scaled to unit L2 norm, as float32; all-zero rows stay zero.

    The one normalization function of the codebase: the embedder, the gallery and the evaluation
    tools all call this, so similarities computed anywhere agree.
    """
    values = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    normalized: FloatArray = (values / np.maximum(norms, _NORM_EPS)).astype(np.float32, copy=False)
    return normalized


def check_unit_rows(embeddings: FloatArray, model: str) -> FloatArray:
    """``embeddings`` unchanged when every row has unit norm; else EmbeddingOutputError."""
    norms = np.linalg.norm(embeddings, axis=-1)
    # Written so that a NaN norm fails: NaN compares false with everything.
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= _UNIT_NORM_TOLERANCE))
    if bad.size:
        first = int(bad[0])
        raise EmbeddingOutputError(
            f"embedder model {model!r} produced {bad.size} of {len(norms)} embeddings that are not unit "
            f"vectors (row {first} has norm {norms[first]:.6g}); a nan norm means the model output NaN "
            "or infinite values, a norm of 0 an all-zero output"
        )
    return embeddings


def preprocess_chips(chips: Sequence[ImageArray], spec: EmbedderSpec) -> FloatArray:
    """RGB uint8 chips (H×W×3, the manifest's input size) → NCHW float32 in the model's colour order."""
    width, height = spec.input_size
    if not chips:
        return np.zeros((0, 3, height, width), dtype=np.float32)
    for i, chip in enumerate(chips):
        if chip.shape != (height, width, 3) or chip.dtype != np.uint8:
            raise ValueError(
                f"chip {i} is {chip.shape} {chip.dtype}; the embedder needs ({height}, {width}, 3) uint8 RGB"
            )
    batch = np.stack(chips).astype(np.float32)
    if spec.normalization.color_order is ColorOrder.BGR:
        batch = batch[..., ::-1]
    mean = np.asarray(spec.normalization.mean, dtype=np.float32)
    std = np.asarray(spec.normalization.std, dtype=np.float32)
    normalized = (batch - mean) / std
    nchw: FloatArray = np.ascontiguousarray(normalized.transpose(0, 3, 1, 2), dtype=np.float32)
    return nchw


class Embedder:
    """One session of the pack's embedder; ``embed`` is thread-safe (the session's ``run`` is)."""

    def __init__(
        self,
        session: InferenceSession,
        spec: EmbedderSpec,
        *,
        max_batch: int = 32,
        flip: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._session = session
        self._spec = spec
        # None: as the manifest says; face-eval may force it either way to measure flip TTA.
        self._flip = spec.flip_augmentation if flip is None else flip
        # A model exported with a fixed batch axis accepts exactly that many inputs per run.
        batch_dim = self._session_input(spec.input_name).shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self._max_batch = min(max_batch, self._fixed_batch) if self._fixed_batch else max_batch

    @property
    def spec(self) -> EmbedderSpec:
        return self._spec

    @property
    def embedding_size(self) -> int:
        return self._spec.embedding_size

    @property
    def flip(self) -> bool:
        """Whether each chip's mirror image is embedded too (flip test-time augmentation)."""
        return self._flip

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def embed(self, chips: Sequence[ImageArray]) -> FloatArray:
        """(N, D) float32 unit-norm embeddings, in the order of ``chips``; (0, D) for none.

        Raises ``EmbeddingOutputError`` when the model's output cannot be normalized (NaN, infinity).
        """
        outputs = [
            self._embed_batch(chips[start : start + self._max_batch])
            for start in range(0, len(chips), self._max_batch)
        ]
        if not outputs:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    def _embed_batch(self, chips: Sequence[ImageArray]) -> FloatArray:
        inputs = preprocess_chips(chips, self._spec)
        raw = self._run(inputs)
        if self._flip:
            # Mirror on the width axis: the same as embedding horizontally flipped chips.
            raw = raw + self._run(np.ascontiguousarray(inputs[..., ::-1]))
        return check_unit_rows(l2_normalize(raw), self._spec.file)

    def _run(self, inputs: FloatArray) -> FloatArray:
        count = inputs.shape[0]
        if self._fixed_batch and count < self._fixed_batch:
            padding = np.zeros((self._fixed_batch - count, *inputs.shape[1:]), dtype=np.float32)
            inputs = np.concatenate([inputs, padding], axis=0)
        (output,) = self._session.run([self._spec.output_name], {self._spec.input_name: inputs})
        embeddings = np.asarray(output, dtype=np.float32).reshape(output.shape[0], -1)[:count]
        if embeddings.shape[1] != self._spec.embedding_size:
            raise RuntimeError(
                f"embedder output {self._spec.output_name!r} has {embeddings.shape[1]} values per face; "
                f"the manifest says embedding_size={self._spec.embedding_size}"
            )
        return embeddings

    def _session_input(self, name: str) -> TensorInfo:
        for node in self._session.get_inputs():
            if node.name == name:
                return node
        names = [node.name for node in self._session.get_inputs()]
        raise ValueError(f"the embedder model has no input {name!r} (inputs: {names}); check the manifest")
