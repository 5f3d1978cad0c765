"""The keyword networks (torch). Each entry of :data:`MODELS` builds one float model for ``(N, 1, 49, 10)`` MFCC
inputs; the DS-CNN gives the 12 class scores of the clip ``(N, 12)``, the CRNN gives them for every step of two
frames ``(N, T // 2, 12)`` and its last step is the clip's decision (:data:`FRAMES_PER_STEP`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["build_dscnn", "build_crnn", "build_crnn_step", "MODELS", "FRAMES_PER_STEP", "STEP_MODELS"]


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


def build_crnn(n_classes: int = 12, channels: int = 32, hidden: int = 64, *, step_io: bool = False) -> Any:
    """A convolutional recurrent network that streams: convolutions on 40 ms of features, a GRU over time, a
    classifier at every step.

    Input ``(N, 1, T, 10)`` (T frames of 10 MFCC, 20 ms apart; 49 for a 1 s clip), output ``(N, T // 2, 12)``:
    class scores every two frames (40 ms). The first convolution (``(1, 3)`` kernel) sees one frame, the second
    (``(2, 3)`` kernel, stride 2 in time and along the coefficients) two frames that no other step sees; each
    with batch norm and ReLU: ``channels`` x 5 values per step become the GRU's sequence (``batch_first``,
    ``hidden`` units), and one linear layer scores every step. A 1 s clip's 49th frame falls outside the last
    step (0.96 s).

    Why this shape: no convolution window overlaps two steps, so the whole model is the same function of (two
    new frames, GRU state) at every step: running it on a whole clip, or two frames at a time with the state
    carried, gives the same numbers, and streaming needs neither a buffer of past frames nor a second model; time
    is the GRU's alone. The last step's scores are the clip's decision (what training optimizes, see the demo),
    and in a stream each step's scores are the posterior of what was just said (:mod:`.stream`). The stride 2
    halves the GRU's steps (25 per second), which is most of the training time. 32 channels, 64 units: about 47k
    parameters (the GRU's three gates hold 43k of them).

    ``step_io=True`` (:func:`build_crnn_step`) builds the same network whose ``forward`` is :meth:`step`:
    ``(frames, h) -> (scores, h_n)``, the state an input and an output.
    """
    import torch
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels // 2, (1, 3), padding=(0, 1))
            self.bn1 = nn.BatchNorm2d(channels // 2)
            self.conv2 = nn.Conv2d(channels // 2, channels, (2, 3), stride=(2, 2), padding=(0, 1))
            self.bn2 = nn.BatchNorm2d(channels)
            self.gru = nn.GRU(channels * 5, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, n_classes)

        def features(self, x: Any) -> Any:
            """``(N, 1, T, 10)`` -> the GRU's input ``(N, T, channels * 5)``."""
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return x.permute(0, 2, 1, 3).flatten(2)

        def forward(self, x: Any) -> Any:
            y, _ = self.gru(self.features(x))
            return self.fc(y)

        def step(self, x: Any, h: Any = None) -> tuple[Any, Any]:
            """Frames ``(N, 1, t, 10)`` (t even) and the GRU state ``(1, N, hidden)`` (None: zeros) -> scores
            ``(N, t // 2, 12)`` and the new state: :meth:`forward` in pieces, for streaming the float model."""
            y, h = self.gru(self.features(x), h)
            return self.fc(y), h

    class CRNNStep(CRNN):
        """The CRNN whose forward is one streaming step: what is exported to stream on the simulator."""

        def forward(self, x: Any, h: Any) -> tuple[Any, Any]:  # type: ignore[override]
            return self.step(x, h)

    return CRNNStep() if step_io else CRNN()


def build_crnn_step(**kwargs: Any) -> Any:
    """The CRNN (:func:`build_crnn`, same parameters and ``state_dict`` keys) with ``forward(frames, h) ->
    (scores, h_n)``: frames ``(N, 1, t, 10)``, the GRU state ``h`` and ``h_n`` ``(1, N, hidden)``. Quantized by
    ``lnn.init`` and loaded with the whole model's QAT weights, it exports as a graph whose GRU reads its initial
    state from a graph input and writes its final state to a graph output: a model the simulator streams
    (``Simulator.stream``) and a device runs frame by frame."""
    return build_crnn(**kwargs, step_io=True)


MODELS: dict[str, Callable[[], Any]] = {"dscnn": build_dscnn, "crnn": build_crnn}
FRAMES_PER_STEP = {"crnn": 2}
"""The models that score a clip step by step ``(N, steps, 12)``, and the frames of one step; the clip's scores are
those of its last step."""
STEP_MODELS: dict[str, Callable[[], Any]] = {"crnn": build_crnn_step}
"""The streaming form of each step-by-step model: its state an input and an output (:func:`build_crnn_step`)."""
