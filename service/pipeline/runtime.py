"""ONNX Runtime sessions: which execution providers to ask for, strict device checks, and the adapter.

``create_session`` returns an ``OrtSession``, the one implementation of the pipeline's
``InferenceSession`` protocol; this is the only pipeline module that imports onnxruntime.

A service told to run on CUDA must not quietly run on the CPU (latency would drop ~20× with no
visible cause), so ``device=cuda`` fails at start when CUDA is missing. ``device=auto`` may fall
back, but the providers a session really uses are always reported (``session.get_providers()``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.pipeline.session import InferenceSession, TensorInfo
from service.settings import ExecutionDevice

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# What onnxruntime accepts in ``providers=``: a name, or (name, options).
ProviderSpec = str | tuple[str, dict[str, str]]


class RuntimeUnavailableError(RuntimeError):
    """The configured device or provider cannot be used (raised at start, never silently ignored)."""


@dataclass(frozen=True)
class RuntimeOptions:
    device: ExecutionDevice = ExecutionDevice.AUTO
    tensorrt: bool = False  # opt-in: TensorRT ahead of CUDA (long first-run engine builds)
    intra_op_threads: int = 0  # 0: os.cpu_count()
    inter_op_threads: int = 1
    tensorrt_cache_dir: Path | None = None  # built engines are cached here across restarts
    cuda_device_id: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        return cls(
            device=settings.device,
            tensorrt=settings.tensorrt,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            tensorrt_cache_dir=settings.models_dir / ".tensorrt-cache",
        )

    @property
    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or (os.cpu_count() or 1)


def select_providers(options: RuntimeOptions, available: Sequence[str] | None = None) -> list[ProviderSpec]:
    """Providers to request, best first: TensorRT (opt-in) → CUDA → CPU.

    ``available`` defaults to ``ort.get_available_providers()``; tests pass a fake list.
    Raises ``RuntimeUnavailableError`` when ``device=cuda`` (or TensorRT with it) is not available.
    """
    offered = list(ort.get_available_providers() if available is None else available)
    if options.device is ExecutionDevice.CPU:
        if options.tensorrt:
            raise RuntimeUnavailableError("FACE_TENSORRT=true needs FACE_DEVICE=cuda or auto, not cpu")
        return [CPU]

    cuda_offered = CUDA in offered
    if options.device is ExecutionDevice.CUDA and not cuda_offered:
        raise RuntimeUnavailableError(
            "FACE_DEVICE=cuda but onnxruntime offers no CUDAExecutionProvider "
            f"(available: {', '.join(offered) or 'none'}); install onnxruntime-gpu with a matching "
            "CUDA, or set FACE_DEVICE=auto/cpu"
        )
    if not cuda_offered:  # auto without CUDA: the CPU, said out loud (latency is ~20× a GPU's)
        logger.warning(
            "FACE_DEVICE=auto: onnxruntime offers no %s (available: %s); running on the CPU "
            "(install onnxruntime-gpu for CUDA, or set FACE_DEVICE=cpu to silence this)",
            CUDA,
            ", ".join(offered) or "none",
        )
        if options.tensorrt:
            logger.warning("FACE_TENSORRT=true ignored: no CUDA provider available (device=auto)")
        return [CPU]

    providers: list[ProviderSpec] = []
    if options.tensorrt:
        if TENSORRT not in offered:
            message = (
                f"FACE_TENSORRT=true but onnxruntime offers no {TENSORRT} (available: {', '.join(offered)})"
            )
            if options.device is ExecutionDevice.CUDA:
                raise RuntimeUnavailableError(message)
            logger.warning("%s; continuing with CUDA", message)
        else:
            providers.append((TENSORRT, _tensorrt_options(options)))
    providers.append((CUDA, {"device_id": str(options.cuda_device_id)}))
    providers.append(CPU)
    return providers


def _tensorrt_options(options: RuntimeOptions) -> dict[str, str]:
    trt: dict[str, str] = {"device_id": str(options.cuda_device_id), "trt_fp16_enable": "True"}
    if options.tensorrt_cache_dir is not None:
        trt["trt_engine_cache_enable"] = "True"
        trt["trt_engine_cache_path"] = str(options.tensorrt_cache_dir)
    return trt


def provider_names(providers: Sequence[ProviderSpec]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


class OrtSession:
    """``InferenceSession`` over an ``onnxruntime.InferenceSession`` (whose ``run`` is thread-safe)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def get_inputs(self) -> Sequence[TensorInfo]:
        inputs: list[TensorInfo] = self._session.get_inputs()
        return inputs

    def get_outputs(self) -> Sequence[TensorInfo]:
        outputs: list[TensorInfo] = self._session.get_outputs()
        return outputs

    def get_providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[np.float32]]
    ) -> list[npt.NDArray[Any]]:
        return [np.asarray(output) for output in self._session.run(list(output_names), dict(feeds))]


def create_session(path: Path | str, options: RuntimeOptions) -> InferenceSession:
    """An inference session with explicit threads, full graph optimization and checked providers."""
    providers = select_providers(options)
    if options.tensorrt_cache_dir is not None and TENSORRT in provider_names(providers):
        options.tensorrt_cache_dir.mkdir(parents=True, exist_ok=True)

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.resolved_intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if options.inter_op_threads == 1 else ort.ExecutionMode.ORT_PARALLEL
    )
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)

    in_use = session.get_providers()
    # onnxruntime-gpu falls back to the CPU with only a log line when CUDA libraries fail to load.
    if options.device is ExecutionDevice.CUDA and CUDA not in in_use:
        raise RuntimeUnavailableError(
            f"FACE_DEVICE=cuda but the session for {Path(path).name} runs on {in_use}: "
            "the CUDA provider failed to load (check CUDA/cuDNN versions against onnxruntime-gpu)"
        )
    if options.device is ExecutionDevice.CUDA and options.tensorrt and TENSORRT not in in_use:
        raise RuntimeUnavailableError(
            f"FACE_TENSORRT=true but the session for {Path(path).name} runs on {in_use}"
        )
    requested = provider_names(providers)
    if in_use[0] != requested[0]:
        logger.warning("session for %s asked for %s, runs on %s", Path(path).name, requested, in_use)
    return OrtSession(session)
