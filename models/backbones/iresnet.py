"""IResNet-18/34/50/100 (ArcFace's "improved" ResNet), key-compatible with insightface's arcface_torch.

The module tree reproduces ``recognition/arcface_torch/backbones/iresnet.py`` name for name and shape for
shape, so a published arcface_torch ``backbone.pth`` loads with ``load_state_dict(strict=True)``:
``conv1, bn1, prelu, layer1..layer4`` (``IBasicBlock``: ``bn1, conv1, bn2, prelu, conv2, bn3`` and
``downsample.0`` / ``downsample.1`` on the first block of each stage), ``bn2, dropout, fc, features``.
Input: 112×112 RGB; the 7×7 map after four stride-2 stages is flattened into ``fc``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from models.registry import register_backbone

_INPUT_SIZE = (112, 112)
_STAGE_WIDTHS = (64, 128, 256, 512)
_BN_EPS = 1e-5


def cuda_autocast_if(enabled: bool, x: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """arcface_torch's fp16: CUDA autocast over a backbone's body, a no-op for CPU tensors."""
    return torch.autocast(device_type="cuda") if enabled and x.is_cuda else contextlib.nullcontext()


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3 (stride here) → BN, plus the (projected) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        # A 1×1 projection only where the shape changes; insightface names it downsample.0/.1.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """The IResNet trunk and its BN-Dropout-FC-BN embedding head ("option E" of the ArcFace paper)."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        stage_widths: Sequence[int] = _STAGE_WIDTHS,
        input_size: int = _INPUT_SIZE[0],
        conv_init_std: float | None = 0.1,
    ) -> None:
        """``stage_widths``, ``input_size`` and ``conv_init_std`` default to arcface_torch's IResNet;
        ``conv_init_std=None`` uses Kaiming initialisation (better for narrow variants)."""
        super().__init__()
        if len(stage_widths) != 4 or len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError(f"need 4 stages of >= 1 block, got {list(blocks_per_stage)}")
        final_map = input_size // 2 ** len(stage_widths)
        if final_map < 1 or final_map * 2 ** len(stage_widths) != input_size:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        self._conv_init_std = conv_init_std
        stem_width = stage_widths[0]
        self.conv1 = _conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=_BN_EPS)
        self.prelu = nn.PReLU(stem_width)
        in_channels = stem_width
        stages = []
        for width, num_blocks in zip(stage_widths, blocks_per_stage, strict=True):
            stages.append(_make_stage(in_channels, width, num_blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(in_channels * final_map * final_map, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # The original's initialisation: N(0, 0.1) convolutions, unit/zero BatchNorm2d.
        std = self._conv_init_std
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_conv(module, std)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The embedding BN keeps its scale at 1 (only the shift trains), as in arcface_torch.
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mixed precision covers the convolutional body only; fc and the embedding BN run in float32.
        # Like the original, fp16 means CUDA autocast, a no-op for CPU tensors.
        use_amp = self.fp16 and x.is_cuda
        with cuda_autocast_if(self.fp16, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.to(self.fc.weight.dtype) if use_amp else x)
        return self.features(x)


def _init_conv(conv: nn.Conv2d, std: float | None) -> None:
    if std is None:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    else:
        nn.init.normal_(conv.weight, 0.0, std)


def _make_stage(in_channels: int, channels: int, num_blocks: int) -> nn.Sequential:
    # Every stage halves the resolution in its first block (insightface: stride 2 on all four stages).
    blocks = [IBasicBlock(in_channels, channels, stride=2)]
    blocks += [IBasicBlock(channels, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


@register_backbone(
    "iresnet18",
    input_size=_INPUT_SIZE,
    default_embedding_size=512,
    description="IResNet-18 (arcface_torch r18), [2, 2, 2, 2] blocks",
)
def iresnet18(*, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> IResNet:
    return IResNet((2, 2, 2, 2), embedding_size=embedding_size, dropout=dropout, fp16=fp16)


@register_backbone(
    "iresnet34",
    input_size=_INPUT_SIZE,
    default_embedding_size=512,
    description="IResNet-34 (arcface_torch r34), [3, 4, 6, 3] blocks",
)
def iresnet34(*, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> IResNet:
    return IResNet((3, 4, 6, 3), embedding_size=embedding_size, dropout=dropout, fp16=fp16)


@register_backbone(
    "iresnet50",
    input_size=_INPUT_SIZE,
    default_embedding_size=512,
    description="IResNet-50 (arcface_torch r50), [3, 4, 14, 3] blocks",
)
def iresnet50(*, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> IResNet:
    return IResNet((3, 4, 14, 3), embedding_size=embedding_size, dropout=dropout, fp16=fp16)


@register_backbone(
    "iresnet100",
    input_size=_INPUT_SIZE,
    default_embedding_size=512,
    description="IResNet-100 (arcface_torch r100), [3, 13, 30, 3] blocks",
)
def iresnet100(*, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> IResNet:
    return IResNet((3, 13, 30, 3), embedding_size=embedding_size, dropout=dropout, fp16=fp16)
