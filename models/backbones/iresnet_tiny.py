"""``iresnet_tiny``: a narrow, shallow IResNet for small data sets and CPU-budget experiments.

Same building blocks as IResNet (``IBasicBlock``, BN-Dropout-FC-BN embedding head) with one block per
stage, stage widths 16/32/64/128 and a 64×64 input (4×4 map entering ``fc``): 0.57 M
parameters and 36 M multiply-adds per image. Importing this module
registers it (``models.registry.build_backbone("iresnet_tiny")``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from models.backbones.iresnet import IBasicBlock
from models.registry import register_backbone

INPUT_SIZE = (64, 64)  # (width, height)
_STAGE_WIDTHS = (16, 32, 64, 128)
_FINAL_MAP = INPUT_SIZE[0] // 2 ** len(_STAGE_WIDTHS)
_BN_EPS = 1e-5


class TinyIResNet(nn.Module):
    """conv3×3 stem, four stride-2 ``IBasicBlock`` stages, then BN → dropout → FC → BatchNorm1d."""

    def __init__(self, *, embedding_size: int = 128, dropout: float = 0.0, fp16: bool = False) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        stem = _STAGE_WIDTHS[0]
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=_BN_EPS)
        self.prelu = nn.PReLU(stem)
        widths = (stem, *_STAGE_WIDTHS)
        self.stages = nn.Sequential(
            *(IBasicBlock(widths[i], widths[i + 1], stride=2) for i in range(len(_STAGE_WIDTHS)))
        )
        last = _STAGE_WIDTHS[-1]
        self.bn2 = nn.BatchNorm2d(last, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(last * _FINAL_MAP * _FINAL_MAP, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming for the narrow convolutions (IResNet's N(0, 0.1) is tuned for 64+ channels).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # As in IResNet: the embedding BN keeps a unit scale, only its shift trains.
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_amp = self.fp16 and x.is_cuda
        body_precision = torch.autocast(device_type="cuda") if use_amp else contextlib.nullcontext()
        with body_precision:
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.bn2(self.stages(x))
            x = self.dropout(torch.flatten(x, 1))
        x = self.fc(x.float() if use_amp else x)
        return self.features(x)


@register_backbone(
    "iresnet_tiny",
    input_size=INPUT_SIZE,
    default_embedding_size=128,
    description="IResNet blocks at widths 16-128, one block per stage, 64×64 input (small data, CPU)",
)
def iresnet_tiny(*, embedding_size: int = 128, dropout: float = 0.0, fp16: bool = False) -> TinyIResNet:
    return TinyIResNet(embedding_size=embedding_size, dropout=dropout, fp16=fp16)
