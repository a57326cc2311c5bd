"""PReLU → Max(y, slope·y): the rewritten graph computes the same numbers, whatever the slopes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.prelu_rewrite import rewrite_prelu_as_max

CHANNELS = 8


def _chain(slopes: list[np.ndarray], last: str) -> onnx.ModelProto:
    """x → [Conv → BN → PRelu] × len(slopes), the second conv depthwise, ending in ``last`` (Conv | BN)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    name = "x"

    def init(label: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), label))
        return label

    for i, slope in enumerate(slopes):
        depthwise = i % 2 == 1
        in_channels = 3 if i == 0 else CHANNELS
        kernel_shape = (CHANNELS, 1, 3, 3) if depthwise else (CHANNELS, in_channels, 3, 3)
        conv_attrs = {"pads": [1, 1, 1, 1], "group": CHANNELS if depthwise else 1}
        w = init(f"w{i}", rng.normal(size=kernel_shape))
        nodes.append(helper.make_node("Conv", [name, w], [f"c{i}"], name=f"conv{i}", **conv_attrs))
        bn = [init(f"{p}{i}", v) for p, v in _bn_params(rng)]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"b{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("PRelu", [f"b{i}", init(f"s{i}", slope.reshape(-1, 1, 1))], [f"p{i}"]))
        name = f"p{i}"
    if last == "Conv":
        w = init("w_last", rng.normal(size=(4, CHANNELS, 1, 1)))
        nodes.append(helper.make_node("Conv", [name, w], ["y"], name="conv_last"))
    else:
        bn = [init(f"{p}_last", v) for p, v in _bn_params(rng)]
        nodes.append(helper.make_node("BatchNormalization", [name, *bn], ["y"], name="bn_last"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, ["n", 4 if last == "Conv" else CHANNELS, 16, 16]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _bn_params(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    return [
        ("g", rng.normal(size=CHANNELS)),
        ("be", rng.normal(size=CHANNELS)),
        ("m", rng.normal(size=CHANNELS)),
        ("v", rng.uniform(0.5, 2.0, size=CHANNELS)),
    ]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


SLOPE_SETS = {
    "all below 1": [np.linspace(0.05, 0.9, CHANNELS), np.linspace(0.1, 0.3, CHANNELS)],
    "some above 1": [np.linspace(-0.8, 1.6, CHANNELS), np.linspace(0.5, 2.5, CHANNELS)],
    "negative and exactly 1": [
        np.array([-2.0, -0.5, 0.0, 1.0, 1.0, 0.25, 3.0, 0.99]),
        np.full(CHANNELS, 1.5),
    ],
}


@pytest.mark.parametrize("last", ["Conv", "BatchNormalization"])
@pytest.mark.parametrize("slopes", list(SLOPE_SETS.values()), ids=list(SLOPE_SETS))
def test_rewrite_computes_the_same_numbers(slopes: list[np.ndarray], last: str) -> None:
    model = _chain(slopes, last)
    x = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    before = _run(model, x)
    report = rewrite_prelu_as_max(model)
    onnx.checker.check_model(model)
    assert report.rewritten == len(slopes)
    assert report.kept == 0
    assert report.flipped_channels == sum(int(np.sum(s > 1.0)) for s in slopes)
    assert not any(node.op_type == "PRelu" for node in model.graph.node)
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_prelu_in_an_unknown_position_is_kept() -> None:
    # PRelu straight on the input (no BatchNormalization before it): not rewritable, left alone.
    slope = numpy_helper.from_array(np.full((3, 1, 1), 1.5, dtype=np.float32), "s")
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "s"], ["y"])],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [slope],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = rewrite_prelu_as_max(model)
    assert (report.rewritten, report.kept) == (0, 1)
