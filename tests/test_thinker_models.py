"""Thinker packages of trained-side models run in lnn's simulator (decoded into lnn's IR) exactly like model.bin
and like eval: ReLU6, transposed convs, depthwise convs, a conv split above 32 KB, Conv1d, linear layers.

The same models ran bit-exact in the vendor's x86 ``test_thinker`` (lnn_backend_csk60xx/benchmarks/
thinker_crosscheck.py, which needs the vendor build and is not part of CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.thinker.package import decode


class _ReLU6Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(nn.functional.relu6(self.c1(x)))))


class _DeconvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.d = nn.ConvTranspose2d(6, 3, 2, stride=2)

    def forward(self, x):
        return self.d(torch.relu(self.c(x)))


class _SplitNet(nn.Module):  # 64 -> 96 3x3: 72 KB of aligned kernel, split into 3 convs and an iqCat
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(64, 96, 3, padding=1)
        self.fc = nn.Linear(96 * 2 * 2, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c(x)), 1))


class _Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 5, padding=2, groups=8)
        self.p = nn.AvgPool1d(2)

    def forward(self, x):
        return self.p(self.c2(torch.relu(self.c1(x))))


CASES = {"relu6-depthwise": (_ReLU6Net, (1, 3, 8, 8)), "deconv": (_DeconvNet, (1, 2, 8, 8)),
         "split": (_SplitNet, (1, 64, 2, 2)), "conv1d": (_Conv1dNet, (1, 4, 16))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_thinker_package_runs_like_model_bin_and_eval(case, host, tmp_path):
    factory, shape = CASES[case]
    torch.manual_seed(0)
    model = lnn.init(factory(), host=host)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape))
    model.eval()
    x = torch.randn(shape)
    path = tmp_path / f"{case}.onnx"
    lnn.export(model, x, path, host=host)
    graph = read_onnx(path)
    report = check_graph(graph, package_format="thinker")
    assert report.ok, report.table()
    res = pack_graph(graph, package_format="thinker")
    pkg = decode(res.blob)
    weight_ops = [op for op in pkg.ops if op.type in ("Conv2dInt", "Conv1dInt", "ConvTranspose2dInt", "LinearInt")]
    assert len(pkg.dma) == len(weight_ops) and all(op.temps for op in weight_ops)
    if case == "split":
        assert res.passes.splits and "iqCat" in {op.type for op in pkg.ops}
    on_pkg, on_bin = Simulator(res.blob), Simulator(pack_graph(graph).blob)
    for k in range(3):
        xi = torch.randn(shape) * (1 + k)
        (a,), (b,) = on_pkg.run([xi.numpy()]), on_bin.run([xi.numpy()])
        assert np.array_equal(a, b)
        with torch.no_grad():
            assert np.array_equal(a, model(xi).numpy())
