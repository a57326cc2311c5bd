"""dlib's face-recognition ResNet (``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``) in PyTorch.

The network behind ``dlib_face_recognition_resnet_model_v1``: a 7×7/2 convolution and a 3×3/2 max
pool, then 14 residual blocks in five stages (32, 64, 128, 256, 256 channels; every stage after the
first starts with a downsampling block), a global average pool and a bias-free 128-d fully connected
layer. Input: a 150×150 RGB chip already normalized as ``(pixel − mean) / 256``; output: the raw
descriptor (not L2-normalized; dlib compares raw descriptors by Euclidean distance < 0.6).

Two dlib conventions differ from the usual PyTorch ResNet and are reproduced here:

- padding: dlib's ``con_``/``max_pool_`` pad by ``kernel // 2`` only when the stride is 1 and do
  not pad at all otherwise (:func:`dlib_padding`);
- residual sums: ``add_prev`` outputs the larger of each dimension and zero-fills the smaller input
  at the end of the channel and spatial axes (``DlibResidualBlock.forward``). The downsampling shortcut is
  a 2×2/2 average pool without a projection, so its extra channels are zeros; and on an even-sized
  input the unpadded strided convolution's map is one pixel smaller than the pooled one (8×8 in:
  3×3 vs 4×4; 4×4 in: 1×1 vs 2×2), so the convolution branch gets a zero row and column.

dlib trains with batch norm and swaps it for a per-channel ``affine_`` layer at inference; here each
is a ``BatchNorm2d``, whose eval-mode transform is that affine (``export/dlib_convert.py`` loads it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_backbone

INPUT_SIZE = (150, 150)  # (width, height): input_rgb_image_sized<150>
EMBEDDING_SIZE = 128
BN_EPS = 1e-5  # dlib's DEFAULT_BATCH_NORM_EPS
STEM_WIDTH = 32
# (channels, blocks, stride of the first block), input side first: alevel4 .. alevel0.
STAGES: tuple[tuple[int, int, int], ...] = ((32, 3, 1), (64, 4, 2), (128, 3, 2), (256, 3, 2), (256, 1, 2))


def dlib_padding(kernel: int, stride: int) -> int:
    """dlib's default padding for ``con_``/``max_pool_``: ``stride != 1 ? 0 : kernel / 2``."""
    return 0 if stride != 1 else kernel // 2


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    # dlib's (and PyTorch's) output size of a convolution or pooling window.
    return (size + 2 * padding - kernel) // stride + 1


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    padding = dlib_padding(3, stride)
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=padding, bias=True)


class DlibResidualBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: relu(add_prev(BN(con(relu(BN(con/stride(x))))), shortcut(x)))."""

    def __init__(self, in_channels: int, channels: int, stride: int, in_size: tuple[int, int]) -> None:
        """``in_size`` (height, width) of the block's input fixes the zero-fill of a downsampling block."""
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a dlib residual block has stride 1 or 2, got {stride}")
        if in_channels > channels or (stride == 1 and in_channels != channels):
            raise ValueError(f"dlib's blocks keep or widen the channels: {in_channels} -> {channels}")
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        # ares_down's shortcut: avg_pool<2,2,2,2> (no padding since the stride is 2), no projection.
        self.downsample: nn.AvgPool2d | None = nn.AvgPool2d(kernel_size=2, stride=2) if stride == 2 else None
        self.extra_channels = channels - in_channels  # zero channels add_prev gives the shortcut
        # add_prev also zero-fills space: the 3×3/2 unpadded convolution is never larger than the
        # 2×2/2 pool (floor((n-3)/2) <= floor((n-2)/2)) and one smaller when n is even. Fixed here
        # from the geometry, so the forward pass (and an ONNX trace) has no shape arithmetic; another
        # input size fails loudly at the sum instead of being padded wrongly.
        self.out_size = in_size
        self.spatial_pad = (0, 0)
        if stride == 2:
            conv_size = tuple(_out_size(n, 3, 2, 0) for n in in_size)
            if min(conv_size) < 1:
                raise ValueError(f"a {in_size[1]}×{in_size[0]} map is too small to downsample")
            self.out_size = (_out_size(in_size[0], 2, 2, 0), _out_size(in_size[1], 2, 2, 0))
            self.spatial_pad = (self.out_size[0] - conv_size[0], self.out_size[1] - conv_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.downsample is None:
            return self.relu(out + x)
        # add_prev: each dimension is the larger of the two, the smaller input is zero-filled at the
        # end of the axis (the shortcut's channels, the convolution's bottom row and right column).
        shortcut = self.downsample(x)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        if any(self.spatial_pad):
            out = F.pad(out, (0, self.spatial_pad[1], 0, self.spatial_pad[0]))
        return self.relu(out + shortcut)


class DlibResNet(nn.Module):
    """The dlib face ResNet: NCHW normalized RGB in, raw (un-normalized) descriptor out."""

    def __init__(
        self,
        stages: Sequence[tuple[int, int, int]] = STAGES,
        *,
        input_size: tuple[int, int] = INPUT_SIZE,
        embedding_size: int = EMBEDDING_SIZE,
        dropout: float = 0.0,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        if not stages or min(blocks for _, blocks, _ in stages) < 1:
            raise ValueError(f"need at least one stage of >= 1 block, got {list(stages)}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, kernel_size=7, stride=2, padding=dlib_padding(7, 2), bias=True)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=dlib_padding(3, 2))
        width, height = input_size
        size = (height, width)
        for kernel in (7, 3):  # conv1, then maxpool, both stride 2 and unpadded
            size = (_out_size(size[0], kernel, 2, 0), _out_size(size[1], kernel, 2, 0))
        if min(size) < 1:
            raise ValueError(f"input {input_size} is too small for the 7×7/2 stem and 3×3/2 pool")
        blocks: list[DlibResidualBlock] = []
        in_channels = STEM_WIDTH
        for channels, num_blocks, stride in stages:
            for index in range(num_blocks):
                block = DlibResidualBlock(in_channels, channels, stride if index == 0 else 1, size)
                blocks.append(block)
                in_channels, size = channels, block.out_size
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(p=dropout)  # not in dlib's network; 0 (identity) by default
        self.fc = nn.Linear(in_channels, embedding_size, bias=False)  # fc_no_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in the other backbones, fp16 means CUDA autocast over the convolutional body only.
        use_amp = self.fp16 and x.is_cuda
        body_precision = torch.autocast(device_type="cuda") if use_amp else contextlib.nullcontext()
        with body_precision:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.blocks(x)
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # avg_pool_everything
        x = self.dropout(x.float())
        return self.fc(x)


@register_backbone(
    "dlib_resnet",
    input_size=INPUT_SIZE,
    default_embedding_size=EMBEDDING_SIZE,
    description="dlib's face ResNet (dlib_face_recognition_resnet_model_v1 architecture), 150×150 → 128",
)
def dlib_resnet(
    *, embedding_size: int = EMBEDDING_SIZE, dropout: float = 0.0, fp16: bool = False
) -> DlibResNet:
    return DlibResNet(embedding_size=embedding_size, dropout=dropout, fp16=fp16)
