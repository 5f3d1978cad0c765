"""``x.mean``/``torch.mean`` over the spatial dims as global average pooling: every spelling runs the chip's
AvgPool (sum, half-up division by the area, n_o = n_x), bit-exact in lnn.verify; other dims are reported at
lnn.init, a wrong rank at the first forward, naming the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.quant.rewrite import UnsupportedOpWarning

SPELLINGS = {
    "method_tuple_keep": lambda y: y.mean(dim=(2, 3), keepdim=True),
    "method_tuple": lambda y: y.mean(dim=(2, 3)),
    "method_list": lambda y: y.mean([2, 3]),
    "torch_neg": lambda y: torch.mean(y, (-2, -1)),
    "torch_neg_keep": lambda y: torch.mean(y, dim=(-1, -2), keepdim=True),
    "method_kw_keep_false": lambda y: y.mean(dim=[3, 2], keepdim=False),
}


class _Net(nn.Module):
    def __init__(self, pool, rank1: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.rank1 = rank1
        conv = nn.Conv1d if rank1 else nn.Conv2d
        self.conv = conv(2, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(self.pool(y).flatten(1))


def _prepared(host, pool, shape=(8, 2, 5, 7), rank1=False):
    torch.manual_seed(0)
    m = lnn.init(_Net(pool, rank1), host=host)
    x = torch.randn(*shape)
    lnn.calibrate(m, [x])
    return m.eval(), x


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_mean_spellings_are_global_pooling_bit_exact(host, name):
    m, x = _prepared(host, SPELLINGS[name])
    assert "builtin.AvgPool2d" in m.lnn.ops.values() and not m.lnn.unsupported
    report = lnn.verify(m, x[:2], host=host)
    assert report.ok, report.table()
    ref, _ = _prepared(host, nn.AdaptiveAvgPool2d(1))
    with torch.no_grad():  # the same integers as AdaptiveAvgPool2d(1): the chip's AvgPool semantics
        assert torch.equal(m(x), ref(x))


def test_mean_over_the_length_of_a_1d_signal(host):
    m, x = _prepared(host, lambda y: y.mean(-1), shape=(4, 2, 9), rank1=True)
    assert lnn.verify(m, x[:2], host=host).ok


def test_half_up_rounding_of_the_mean(host):
    """Sums that fall exactly half-way round up (spec 3.10), as the simulator does."""
    m, x = _prepared(host, lambda y: y.mean((2, 3)), shape=(4, 2, 2, 3))
    pool = next(mod for mod in m.modules() if type(mod).__name__ == "QAvgPool")
    n = 4
    xi = torch.tensor([[[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], [[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    pool.input_quantizers[0].running.fill_(127 / 2**n)  # input exponent n: xi holds the integers
    with torch.no_grad():
        y = pool(xi * 2.0**-n) * 2.0**n
    assert y.flatten().tolist() == [1.0, 0.0]  # 3/6 = 0.5 -> 1; -3/6 = -0.5 -> 0 (half-up, not away from zero)


@pytest.mark.parametrize("spelling", [lambda y: y.mean(), lambda y: y.mean(1), lambda y: y.mean((0, 2)),
                                      lambda y: torch.mean(y, dim=1, keepdim=True)])
def test_non_spatial_mean_is_reported_at_init(host, spelling):
    with pytest.warns(UnsupportedOpWarning, match="mean"):
        lnn.init(_Net(spelling), host=host)
    with pytest.raises(lnn.UnsupportedOpError) as exc:
        lnn.init(_Net(spelling), host=host, strict=True)
    assert "mean" in exc.value.op and "test_mean_pool.py" in exc.value.call_site


def test_negative_dims_that_are_not_spatial_fail_at_the_first_forward(host):
    m = lnn.init(_Net(lambda y: y.mean((-2, -1)), rank1=True), host=host)  # on (N, C, L): channel and length
    with pytest.raises(lnn.ConfigError) as exc:
        lnn.calibrate(m, [torch.randn(2, 2, 9)])
    assert exc.value.module == "pool" or "pool" in str(exc.value).splitlines()[0]
    assert "spatial dims" in str(exc.value)
