"""PReLU as ``Max(z, slope·z)``: the same values, about 5× less time in ONNX Runtime's CPU kernels.

ONNX Runtime's ``PRelu`` kernel is a generic broadcast loop: in SFace it took more time than all 27
convolutions together (15.6 of 29 ms per face, one thread). ``Max(y, s·y)`` equals ``PRelu(y)`` for
every channel whose slope is ≤ 1. A channel with a slope > 1 takes ``Min`` instead, written as
``−Max(−y, −s·y)``: the producer's output for that channel is negated (its BatchNormalization's γ and
β) and the consumer undoes it (the next convolution's input slice, or the next BatchNormalization's γ
and mean). Negation is exact in floating point, so the rewritten graph computes the same numbers.

Handles chains ``BatchNormalization → PRelu → (Conv | BatchNormalization)``, the form of SFace and
MobileFaceNet-style graphs; a PReLU in any other position is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class PreluRewrite:
    """What ``rewrite_prelu_as_max`` did."""

    rewritten: int
    kept: int
    flipped_channels: int


def rewrite_prelu_as_max(model: onnx.ModelProto) -> PreluRewrite:
    """Rewrite every PReLU of a ``BatchNormalization → PRelu → Conv|BatchNormalization`` chain in place."""
    graph = model.graph
    weights = {item.name: numpy_helper.to_array(item).copy() for item in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    flipped = 0
    for position, node in enumerate(graph.node):
        if node.op_type != "PRelu" or not _rewritable(node, producers, consumers, weights):
            continue
        signs = np.where(weights[node.input[1]].reshape(-1) > 1.0, -1.0, 1.0).astype(np.float32)
        if np.any(signs < 0):
            _negate_batchnorm_output(producers[node.input[0]], signs, weights)
            for consumer in consumers[node.output[0]]:
                _undo_negation_in(consumer, signs, weights)
            flipped += int(np.sum(signs < 0))
        replacements[position] = _max_nodes(node)
    _replace_nodes(graph, replacements)
    _store_weights(graph, weights)
    prelus = sum(1 for node in graph.node if node.op_type == "PRelu")
    return PreluRewrite(rewritten=len(replacements), kept=prelus, flipped_channels=flipped)


def _rewritable(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    weights: dict[str, np.ndarray],
) -> bool:
    producer = producers.get(node.input[0])
    if producer is None or producer.op_type != "BatchNormalization" or node.input[1] not in weights:
        return False
    if len(consumers.get(node.input[0], [])) != 1:  # the negated BN output must feed only this PReLU
        return False
    followers = consumers.get(node.output[0], [])
    return bool(followers) and all(_can_undo_negation(follower, weights) for follower in followers)


def _can_undo_negation(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> bool:
    if node.op_type == "BatchNormalization":
        return all(name in weights for name in node.input[1:5])
    if node.op_type != "Conv" or node.input[1] not in weights:
        return False
    groups = _attribute(node, "group", 1)
    kernel = weights[node.input[1]]
    return groups == 1 or (groups == kernel.shape[0] and kernel.shape[1] == 1)  # plain or depthwise


def _negate_batchnorm_output(node: onnx.NodeProto, signs: np.ndarray, weights: dict[str, np.ndarray]) -> None:
    for name in (node.input[1], node.input[2]):  # γ and β: BN'(y) = −BN(y) where signs < 0
        weights[name] = weights[name] * signs.reshape(weights[name].shape)


def _undo_negation_in(node: onnx.NodeProto, signs: np.ndarray, weights: dict[str, np.ndarray]) -> None:
    if node.op_type == "BatchNormalization":
        for name in (node.input[1], node.input[3]):  # γ and the mean: BN'(−r) = BN(r)
            weights[name] = weights[name] * signs.reshape(weights[name].shape)
        return
    kernel = weights[node.input[1]]
    if _attribute(node, "group", 1) == 1:
        weights[node.input[1]] = kernel * signs.reshape(1, -1, 1, 1)  # input channels
    else:
        weights[node.input[1]] = kernel * signs.reshape(-1, 1, 1, 1)  # depthwise: one kernel per channel


def _max_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    scaled = f"{node.output[0]}__slope_times_input"
    base = node.name or node.output[0]  # node names are optional; output names are unique
    return [
        helper.make_node("Mul", [node.input[0], node.input[1]], [scaled], name=f"{base}__mul"),
        helper.make_node("Max", [node.input[0], scaled], [node.output[0]], name=f"{base}__max"),
    ]


def _replace_nodes(graph: onnx.GraphProto, replacements: dict[int, list[onnx.NodeProto]]) -> None:
    nodes: list[onnx.NodeProto] = []
    for position, node in enumerate(graph.node):
        nodes.extend(replacements.get(position, [node]))
    del graph.node[:]
    graph.node.extend(nodes)


def _store_weights(graph: onnx.GraphProto, weights: dict[str, np.ndarray]) -> None:
    for item in graph.initializer:
        dtype = numpy_helper.to_array(item).dtype
        item.CopyFrom(numpy_helper.from_array(weights[item.name].astype(dtype), item.name))


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(helper.get_attribute_value(attribute))
    return default
