"""The tracer keeps torch's packing helpers whole (lnn_core/quant/packed.py), with no plugin installed: one node per
``pack_padded_sequence`` / ``pad_packed_sequence`` call whatever the spelling, the traced float graph computes what
the model computes, and the proxy's answer to the helpers' ``isinstance`` check is given to nobody else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lnn_core.quant.packed import HelperProxy, pack_padded, pad_packed
from lnn_core.quant.rewrite import trace_lowered
from lnn_core.testing import isolated_host


class Packed(nn.Module):
    def __init__(self, spelling: str, batch_first: bool, enforce_sorted: bool) -> None:
        super().__init__()
        self.spelling, self.batch_first, self.enforce_sorted = spelling, batch_first, enforce_sorted
        self.rnn = nn.LSTM(4, 3, batch_first=batch_first, bidirectional=True)
        self.seen: list[bool] = []

    def forward(self, x, lengths):
        import torch.nn.utils.rnn as rnn_utils
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        pack, pad = {"full": (torch.nn.utils.rnn.pack_padded_sequence, torch.nn.utils.rnn.pad_packed_sequence),
                     "alias": (rnn_utils.pack_padded_sequence, rnn_utils.pad_packed_sequence),
                     "from": (pack_padded_sequence, pad_packed_sequence)}[self.spelling]
        self.seen.append(isinstance(lengths, torch.Tensor))
        t_len = x.size(1 if self.batch_first else 0)
        y, (h, _) = self.rnn(pack(x, lengths, batch_first=self.batch_first, enforce_sorted=self.enforce_sorted))
        out, lens = pad(y, batch_first=self.batch_first, total_length=t_len)
        return out * 2, h, lens


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("spelling", ["full", "alias", "from"])
def test_one_node_per_helper_call_and_the_float_graph_computes_the_model(spelling, batch_first, enforce_sorted):
    model = Packed(spelling, batch_first, enforce_sorted).eval()
    root, graph, _ = trace_lowered(model, isolated_host([]).ops)
    calls = [n.target for n in graph.nodes if n.op == "call_function"]
    assert calls.count(pack_padded) == 1 and calls.count(pad_packed) == 1
    (pack,) = [n for n in graph.nodes if n.target is pack_padded]
    assert pack.kwargs == {"batch_first": batch_first, "enforce_sorted": enforce_sorted}
    assert [u.op for u in pack.users] == ["call_module"]
    assert root.seen == [False]  # the model's own isinstance saw a proxy, not a tensor
    gm = torch.fx.GraphModule(root, graph)
    x = torch.randn(3, 6, 4) if batch_first else torch.randn(6, 3, 4)
    lengths = torch.tensor([6, 4, 2]) if enforce_sorted else torch.tensor([2, 6, 4])
    with torch.no_grad():
        for got, want in zip(gm(x, lengths), model(x, lengths), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_helper_proxy_is_what_it_is_outside_the_helpers():
    graph = torch.fx.Graph()
    proxy = HelperProxy(graph.placeholder("x"), torch.fx.proxy.GraphAppendingTracer(graph))
    assert not isinstance(proxy, torch.Tensor) and isinstance(proxy, HelperProxy)
    with pytest.raises(TypeError, match="traced"):
        proxy.__index__()
