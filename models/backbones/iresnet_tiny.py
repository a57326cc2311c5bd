"""``iresnet_tiny``: a narrow, shallow IResNet for small data sets and CPU-budget experiments.

The IResNet of ``iresnet.py`` (``IBasicBlock`` stages, BN-Dropout-FC-BN embedding head) with one block
per stage, stage widths 16/32/64/128, a 64×64 input (a 4×4 map entering ``fc``) and Kaiming
initialisation (IResNet's N(0, 0.1) is tuned for 64+ channels): 0.57 M parameters and 36 M
multiply-adds per image.
"""

from __future__ import annotations

from models.backbones.iresnet import IResNet
from models.registry import register_backbone

INPUT_SIZE = (64, 64)  # (width, height)


@register_backbone(
    "iresnet_tiny",
    input_size=INPUT_SIZE,
    default_embedding_size=128,
    description="IResNet blocks at widths 16-128, one block per stage, 64×64 input (small data, CPU)",
)
def iresnet_tiny(*, embedding_size: int = 128, dropout: float = 0.0, fp16: bool = False) -> IResNet:
    return IResNet(
        (1, 1, 1, 1),
        embedding_size=embedding_size,
        dropout=dropout,
        fp16=fp16,
        stage_widths=(16, 32, 64, 128),
        input_size=INPUT_SIZE[0],
        conv_init_std=None,
    )
