"""Constant zero padding (``F.pad``, ``nn.ZeroPad1d/2d``, ``nn.ConstantPad1d/2d`` with 0) runs as the chip's
iqPad: bit-exact in lnn.verify in front of a conv, a pooling or anywhere; other padding is reported at
lnn.init, every one at once; the C kernel equals numpy's zero padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_core.errors import HardwareLimitError

SPELLINGS = {
    "F.pad": lambda: (lambda y: F.pad(y, (1, 2, 0, 3))),
    "F.pad_kw": lambda: (lambda y: F.pad(y, pad=[2, 0], mode="constant", value=0.0)),
    "ZeroPad2d": lambda: nn.ZeroPad2d((0, 1, 2, 1)),
    "ZeroPad2d_int": lambda: nn.ZeroPad2d(2),
    "ConstantPad2d_0": lambda: nn.ConstantPad2d((1, 1, 1, 0), 0.0),
}


class _Net(nn.Module):
    def __init__(self, pad, then: str = "conv", head: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pad = pad
        self.then = then
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.LazyLinear(3) if head else nn.Identity()

    def forward(self, x):
        y = self.pad(torch.relu(self.conv(x)) if self.then != "input" else x)
        if self.then == "input":
            y = self.conv(y)
        y = self.conv2(y) if self.then in ("conv", "input") else self.pool(y) if self.then == "pool" else y
        return self.fc(y.flatten(1))


def _run(host, net, x):
    net(x)  # materialise the lazy Linear
    m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
    report = lnn.verify(m, x[:2], host=host)
    assert report.ok, report.table()
    return m


@pytest.mark.parametrize("name", list(SPELLINGS))
@pytest.mark.parametrize("then", ["conv", "pool", "none", "input"])
def test_zero_padding_spellings_verify_bit_exact(host, name, then):
    torch.manual_seed(0)
    m = _run(host, _Net(SPELLINGS[name](), then), torch.randn(4, 1, 7, 6))
    graph = lnn.to_ir(m, torch.randn(1, 1, 7, 6), host=host)
    assert sum(n.op_type == "iqPad" for n in graph.nodes) == 1


def test_every_padding_problem_is_reported_at_once(host):
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.a = nn.ConstantPad2d(1, 1.0)

        def forward(self, x):
            y = self.conv(x)
            return self.a(y) + F.pad(y, (1, 1, 1, 1), mode="replicate")

    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(Two(), host=host)
    assert sorted(v.op_name for v in exc.value.violations if v.rule_id == "csk60xx.pad.form") == ["a", "pad"]


def test_qdq_export_of_zero_padding_equals_eval_in_onnxruntime(host):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = _Net(nn.ZeroPad2d((1, 2, 0, 1)), "conv")
    x = torch.randn(6, 1, 7, 6)
    net(x)
    m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
    proto = lnn.export(m, x[:1], dialect="qdq", dynamic_batch=True, host=host)
    sess = ort.InferenceSession(proto.SerializeToString())
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(out), m(x))


def test_zero_padding_of_a_1d_signal(host):
    class Net1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3)
            self.pad = nn.ZeroPad1d((2, 1))
            self.fc = nn.LazyLinear(3)

        def forward(self, x):
            return self.fc(self.conv(self.pad(x)).flatten(1))

    torch.manual_seed(0)
    _run(host, Net1d(), torch.randn(4, 2, 9))


@pytest.mark.parametrize("pad, what", [
    (lambda: nn.ConstantPad2d(1, 0.5), "value 0.5"),
    (lambda: (lambda y: F.pad(y, (1, 1), mode="reflect")), "mode 'reflect'"),
    (lambda: (lambda y: F.pad(y, (0, 0, -1, 0))), "negative pad"),
    (lambda: (lambda y: F.pad(y, (0, 0, 0, 0, 1, 0))), "beyond the last two axes"),
])
def test_other_padding_is_reported_at_init(host, pad, what):
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(_Net(pad(), "none", head=False), host=host)
    found = [v for v in exc.value.violations if v.rule_id == "csk60xx.pad.form"]
    assert len(found) == 1 and what in found[0].actual and "ZeroPad2d" in found[0].hint


@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 6), pads=st.tuples(*[st.integers(0, 3)] * 4),
       seed=st.integers(0, 2**31 - 1))
def test_simulator_pads_like_numpy(host, c, h, w, pads, seed):
    """The model's output is the padded tensor itself: the simulator's integers are numpy's zero padding of the
    conv's integers, for any shape and pads."""
    torch.manual_seed(seed % 1000)
    net = nn.Sequential(nn.Conv2d(1, c, 1), nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])))
    x = torch.randn(2, 1, h, w)
    m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
    report = lnn.verify(m, x, host=host)
    assert report.ok and report.outputs_equal, report.table()
    with torch.no_grad():
        conv = m(x)
    top, left, bottom, right = pads
    assert conv.shape == (2, c, h + top + bottom, w + left + right)
    inner = conv[:, :, top:top + h, left:left + w]
    expected = np.pad(inner.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)))
    assert np.array_equal(conv.numpy(), expected)


def test_the_pad_hints_lead_somewhere_that_works(host):
    """A conv padded beyond the chip's 4 per side is refused with a hint to pad in front; doing so verifies."""
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(nn.Sequential(nn.Conv2d(1, 4, 5, padding=5)), host=host)
    (v,) = [v for v in exc.value.violations if v.rule_id == "csk60xx.conv.pad"]
    assert "nn.ZeroPad2d" in v.hint
    with pytest.raises(lnn.ConfigError) as exc:
        lnn.init(nn.Sequential(nn.Conv2d(1, 4, 2, padding="same")), host=host)
    assert "nn.ZeroPad2d" in exc.value.hint
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    for net, side in ((nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(1, 4, 5, padding=4)), 12),  # padding 5 = 1 + 4
                      (nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 4, 2)), 6)):  # 'same', even kernel
        m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
        with torch.no_grad():
            assert tuple(m(x).shape[-2:]) == (side, side)
        assert lnn.verify(m, x[:2], host=host).ok


def test_pack_folds_a_pad_into_the_conv_that_reads_it(host):
    """lnn pack folds a zero padding into the next conv's pads when they stay within the limits (one op fewer;
    the same integers as eval), and keeps it as iqPad when they would not."""
    from lnn_backend_csk60xx.dialect import read_onnx
    from lnn_backend_csk60xx.pipeline import pack_graph
    from lnn_backend_csk60xx.simulator import Simulator

    torch.manual_seed(0)
    x = torch.randn(4, 1, 7, 6)
    for net, folded in ((nn.Sequential(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(1, 4, 3, padding=1)), True),
                        (nn.Sequential(nn.ZeroPad2d(3), nn.Conv2d(1, 4, 3, padding=1)), False)):  # 4 > kernel 3
        m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
        proto = lnn.export(m, x[:1], host=host)
        result = pack_graph(read_onnx(proto))
        assert bool(result.passes.folded_pads) is folded
        out = Simulator(result.blob).run([x[:1].numpy()])[0]
        with torch.no_grad():
            assert np.array_equal(np.asarray(out, dtype=np.float32).reshape(m(x[:1]).shape), m(x[:1]).numpy())
