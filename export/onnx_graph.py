"""Graph surgery on shipped ONNX files that changes no weight: inputs, batch axes, constant folding.

Used for models taken out of wheels as they are (SFace, YuNet): their graphs need fixing before ONNX
Runtime loads them or batches them, and the fixes must leave every computed value unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

# Ops whose outputs are folded into initializers when all their inputs are constants: the
# weight-dequantization chains of block-quantized files (DequantizeLinear → Reshape).
FOLDABLE_OPS = frozenset({"DequantizeLinear", "Reshape", "Cast", "Transpose", "Mul", "Add", "Sub"})


def keep_only_inputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Reduce the graph's declared inputs to ``names`` (files that list initializers and orphans)."""
    graph = model.graph
    known = {item.name: item for item in graph.input}
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"the graph has no inputs {missing}; it has {sorted(known)[:10]}...")
    kept = [known[name] for name in names]
    del graph.input[:]
    graph.input.extend(kept)
    return model


def set_dynamic_axes(
    model: onnx.ModelProto, *, inputs: dict[int, str], outputs: dict[int, str] | None = None
) -> None:
    """Make the given axes of every graph input and output symbolic (e.g. ``{0: "batch"}``)."""
    for items, axes in ((model.graph.input, inputs), (model.graph.output, outputs or {})):
        for item in items:
            dims = item.type.tensor_type.shape.dim
            for axis, symbol in axes.items():
                if axis < len(dims):
                    dims[axis].ClearField("dim_value")
                    dims[axis].dim_param = symbol
    # Stale intermediate shapes would contradict the new symbolic axes; ONNX Runtime re-infers them.
    del model.graph.value_info[:]


def fold_constant_nodes(model: onnx.ModelProto) -> int:
    """Replace nodes whose inputs are all initializers by initializers holding their outputs.

    Values are computed with ONNX's reference implementation, so a dequantized weight is exactly
    what the quantized graph computes at run time. Returns the number of nodes folded.
    """
    graph = model.graph
    constants = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    kept_nodes, folded = [], 0
    for node in graph.node:
        if node.op_type in FOLDABLE_OPS and node.input and all(name in constants for name in node.input):
            outputs = _evaluate(node, constants)
            constants.update(outputs)
            folded += 1
        else:
            kept_nodes.append(node)
    used = {name for node in kept_nodes for name in node.input} | {item.name for item in graph.output}
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items() if name in used
    )
    declared = {item.name for item in graph.initializer}
    inputs = [item for item in graph.input if item.name not in constants or item.name in declared]
    del graph.input[:]
    graph.input.extend(item for item in inputs if item.name not in declared)
    return folded


def _evaluate(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    results = ReferenceEvaluator(node).run(None, {name: constants[name] for name in node.input})
    return dict(zip(node.output, (np.asarray(value) for value in results), strict=True))
