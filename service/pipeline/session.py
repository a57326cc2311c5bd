"""The inference session the pipeline runs models on: a protocol, so no stage depends on a runtime.

Detectors and embedders take an ``InferenceSession``; ``service.pipeline.runtime`` makes the one
implementation (``OrtSession``, over onnxruntime) and is the only pipeline module that imports
onnxruntime. The names follow onnxruntime's own, so another runtime's adapter mirrors a familiar API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class TensorInfo(Protocol):
    """A model input or output: its name and shape (a dimension is an int, or a name/None when dynamic)."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int | str | None]: ...


class InferenceSession(Protocol):
    """A loaded model: what it takes and gives, where it runs, and one run."""

    def get_inputs(self) -> Sequence[TensorInfo]: ...

    def get_outputs(self) -> Sequence[TensorInfo]: ...

    def get_providers(self) -> list[str]:
        """Execution providers in use, best first (e.g. CUDA then CPU)."""
        ...

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[np.float32]]
    ) -> list[npt.NDArray[Any]]:
        """The named outputs, in ``output_names`` order, for one set of inputs (thread-safe)."""
        ...
