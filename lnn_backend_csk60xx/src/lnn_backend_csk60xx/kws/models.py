"""The keyword networks (torch). Each entry of :data:`MODELS` builds one float model for ``(N, 1, 49, 10)`` MFCC
inputs and 12 class scores; the demo runs the same flow on each (the CRNN joins once the GRU op family exists).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["build_dscnn", "MODELS"]


def build_dscnn(n_classes: int = 12, width: int = 64, blocks: int = 4) -> Any:
    """A depthwise-separable CNN in the style of "Hello Edge" DS-CNN-S.

    A 5x3 convolution with stride 2 (the chip's kernels stop at 5 per axis; Hello Edge used 10x4) takes the 49x10
    MFCC to ``width`` x 25 x 5; then ``blocks`` times a 3x3 depthwise and a 1x1 pointwise convolution, each with
    batch norm and ReLU; global average pooling and one linear layer. 64 channels and 4 blocks: about 23k
    parameters and 2.8 M multiply-adds per second of audio; every activation is 8,000 bytes in int8.
    """
    import torch
    from torch import nn

    class DSCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(1, width, (5, 3), stride=2, padding=(2, 1))
            self.bn0 = nn.BatchNorm2d(width)
            self.dw = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(blocks))
            self.dw_bn = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(blocks))
            self.pw = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(blocks))
            self.pw_bn = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(blocks))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, n_classes)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.bn0(self.conv0(x)))
            for dw, dw_bn, pw, pw_bn in zip(self.dw, self.dw_bn, self.pw, self.pw_bn, strict=True):
                x = torch.relu(dw_bn(dw(x)))
                x = torch.relu(pw_bn(pw(x)))
            return self.fc(self.pool(x).flatten(1))

    return DSCNN()


MODELS: dict[str, Callable[[], Any]] = {"dscnn": build_dscnn}
