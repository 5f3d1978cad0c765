"""Thinker packages of trained-side models run in lnn's simulator (decoded into lnn's IR) exactly like model.bin
and like eval: ReLU6, transposed convs, depthwise convs, a conv split above 32 KB, Conv1d, linear layers, sigmoid and
tanh, layer norm, pools, batch norm, concatenation, slices, two inputs and two outputs, attention (softmax, BmmInt),
a log-softmax, GRU and LSTM layers (a bidirectional GRU) and a CRNN.

The same models ran bit-exact in the vendor's x86 ``test_thinker`` (lnn_backend_csk60xx/benchmarks/
thinker_crosscheck.py, which needs the vendor build and is not part of CI), except those with a softmax: the vendor's
x86 build cannot run SoftmaxInt / LogSoftmaxInt (its HiFi library is not public)."""

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


class _GatedNet(nn.Module):  # sigmoid and tanh (Requant to int16 first), a product of two branches
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.a(x)) * torch.tanh(self.b(x))


class _SeqNet(nn.Module):  # linear layers and a layer norm on [N, T, D]
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 16)
        self.ln = nn.LayerNorm(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.ln(self.fc(x)))


class _PoolNet(nn.Module):  # batch norm, max and average pools, a concatenation of two exponents
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mp = nn.MaxPool2d(2)
        self.ap = nn.AvgPool2d(2)

    def forward(self, x):
        return torch.cat([self.mp(torch.relu(self.bn(self.c(x)))), self.ap(x)], 1)


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x, y):
        a = self.a(x)
        return a + self.b(y), torch.relu(a)


class _SliceNet(nn.Module):  # a slice of rows, flatten, unsqueeze
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c(x)[:, :, 1:5, :].flatten(1).unsqueeze(1)


class _GroupedNet(nn.Module):  # grouped convs (2-D and 1-D): one conv per group on a slice of the channels
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.m = nn.Conv2d(12, 24, 1, groups=12)  # depthwise with a channel multiplier

    def forward(self, x):
        return self.m(torch.relu(self.c(x)))


class _CroppedDeconvNet(nn.Module):  # pads that reach the kernel: computed with smaller pads, then cropped
    def __init__(self) -> None:
        super().__init__()
        self.d = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=(3, 2))

    def forward(self, x):
        return self.d(x)


class _Batched4dNet(nn.Module):  # a layer norm and a linear on [N, C, H, W], N = 2: leading axes merged
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(4, 4, 1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        return self.fc(self.ln(self.c(x)))


class _AttentionNet(nn.Module):  # softmax and two BmmInt per head (the vendor x86 build cannot run the softmax)
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln = nn.LayerNorm(16)

    def forward(self, x):
        return self.ln(x + self.att(x, x, x, need_weights=False)[0])


class _MatmulNet(nn.Module):  # a product of two activations (BmmInt) and a log-softmax
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(8, 12)

    def forward(self, x):
        return torch.log_softmax(torch.matmul(self.a(x), self.b(x).transpose(1, 2)), -1)


class _RnnTagger(nn.Module):  # Linear -> GRU / LSTM (stacked, bidirectional) -> Linear on every step
    def __init__(self, kind: str = "GRU", **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True, **kwargs)
        self.head = nn.Linear(8 * (2 if kwargs.get("bidirectional") else 1), 3)

    def forward(self, x):
        return self.head(self.rnn(self.fc(x))[0])


class _Crnn(nn.Module):  # conv front end, frames to a GRU, a classifier per frame
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, stride=(1, 2), padding=1)
        self.gru = nn.GRU(4 * 5, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.c(x))  # [1, 4, T, 5]
        return self.fc(self.gru(x.permute(0, 2, 1, 3).flatten(2))[0])


