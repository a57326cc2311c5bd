"""MobileFaceNet, key-compatible with insightface's arcface_torch ``mbf`` (``get_mbf``).

Module names follow ``recognition/arcface_torch/backbones/mobilefacenet.py`` (blocks (1, 4, 6, 2), width
scale 2): ``layers.0..7`` (conv blocks, depthwise bottlenecks, residual stacks), ``conv_sep`` and the
global depthwise head ``features`` (``layers.0`` 7×7 depthwise conv + BN, ``layers.2`` linear,
``layers.3`` BatchNorm1d), so an arcface_torch ``mbf`` checkpoint loads with ``strict=True``.
Input: 112×112 RGB.
"""

from __future__ import annotations

import torch
from torch import nn

from models.backbones.iresnet import cuda_autocast_if
from models.registry import register_backbone

_INPUT_SIZE = (112, 112)
_WIDTH_SCALE = 2  # arcface_torch's get_mbf default
_BLOCKS = (1, 4, 6, 2)  # residual bottlenecks per stage (the first entry 1 = a plain depthwise conv)
_HEAD_CHANNELS = 512
_FINAL_MAP = 7  # 112 / 2**4


class ConvBlock(nn.Module):
    """conv → BN → PReLU (``layers.0/1/2``); without ``activation`` the linear bottleneck projection
    (``layers.0/1``, arcface_torch's ``LinearBlock``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int,
        padding: int,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.PReLU(out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1×1 expand to ``expanded`` → depthwise 3×3 (stride) → 1×1 linear projection."""

    def __init__(
        self, in_channels: int, out_channels: int, *, expanded: int, stride: int, residual: bool
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual bottleneck keeps its shape (stride 1, in == out channels)")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_channels, expanded, kernel=1, stride=1, padding=0),
            ConvBlock(expanded, expanded, kernel=3, stride=stride, padding=1, groups=expanded),
            ConvBlock(expanded, out_channels, kernel=1, stride=1, padding=0, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


class Residual(nn.Module):
    """A stack of shape-preserving residual bottlenecks (``layers.<i>``)."""

    def __init__(self, channels: int, *, num_blocks: int, expanded: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(
                DepthWise(channels, channels, expanded=expanded, stride=1, residual=True)
                for _ in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: 7×7 depthwise conv + BN → flatten → linear → BatchNorm1d."""

    def __init__(self, embedding_size: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(
                _HEAD_CHANNELS,
                _HEAD_CHANNELS,
                kernel=_FINAL_MAP,
                stride=1,
                padding=0,
                groups=_HEAD_CHANNELS,
                activation=False,
            ),
            # Index 1 holds no parameters in the original (Flatten), so dropout can live here keylessly.
            nn.Sequential(nn.Flatten(), nn.Dropout(p=dropout)),
            nn.Linear(_HEAD_CHANNELS, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al., 2018) at arcface_torch's width (scale 2) with a 512-channel GDC head."""

    def __init__(self, *, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        c64, c128 = 64 * _WIDTH_SCALE, 128 * _WIDTH_SCALE
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, c64, kernel=3, stride=2, padding=1),
                # groups=64 (not depthwise at scale 2) exactly as the original.
                ConvBlock(c64, c64, kernel=3, stride=1, padding=1, groups=64),
                DepthWise(c64, c64, expanded=128, stride=2, residual=False),
                Residual(c64, num_blocks=_BLOCKS[1], expanded=128),
                DepthWise(c64, c128, expanded=256, stride=2, residual=False),
                Residual(c128, num_blocks=_BLOCKS[2], expanded=256),
                DepthWise(c128, c128, expanded=512, stride=2, residual=False),
                Residual(c128, num_blocks=_BLOCKS[3], expanded=256),
            ]
        )
        self.conv_sep = ConvBlock(c128, _HEAD_CHANNELS, kernel=1, stride=1, padding=0)
        self.features = GDC(embedding_size, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # The original's initialisation (Kaiming fan-out for conv and linear, unit/zero BatchNorm2d).
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in arcface_torch: CUDA autocast over the body only when fp16 (a no-op for CPU tensors).
        use_amp = self.fp16 and x.is_cuda
        with cuda_autocast_if(self.fp16, x):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float() if use_amp else x)
        return self.features(x)


@register_backbone(
    "mobilefacenet",
    input_size=_INPUT_SIZE,
    default_embedding_size=512,
    description="MobileFaceNet (arcface_torch mbf, width ×2, GDC head); 128-d also common",
)
def mobilefacenet(*, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False) -> MobileFaceNet:
    return MobileFaceNet(embedding_size=embedding_size, dropout=dropout, fp16=fp16)
