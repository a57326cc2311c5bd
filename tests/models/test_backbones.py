"""Backbones: every registered one trains and embeds; IResNet/MobileFaceNet match arcface_torch's layout."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.heads import build_head
from models.registry import backbone_entry, build_backbone, list_backbones

OURS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet")
Shape = tuple[int, ...]


# ---- the reference layouts, written from insightface's recognition/arcface_torch/backbones/*.py ----------


def _batchnorm(table: dict[str, Shape], prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        table[f"{prefix}.{name}"] = (channels,)
    table[f"{prefix}.num_batches_tracked"] = ()


def insightface_iresnet_layout(
    layers: tuple[int, int, int, int], num_features: int = 512
) -> dict[str, Shape]:
    """state_dict names → shapes of arcface_torch's IResNet (IBasicBlock, conv3x3/conv1x1, fc_scale 7*7)."""
    table: dict[str, Shape] = {"conv1.weight": (64, 3, 3, 3)}
    _batchnorm(table, "bn1", 64)
    table["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for index in range(blocks):
            block = f"layer{stage}.{index}"
            _batchnorm(table, f"{block}.bn1", inplanes)
            table[f"{block}.conv1.weight"] = (planes, inplanes, 3, 3)
            _batchnorm(table, f"{block}.bn2", planes)
            table[f"{block}.prelu.weight"] = (planes,)
            table[f"{block}.conv2.weight"] = (planes, planes, 3, 3)
            _batchnorm(table, f"{block}.bn3", planes)
            if index == 0:  # stride 2 on every stage: the first block always projects its shortcut
                table[f"{block}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                _batchnorm(table, f"{block}.downsample.1", planes)
            inplanes = planes
    _batchnorm(table, "bn2", 512)
    table["fc.weight"] = (num_features, 512 * 7 * 7)
    table["fc.bias"] = (num_features,)
    _batchnorm(table, "features", num_features)
    return table


def insightface_mbf_layout(num_features: int = 512) -> dict[str, Shape]:
    """state_dict names → shapes of arcface_torch's get_mbf(fp16, num_features): blocks (1, 4, 6, 2), ×2."""
    table: dict[str, Shape] = {}

    def conv_block(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1) -> None:
        table[f"{prefix}.layers.0.weight"] = (cout, cin // groups, kernel, kernel)
        _batchnorm(table, f"{prefix}.layers.1", cout)
        table[f"{prefix}.layers.2.weight"] = (cout,)

    def linear_block(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1) -> None:
        table[f"{prefix}.layers.0.weight"] = (cout, cin // groups, kernel, kernel)
        _batchnorm(table, f"{prefix}.layers.1", cout)

    def depthwise(prefix: str, cin: int, cout: int, groups: int) -> None:
        conv_block(f"{prefix}.layers.0", cin, groups, 1)
        conv_block(f"{prefix}.layers.1", groups, groups, 3, groups=groups)
        linear_block(f"{prefix}.layers.2", groups, cout, 1)

    def residual(prefix: str, channels: int, blocks: int, groups: int) -> None:
        for index in range(blocks):
            depthwise(f"{prefix}.layers.{index}", channels, channels, groups)

    conv_block("layers.0", 3, 128, 3)
    conv_block("layers.1", 128, 128, 3, groups=64)
    depthwise("layers.2", 128, 128, 128)
    residual("layers.3", 128, 4, 128)
    depthwise("layers.4", 128, 256, 256)
    residual("layers.5", 256, 6, 256)
    depthwise("layers.6", 256, 256, 512)
    residual("layers.7", 256, 2, 256)
    conv_block("conv_sep", 256, 512, 1)
    linear_block("features.layers.0", 512, 512, 7, groups=512)
    table["features.layers.2.weight"] = (num_features, 512)
    _batchnorm(table, "features.layers.3", num_features)
    return table


def _is_parameter(name: str) -> bool:
    return not name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _layout(model: nn.Module) -> dict[str, Shape]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _random_checkpoint(layout: dict[str, Shape], seed: int) -> dict[str, torch.Tensor]:
    """A checkpoint laid out like a published one (positive running_var, integer counters)."""
    generator = torch.Generator().manual_seed(seed)
    checkpoint = {}
    for name, shape in layout.items():
        if name.endswith("num_batches_tracked"):
            checkpoint[name] = torch.tensor(1000, dtype=torch.long)
        elif name.endswith("running_var"):
            checkpoint[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            checkpoint[name] = torch.randn(shape, generator=generator) * 0.05
    return checkpoint


# ---- registry --------------------------------------------------------------------------------------------


def test_our_backbones_are_registered_with_their_input_and_embedding() -> None:
    names = list_backbones()
    for name in OURS:
        assert name in names
        entry = backbone_entry(name)
        assert entry.input_size == (112, 112)
        assert entry.default_embedding_size == 512


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_trains_at_batch_2(name: str) -> None:
    torch.manual_seed(0)
    entry = backbone_entry(name)
    model = build_backbone(name).train()
    width, height = entry.input_size
    images = torch.randn(2, 3, height, width, requires_grad=True)
    embeddings = model(images)
    assert embeddings.shape == (2, entry.default_embedding_size)
    assert torch.isfinite(embeddings).all()
    embeddings.square().sum().backward()
    assert images.grad is not None
    assert images.grad.abs().sum() > 0
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for param_name, param in trainable:
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize(("name", "embedding_size"), [("iresnet18", 128), ("mobilefacenet", 128)])
def test_embedding_size_is_configurable(name: str, embedding_size: int) -> None:
    model = build_backbone(name, embedding_size=embedding_size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, embedding_size)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("iresnet50", {"dropout": 1.0}), ("mobilefacenet", {"embedding_size": 0})]
)
def test_invalid_options_are_rejected(name: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any clear ValueError is the contract
        build_backbone(name, **kwargs)


# ---- arcface_torch compatibility -------------------------------------------------------------------------


def test_iresnet50_state_dict_is_insightface_layout() -> None:
    model = build_backbone("iresnet50")
    expected = insightface_iresnet_layout((3, 4, 14, 3))
    assert _layout(model) == expected
    # A few entries spelled out, independently of the generator above.
    spot_checks = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.13.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.bias": (512,),
        "bn2.num_batches_tracked": (),
        "fc.weight": (512, 25088),
        "features.running_mean": (512,),
    }
    assert {key: expected[key] for key in spot_checks} == spot_checks
    assert "layer1.1.downsample.0.weight" not in expected
    parameters = sum(math.prod(shape) for name, shape in expected.items() if _is_parameter(name))
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert round(parameters / 1e6, 1) == 43.6  # the published size of r50 with a 512-d embedding


@pytest.mark.parametrize(("name", "layers"), [("iresnet18", (2, 2, 2, 2)), ("iresnet100", (3, 13, 30, 3))])
def test_other_iresnets_have_insightface_layout(name: str, layers: tuple[int, int, int, int]) -> None:
    assert _layout(build_backbone(name)) == insightface_iresnet_layout(layers)


@pytest.mark.parametrize("embedding_size", [128, 512])
def test_mobilefacenet_state_dict_is_insightface_mbf_layout(embedding_size: int) -> None:
    assert _layout(build_backbone("mobilefacenet", embedding_size=embedding_size)) == insightface_mbf_layout(
        embedding_size
    )


@pytest.mark.parametrize(
    ("name", "layout"),
    [("iresnet50", insightface_iresnet_layout((3, 4, 14, 3))), ("mobilefacenet", insightface_mbf_layout())],
)
def test_checkpoint_in_insightface_layout_loads_strict_and_round_trips(
    name: str, layout: dict[str, Shape]
) -> None:
    checkpoint = _random_checkpoint(layout, seed=1)
    model = build_backbone(name)
    model.load_state_dict(checkpoint, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in checkpoint.items())

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    twin = build_backbone(name)
    twin.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.eval()(images), twin.eval()(images))


def test_iresnet_embedding_bn_scale_is_frozen_at_one() -> None:
    model = build_backbone("iresnet18").train()
    features = model.features
    assert isinstance(features, nn.BatchNorm1d)
    assert not features.weight.requires_grad
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(torch.randn(2, 3, 112, 112)).sum().backward()
    optimizer.step()
    assert torch.equal(features.weight, torch.ones_like(features.weight))
    assert features.bias.grad is not None


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_fp16_flag_is_a_no_op_on_cpu(name: str) -> None:
    # Like arcface_torch, fp16 means CUDA autocast of the body; CPU tensors run in float32 either way.
    torch.manual_seed(0)
    plain = build_backbone(name).eval()
    mixed = build_backbone(name, fp16=True).eval()
    mixed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = mixed(images)
        assert out.dtype == torch.float32
        assert torch.equal(out, plain(images))


# ---- real faces ------------------------------------------------------------------------------------------


def _johns_chips(
    faces: Path, size: tuple[int, int], *, identities: int, per_identity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """dlib_johns chips resized to ``size`` (w, h), scaled to [-1, 1] as arcface_torch does; labels 0..n-1."""
    images, labels = [], []
    folders = sorted(p for p in (faces / "dlib_johns").iterdir() if p.is_dir())[:identities]
    for label, folder in enumerate(folders):
        for path in sorted(folder.glob("*.jpg"))[:per_identity]:
            rgb = Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR)
            images.append((np.asarray(rgb, dtype=np.float32) / 255.0 - 0.5) / 0.5)
            labels.append(label)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return batch, torch.tensor(labels)


def _estimate_batchnorm_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``images`` (one train-mode pass)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, exactly its statistics
    model.train()(images)


@pytest.mark.parametrize("name", list_backbones())
def test_eval_embeddings_of_real_faces_do_not_depend_on_the_batch(name: str, shared_faces: Path) -> None:
    # Serving embeds one face or many; in eval mode (running BN statistics) the result must be the same.
    torch.manual_seed(0)
    images, _ = _johns_chips(shared_faces, backbone_entry(name).input_size, identities=2, per_identity=1)
    model = build_backbone(name)
    with torch.no_grad():
        _estimate_batchnorm_statistics(model, images)  # an untrained net's defaults (0, 1) overflow deep ones
        together = model.eval()(images)
        alone = torch.cat([model(image[None]) for image in images])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)
    assert torch.linalg.matrix_rank(together) == len(images)  # distinct faces, distinct embeddings


@pytest.mark.slow
def test_mobilefacenet_with_arcface_learns_real_identities(shared_faces: Path) -> None:
    # ~20 s on 2 idle CPU cores: a few SGD steps must separate 5 real people (after BN re-estimation).
    torch.manual_seed(0)
    images, labels = _johns_chips(shared_faces, (112, 112), identities=5, per_identity=4)
    backbone = build_backbone("mobilefacenet", embedding_size=128).train()
    head = build_head("arcface", embedding_size=128, num_classes=5, s=32.0)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(head(backbone(images), labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        # Eight steps leave BN's running averages (momentum 0.1) stale: re-estimate them on the batch.
        _estimate_batchnorm_statistics(backbone, images)
        cosine = head.cosine(backbone.eval()(images))
    assert (cosine.argmax(dim=1) == labels).float().mean() >= 0.9