CASES = {"relu6-depthwise": (_ReLU6Net, [(1, 3, 8, 8)]), "deconv": (_DeconvNet, [(1, 2, 8, 8)]),
         "split": (_SplitNet, [(1, 64, 2, 2)]), "conv1d": (_Conv1dNet, [(1, 4, 16)]),
         "gated": (_GatedNet, [(1, 3, 6, 6)]), "seq-layernorm": (_SeqNet, [(1, 5, 12)]),
         "pools-cat": (_PoolNet, [(1, 4, 8, 8)]), "two-in-two-out": (_TwoInTwoOut, [(1, 3, 4, 4), (1, 3, 4, 4)]),
         "slice": (_SliceNet, [(1, 4, 6, 6)]), "grouped": (_GroupedNet, [(1, 8, 5, 5)]),
         "deconv-crop": (_CroppedDeconvNet, [(1, 4, 6, 6)]), "batched-4d": (_Batched4dNet, [(2, 4, 3, 8)]),
         "attention": (_AttentionNet, [(1, 6, 16)]), "matmul-logsoftmax": (_MatmulNet, [(1, 5, 8)]),
         "gru": (_RnnTagger, [(1, 7, 5)]), "lstm": (lambda: _RnnTagger("LSTM"), [(1, 6, 5)]),
         "bigru": (lambda: _RnnTagger("GRU", bidirectional=True), [(1, 6, 5)]), "crnn": (_Crnn, [(1, 1, 9, 10)])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_thinker_package_runs_like_model_bin_and_eval(case, host, tmp_path):
    factory, shapes = CASES[case]
    torch.manual_seed(0)
    model = lnn.init(factory(), host=host)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*[torch.randn(s) for s in shapes])
    model.eval()
    xs = [torch.randn(s) for s in shapes]
    path = tmp_path / f"{case}.onnx"
    lnn.export(model, tuple(xs) if len(xs) > 1 else xs[0], path, host=host)
    graph = read_onnx(path)
    report = check_graph(graph, package_format="thinker")
    assert report.ok, report.table()
    res = pack_graph(graph, package_format="thinker")
    pkg = decode(res.blob)
    weight_ops = [op for op in pkg.ops if op.type in ("Conv2dInt", "Conv1dInt", "ConvTranspose2dInt", "LinearInt",
                                                      "LayerNormInt", "LSTMInt")]
    assert len(pkg.dma) == len(weight_ops) and all(op.temps for op in weight_ops)
    if case in ("split", "grouped"):
        assert res.passes.splits and "iqCat" in {op.type for op in pkg.ops}
    if case == "batched-4d":
        assert sorted(s.axis for s in res.passes.splits) == ["leading_axes", "leading_axes"]
    if case == "deconv-crop":
        assert [s.axis for s in res.passes.splits] == ["crop"] and "Slice" in {op.type for op in pkg.ops}
    on_pkg, on_bin = Simulator(res.blob), Simulator(pack_graph(graph).blob)
    for k in range(3):
        xi = [torch.randn(s) * (1 + k) for s in shapes]
        got, want = on_pkg.run([x.numpy() for x in xi]), on_bin.run([x.numpy() for x in xi])
        with torch.no_grad():
            ref = model(*xi)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert len(got) == len(want) == len(ref)
        for a, b, r in zip(got, want, ref):
            assert np.array_equal(a, b) and np.array_equal(a, r.numpy())


class _EmbeddingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.e(ids))


def test_thinker_package_with_an_embedding(host, tmp_path):
    """Token ids as an integer graph input (int32 in the package), a Gather on the table, a linear after it."""
    torch.manual_seed(0)
    model = lnn.init(_EmbeddingNet(), host=host)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 20, (1, 5)))
    model.eval()
    path = tmp_path / "emb.onnx"
    lnn.export(model, torch.randint(0, 20, (1, 5)), path, host=host)
    graph = read_onnx(path)
    res = pack_graph(graph, package_format="thinker")
    pkg = decode(res.blob)
    assert [op.type for op in pkg.ops][:1] == ["Gather"] and pkg.tensors[pkg.inputs[0]].dtype == "int32"
    on_pkg, on_bin = Simulator(res.blob), Simulator(pack_graph(graph).blob)
    ids = torch.randint(0, 20, (1, 5))
    (a,), (b,) = on_pkg.run([ids.numpy()]), on_bin.run([ids.numpy()])
    with torch.no_grad():
        assert np.array_equal(a, b) and np.array_equal(a, model(ids).numpy())


@pytest.mark.parametrize("case", ["relu6-depthwise", "deconv", "conv1d", "seq-layernorm", "split"])
def test_constants_in_share_memory_run_like_model_bin(case, host, tmp_path):
    """``--format thinker-share``: the same records, every constant in share-memory and read in place: no DMA
    list and no DMA buffers; the plan counts the constants in share-memory."""
    factory, shapes = CASES[case]
    torch.manual_seed(0)
    model = lnn.init(factory(), host=host)
    model.train()
    with torch.no_grad():
        model(*[torch.randn(s) for s in shapes])
    model.eval()
    path = tmp_path / f"{case}.onnx"
    lnn.export(model, torch.randn(shapes[0]), path, host=host)
    graph = read_onnx(path)
    assert check_graph(graph, package_format="thinker-share").ok
    res, dma = pack_graph(graph, package_format="thinker-share"), pack_graph(graph, package_format="thinker")
    pkg = decode(res.blob)
    assert not pkg.dma and pkg.param_type == 2 and all(t.mem_type == 2 for t in pkg.tensors)
    assert not any(t.name.startswith("dma_buffer") for t in pkg.tensors)
    assert res.plan.package["parameters_in"] == "share_mem" and res.plan.package["dma_transfers"] == 0
    assert res.plan.regions["share_mem"].prefetch_total == 0 < dma.plan.regions["share_mem"].prefetch_total
    on_pkg, on_bin = Simulator(res.blob), Simulator(pack_graph(graph).blob)
    for k in range(2):
        x = torch.randn(shapes[0]) * (1 + k)
        assert np.array_equal(on_pkg.run([x.numpy()])[0], on_bin.run([x.numpy()])[0])


def test_constants_that_do_not_fit_share_memory_are_refused(host, tmp_path):
    from lnn_core.errors import HardwareLimitError

    torch.manual_seed(0)
    model = lnn.init(_SplitNet(), host=host)
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 64, 2, 2))
    model.eval()
    path = tmp_path / "split.onnx"
    lnn.export(model, torch.randn(1, 64, 2, 2), path, host=host)
    graph = read_onnx(path)
    with pytest.raises(HardwareLimitError) as exc:
        pack_graph(graph, package_format="thinker-share", share_mem=32768)
    assert exc.value.rule_id == "csk60xx.thinker.share_mem" and exc.value.limit == 32768
    assert "--format thinker" in exc.value.hint
