"""Indexing ``x[...]`` on quantized data: integers, constant step-1 slices and ``...`` run as single-axis Slice
ops (+ Squeeze), bit-exact in lnn.verify; what has no int8 form is reported at lnn.init, all at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import HardwareLimitError

INDEXES = {
    "last_channel_int": lambda y: y[:, -1],
    "ellipsis_width": lambda y: y[..., 1:4],
    "height_range": lambda y: y[:, :, 1:5],
    "two_axes": lambda y: y[:, 1:3, 2:, :-1],
    "int_and_slice": lambda y: y[:, 2, 1:],
    "negative_bounds": lambda y: y[:, :, -4:-1],
    "ellipsis_int": lambda y: y[..., 0],
    "channel_first_int": lambda y: y[:, 0, ...],
}


class _Net(nn.Module):
    def __init__(self, index, head: bool = True) -> None:
        super().__init__()
        self.index = index
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.LazyLinear(3) if head else nn.Identity()

    def forward(self, x):
        y = self.conv(x)
        return self.fc(self.index(y).flatten(1))


@pytest.mark.parametrize("name", list(INDEXES))
def test_indexing_spellings_verify_bit_exact(host, name):
    torch.manual_seed(0)
    net = _Net(INDEXES[name])
    x = torch.randn(6, 1, 6, 7)
    net(x)  # materialise the lazy Linear
    m = lnn.init(net, host=host)
    lnn.calibrate(m, [x])
    m.eval()
    with torch.no_grad():
        assert m(x).shape == net(x).shape
    report = lnn.verify(m, x[:2], host=host)
    assert report.ok, report.table()
    graph = lnn.to_ir(m, x[:2], host=host)
    slices = [n for n in graph.nodes if n.op_type == "Slice"]
    assert slices and all(len(graph.initializers[n.inputs[3]].reshape(-1)) == 1 for n in slices)  # one axis each


@pytest.mark.parametrize("index, kind", [(lambda y: y[:, ::2], "step 2"), (lambda y: y[:, None], "None"),
                                         (lambda y: y[:, :, 1:6:3], "step 3")])
def test_indexing_without_int8_form_is_reported_at_init(host, index, kind):
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(_Net(index, head=False), host=host)
    v = [v for v in exc.value.violations if v.rule_id == "csk60xx.slice.index"]
    assert v and kind in str(v[0].actual) and "unsqueeze" in v[0].hint


def test_every_bad_index_is_reported_at_once(host):
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y[:, ::2] + y[:, 1::2]

    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(Two(), host=host)
    assert sum(v.rule_id == "csk60xx.slice.index" for v in exc.value.violations) == 2


@pytest.mark.parametrize("index", [lambda y: y[:, -1], lambda y: y[:, 1:3, 2:, :-1], lambda y: y.mean((2, 3)),
                                   lambda y: y.mean((-1, -2), keepdim=True)])
def test_qdq_export_of_indexing_and_spatial_mean_equals_eval_in_onnxruntime(host, index):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = _Net(index)
    x = torch.randn(8, 1, 6, 7)
    net(x)
    m = lnn.calibrate(lnn.init(net, host=host), [x]).eval()
    proto = lnn.export(m, x[:1], dialect="qdq", dynamic_batch=True, host=host)
    sess = ort.InferenceSession(proto.SerializeToString())
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(out), m(x))
