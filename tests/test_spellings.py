"""Every spelling of an op gives the same quantized model (issue acceptance).

Two models that differ only in how one op is written (``nn.Conv2d`` or ``F.conv2d``, ``x + y`` or
``torch.add``, ...) start from the same weights, train the same steps on the same data, and must agree
bit for bit: train-mode outputs, gradients, every quantizer buffer, and eval-mode outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_core.quant.quantizers import ActQuantizer


class Net(nn.Module):
    """A small model whose forward is a plain function ``fn(self, x)``; every variant owns the same modules."""

    def __init__(self, fn, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, mod in modules.items():
            setattr(self, name, mod)
        self._fn = fn

    def forward(self, x):
        return self._fn(self, x)


def _quantizers(model: nn.Module) -> list[tuple[str, ActQuantizer]]:
    """Output quantizers in graph order (paths of function-spelled ops differ, their order does not)."""
    out = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            q = getattr(model.get_submodule(node.target), "out_q", None)
            if isinstance(q, ActQuantizer):
                out.append((str(node.target), q))
    return out


def _assert_same_quantizers(a: nn.Module, b: nn.Module) -> None:
    qa, qb = _quantizers(a), _quantizers(b)
    assert len(qa) == len(qb), ([p for p, _ in qa], [p for p, _ in qb])
    for (pa, x), (pb, y) in zip(qa, qb):
        assert x.positive == y.positive, (pa, pb)
        for buf in ("running", "exponent", "num_batches"):
            assert torch.equal(getattr(x, buf), getattr(y, buf)), (pa, pb, buf, getattr(x, buf), getattr(y, buf))


def _check_same(host, fn_a, fn_b, modules: dict[str, nn.Module], shape: tuple[int, ...], steps: int = 3,
                ids: int | None = None) -> None:
    """Build both spellings from the same float model, train ``steps`` SGD steps, compare everything.

    :param ids: the input is token ids below ``ids`` (an embedding's), not float data.
    """
    base = Net(fn_a, modules)
    other = copy.deepcopy(base)
    other._fn = fn_b
    a = lnn.init(base, host=host)
    b = lnn.init(other, host=host)
    assert len(a.lnn.ops) == len(b.lnn.ops), (a.lnn.ops, b.lnn.ops)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    a.train()
    b.train()
    for _ in range(steps):
        x = torch.randint(0, ids, shape, generator=gen) if ids else torch.randn(shape, generator=gen)
        ya, yb = a(x), b(x)
        assert torch.equal(ya, yb)
        target = torch.randn(ya.shape, generator=gen)
        F.mse_loss(ya, target).backward()
        F.mse_loss(yb, target).backward()
        grads_a = {k: p.grad for k, p in a.named_parameters()}
        grads_b = {k: p.grad for k, p in b.named_parameters()}
        assert grads_a.keys() == grads_b.keys()
        for k in grads_a:
            assert grads_a[k] is not None, k
            assert torch.equal(grads_a[k], grads_b[k]), k
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
        _assert_same_quantizers(a, b)
    a.eval()
    b.eval()
    for _ in range(2):
        x = torch.randint(0, ids, shape, generator=gen) if ids else torch.randn(shape, generator=gen) * 1.5
        assert torch.equal(a(x), b(x))
    _assert_same_quantizers(a, b)


# -- convolution -------------------------------------------------------------------------------------------

CONV_CASES = [
    # cin, cout, kernel, stride, padding, groups, bias
    (4, 8, 3, 1, 1, 1, True),
    (4, 8, 3, 1, 1, 1, False),
    (4, 8, 3, 2, 1, 2, True),
    (4, 4, 3, 1, 1, 4, False),  # depthwise
    (4, 6, 1, 1, 0, 1, True),
    (6, 6, 2, 2, 0, 3, True),
    (4, 6, 3, 1, "same", 1, True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "c{}-o{}-k{}-s{}-p{}-g{}-b{}".format(*c))
@pytest.mark.parametrize("keywords", [False, True], ids=["positional", "keywords"])
def test_conv2d_module_vs_function(host, case, keywords):
    cin, cout, k, s, p, g, bias = case

    def mod(m, x):
        return m.head(F.relu(m.conv(x)))

    def fun(m, x):
        c = m.conv
        if keywords:
            y = F.conv2d(x, weight=c.weight, bias=c.bias, stride=s, padding=p, groups=g)
        else:
            y = F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return m.head(F.relu(y))

    modules = {"conv": nn.Conv2d(cin, cout, k, s, p, groups=g, bias=bias), "head": nn.Conv2d(cout, 3, 1)}
    _check_same(host, mod, fun, modules, (2, cin, 6, 6))


def test_conv1d_module_vs_function(host):
    def mod(m, x):
        return m.conv(x)

    def fun(m, x):
        return F.conv1d(x, m.conv.weight, m.conv.bias, 2, 1, 1, 2)

    _check_same(host, mod, fun, {"conv": nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)}, (2, 4, 10))


def test_linear_module_vs_function(host):
    def mod(m, x):
        return m.out(F.relu(m.fc(x)))

    def fun(m, x):
        return F.linear(F.relu(F.linear(x, m.fc.weight, m.fc.bias)), m.out.weight)

    _check_same(host, mod, fun, {"fc": nn.Linear(12, 16), "out": nn.Linear(16, 5, bias=False)}, (4, 12))


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_module_vs_function(host, padding_idx):
    def mod(m, x):
        return m.fc(m.emb(x))

    def fun(m, x):
        return m.fc(F.embedding(x, m.emb.weight, padding_idx=padding_idx))

    _check_same(host, mod, fun, {"emb": nn.Embedding(20, 8, padding_idx=padding_idx), "fc": nn.Linear(8, 3)}, (4, 5),
                ids=20)


# -- elementwise -------------------------------------------------------------------------------------------

def _two_branches() -> dict[str, nn.Module]:
    return {"c1": nn.Conv2d(3, 6, 3, padding=1), "c2": nn.Conv2d(3, 6, 1), "head": nn.Conv2d(6, 4, 1)}


ADD_SPELLINGS = {
    "operator": lambda a, b: a + b,
    "torch.add": lambda a, b: torch.add(a, b),
    "torch.add-kw": lambda a, b: torch.add(a, other=b),
    "method": lambda a, b: a.add(b),
}


@pytest.mark.parametrize("spelling", [s for s in ADD_SPELLINGS if s != "operator"])
def test_add_spellings(host, spelling):
    def make(add):
        return lambda m, x: m.head(add(m.c1(x), m.c2(x)))

    _check_same(host, make(ADD_SPELLINGS["operator"]), make(ADD_SPELLINGS[spelling]), _two_branches(), (2, 3, 6, 6))


def test_add_inplace_spelling(host):
    def plain(m, x):
        return m.head(m.c1(x) + m.c2(x))

    def inplace(m, x):
        y = m.c1(x)
        y += m.c2(x)
        return m.head(y)

    _check_same(host, plain, inplace, _two_branches(), (2, 3, 6, 6))


CAT_SPELLINGS = {
    "torch.cat": lambda a, b: torch.cat([a, b], dim=1),
    "torch.concat": lambda a, b: torch.concat([a, b], dim=1),
    "torch.cat-positional": lambda a, b: torch.cat((a, b), 1),
}


@pytest.mark.parametrize("spelling", ["torch.concat", "torch.cat-positional"])
def test_cat_spellings(host, spelling):
    def make(cat):
        return lambda m, x: m.head(cat(m.c1(x), m.c2(x)))

    modules = _two_branches()
    modules["head"] = nn.Conv2d(12, 4, 1)
    _check_same(host, make(CAT_SPELLINGS["torch.cat"]), make(CAT_SPELLINGS[spelling]), modules, (2, 3, 6, 6))


# -- activations -------------------------------------------------------------------------------------------

RELU_SPELLINGS = {
    "nn.ReLU": lambda m, y: m.act(y),
    "F.relu": lambda m, y: F.relu(y),
    "torch.relu": lambda m, y: torch.relu(y),
    "method": lambda m, y: y.relu(),
}


@pytest.mark.parametrize("spelling", ["F.relu", "torch.relu", "method"])
def test_relu_spellings(host, spelling):
    def make(relu):
        return lambda m, x: m.head(relu(m, m.conv(x)))

    modules = {"conv": nn.Conv2d(3, 6, 3, padding=1), "act": nn.ReLU(), "head": nn.Conv2d(6, 4, 1)}
    _check_same(host, make(RELU_SPELLINGS["nn.ReLU"]), make(RELU_SPELLINGS[spelling]), modules, (2, 3, 6, 6))


RELU6_SPELLINGS = {
    "nn.ReLU6": lambda m, y: m.act(y),
    "F.relu6": lambda m, y: F.relu6(y),
    "torch.clamp": lambda m, y: torch.clamp(y, 0, 6),
    "method-clamp": lambda m, y: y.clamp(min=0.0, max=6.0),
    "F.hardtanh": lambda m, y: F.hardtanh(y, 0.0, 6.0),
}


@pytest.mark.parametrize("spelling", ["F.relu6", "torch.clamp", "method-clamp", "F.hardtanh"])
def test_relu6_spellings(host, spelling):
    def make(relu6):
        # scaled so that the clip at 6 binds for part of the data
        return lambda m, x: m.head(relu6(m, m.conv(x) * 4.0))

    modules = {"conv": nn.Conv2d(3, 6, 3, padding=1), "act": nn.ReLU6(), "head": nn.Conv2d(6, 4, 1)}
    _check_same(host, make(RELU6_SPELLINGS["nn.ReLU6"]), make(RELU6_SPELLINGS[spelling]), modules, (2, 3, 6, 6))


def test_relu6_spellings_directly_after_conv(host):
    """ReLU6 and clamp(0, 6) right after a conv: both consumers bound the data below by 0."""

    def relu6(m, x):
        return m.head(F.relu6(m.conv(x)))

    def clamp(m, x):
        return m.head(torch.clamp(m.conv(x), 0, 6))

    modules = {"conv": nn.Conv2d(3, 6, 3, padding=1), "head": nn.Conv2d(6, 4, 1)}
    _check_same(host, relu6, clamp, modules, (2, 3, 6, 6))


# -- shape and pooling -------------------------------------------------------------------------------------

def test_transpose_spellings(host):
    def fun(m, x):
        return m.fc(torch.transpose(m.conv(x), 1, 2))

    def meth(m, x):
        return m.fc(m.conv(x).transpose(1, 2))

    modules = {"conv": nn.Conv1d(4, 8, 3, padding=1), "fc": nn.Linear(8, 5)}
    _check_same(host, fun, meth, modules, (2, 4, 7))


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_avgpool_module_vs_function(host, kernel, stride, padding):
    def mod(m, x):
        return m.head(m.pool(m.conv(x)))

    def fun(m, x):
        return m.head(F.avg_pool2d(m.conv(x), kernel, stride, padding))

    modules = {"conv": nn.Conv2d(3, 6, 3, padding=1), "pool": nn.AvgPool2d(kernel, stride, padding),
               "head": nn.Conv2d(6, 4, 1)}
    _check_same(host, mod, fun, modules, (2, 3, 8, 8))


def test_global_avgpool_spellings(host):
    def mod(m, x):
        return m.fc(m.pool(m.conv(x)).flatten(1))

    def fun(m, x):
        return m.fc(F.adaptive_avg_pool2d(m.conv(x), 1).flatten(1))

    modules = {"conv": nn.Conv2d(3, 6, 3, padding=1), "pool": nn.AdaptiveAvgPool2d(1), "fc": nn.Linear(6, 4)}
    _check_same(host, mod, fun, modules, (2, 3, 6, 6))
