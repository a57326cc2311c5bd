"""Execution providers: selection order, strict CUDA, and sessions that report what they run on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.pipeline.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    OrtSession,
    RuntimeOptions,
    RuntimeUnavailableError,
    create_session,
    provider_names,
    select_providers,
)
from service.settings import ExecutionDevice, Settings

GPU_BUILD = [TENSORRT, CUDA, CPU]


def test_auto_prefers_cuda_then_cpu() -> None:
    chosen = select_providers(RuntimeOptions(device=ExecutionDevice.AUTO), available=GPU_BUILD)
    assert provider_names(chosen) == [CUDA, CPU]


def test_auto_without_cuda_runs_on_cpu() -> None:
    chosen = select_providers(
        RuntimeOptions(device=ExecutionDevice.AUTO), available=["AzureExecutionProvider", CPU]
    )
    assert provider_names(chosen) == [CPU]


NO_CUDA_BUILDS = [
    [CPU],
    ["AzureExecutionProvider", CPU],
    [TENSORRT, CPU],  # TensorRT without CUDA is unusable: still the CPU
    ["OpenVINOExecutionProvider", "DnnlExecutionProvider", CPU],
    [],
]


@pytest.mark.parametrize("available", NO_CUDA_BUILDS, ids=lambda a: "+".join(a) or "none")
@pytest.mark.parametrize("tensorrt", [False, True])
def test_auto_falling_back_to_cpu_warns(
    available: list[str], tensorrt: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="service.pipeline.runtime")
    options = RuntimeOptions(device=ExecutionDevice.AUTO, tensorrt=tensorrt)
    assert select_providers(options, available=available) == [CPU]
    fallbacks = [r for r in caplog.records if "FACE_DEVICE=auto" in r.getMessage()]
    assert len(fallbacks) == 1
    assert fallbacks[0].levelname == "WARNING"
    assert "running on the CPU" in fallbacks[0].getMessage()
    assert (", ".join(available) or "none") in fallbacks[0].getMessage()


@pytest.mark.parametrize(
    ("device", "available"),
    [(ExecutionDevice.AUTO, GPU_BUILD), (ExecutionDevice.AUTO, [CUDA, CPU]), (ExecutionDevice.CPU, [CPU]),
     (ExecutionDevice.CPU, GPU_BUILD), (ExecutionDevice.CUDA, [CUDA, CPU])],
)  # fmt: skip
def test_no_fallback_warning_when_nothing_falls_back(
    device: ExecutionDevice, available: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="service.pipeline.runtime")
    select_providers(RuntimeOptions(device=device), available=available)
    assert not [r for r in caplog.records if "FACE_DEVICE=auto" in r.getMessage()]


def test_tensorrt_is_opt_in_and_goes_first() -> None:
    options = RuntimeOptions(device=ExecutionDevice.CUDA, tensorrt=True, tensorrt_cache_dir=Path("/tmp/trt"))
    chosen = select_providers(options, available=GPU_BUILD)
    assert provider_names(chosen) == [TENSORRT, CUDA, CPU]
    trt_options = dict(chosen[0][1]) if isinstance(chosen[0], tuple) else {}
    assert trt_options["trt_engine_cache_path"] == "/tmp/trt"


def test_cuda_required_but_absent_fails_at_start() -> None:
    with pytest.raises(RuntimeUnavailableError, match="FACE_DEVICE=cuda"):
        select_providers(RuntimeOptions(device=ExecutionDevice.CUDA), available=[CPU])


def test_tensorrt_required_with_cuda_but_absent_fails() -> None:
    with pytest.raises(RuntimeUnavailableError, match="TENSORRT"):
        select_providers(RuntimeOptions(device=ExecutionDevice.CUDA, tensorrt=True), available=[CUDA, CPU])


def test_tensorrt_with_auto_and_no_tensorrt_falls_back_to_cuda() -> None:
    chosen = select_providers(
        RuntimeOptions(device=ExecutionDevice.AUTO, tensorrt=True), available=[CUDA, CPU]
    )
    assert provider_names(chosen) == [CUDA, CPU]


def test_cpu_device_ignores_gpu_providers_and_rejects_tensorrt() -> None:
    assert select_providers(RuntimeOptions(device=ExecutionDevice.CPU), available=GPU_BUILD) == [CPU]
    with pytest.raises(RuntimeUnavailableError):
        select_providers(RuntimeOptions(device=ExecutionDevice.CPU, tensorrt=True), available=GPU_BUILD)


def test_options_from_settings_resolve_threads() -> None:
    options = RuntimeOptions.from_settings(Settings(device="cpu", intra_op_threads=0, inter_op_threads=2))
    assert options.device is ExecutionDevice.CPU
    assert options.resolved_intra_op_threads >= 1
    assert options.inter_op_threads == 2
    assert RuntimeOptions(intra_op_threads=3).resolved_intra_op_threads == 3


def _doubling_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_cpu_session_runs_and_reports_its_providers(tmp_path: Path) -> None:
    session = create_session(
        _doubling_model(tmp_path / "double.onnx"), RuntimeOptions(device=ExecutionDevice.CPU)
    )
    assert isinstance(session, OrtSession)  # the pipeline's InferenceSession, not onnxruntime's
    assert session.get_providers() == [CPU]
    assert [(node.name, list(node.shape)) for node in session.get_inputs()] == [("x", ["n", 4])]
    assert [node.name for node in session.get_outputs()] == ["y"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], 2 * x)


def test_only_the_runtime_module_imports_onnxruntime_in_the_pipeline() -> None:
    # Detectors and embedders take the InferenceSession protocol; the ORT adapter is the one seam.
    import ast

    pipeline = Path(__file__).resolve().parents[2] / "service" / "pipeline"
    importers = set()
    for path in pipeline.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "onnxruntime" for name in names):
                importers.add(path.name)
    assert importers == {"runtime.py"}


def test_strict_cuda_session_fails_on_a_cpu_only_machine(tmp_path: Path) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeUnavailableError):
        create_session(_doubling_model(tmp_path / "double.onnx"), RuntimeOptions(device=ExecutionDevice.CUDA))


@pytest.mark.gpu
def test_cuda_session_runs_on_cuda(tmp_path: Path) -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime offers no CUDAExecutionProvider here")
    session = create_session(
        _doubling_model(tmp_path / "double.onnx"), RuntimeOptions(device=ExecutionDevice.CUDA)
    )
    assert session.get_providers()[0] == CUDA
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], 2 * x)
