"""Softmax, log-softmax (every spelling; last dim) and matmul between activations (``torch.matmul``, ``@``,
``torch.bmm``) end to end: eval integers against a reference written from the spec (spec/int8-seq-ops.md 2.4.4,
2.5.4, 2.9.4; the HiFi softmax core as the spec models it, not vendor-verified), training that computes the chip's
integers with float gradients, ``lnn.verify`` bit-exact tensor by tensor after QAT steps (Linear -> softmax,
self-similarity -> softmax -> @ v, 4-D heads), one clear error for each bad input, and the QDQ form's agreement
with eval.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_core.errors import HardwareLimitError, LnnError, UnsupportedOpError
from lnn_core.exporter import to_ir
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import UnsupportedOpWarning
from lnn_ops_builtin.bmm import QBmm, bmm_int
from lnn_ops_builtin.softmax import QSoftmax, softmax_int, softmax_q15, softmax_q15_f64, softmax_q15_int8

# -- a reference written from the spec (int8-ops.md 3.23; independent of lnn_ops_builtin.softmax) ------------------

_POLY = (57364, 446161, 2008107, 5813551, 8388575)


def _sat32(v: int) -> int:
    return max(-(1 << 31), min((1 << 31) - 1, v))


def _r(v: int, s: int) -> int:
    return (v + (1 << (s - 1))) >> s


def _softmax_row(x25: list[int]) -> list[int]:
    m = max(x25)
    e = []
    for v in x25:
        t = _sat32(_r(_sat32(v - m) * 774541002, 31))
        f, ex = (t & 0x7FFFFF) - 0x800000, (t >> 23) + 1
        y = _POLY[0]
        for p in _POLY[1:]:
            y = _r(y * f, 23) + p
        e.append(y << ex if ex >= 0 else y >> -ex)
    s = min(sum(e), (1 << 31) - 1)
    k = (30 - (s.bit_length() - 1)) - 8
    xn = s >> -k if k < 0 else _sat32(s << k)
    r = 0xBB5000 - xn
    for _ in range(2):
        r += _r(r * 2 * (0x400000 - _r(xn * r, 23)), 23)
    r = r >> -(k + 1) if k + 1 < 0 else _sat32(r << (k + 1))
    return [_sat32(_r(r * v, 31)) for v in e]


def _ref(q: np.ndarray, n_x: int, n_o: int, log: bool) -> np.ndarray:
    out = []
    for row in q.reshape(-1, q.shape[-1]):
        y15 = _softmax_row([_sat32(int(v) << (25 - n_x)) for v in row])
        if log:
            vals = [-(1 << 31) if v <= 0 else min(0, math.floor(math.log(v / 32768.0) * 33554432.0 + 0.5))
                    for v in y15]
            s = 25 - n_o
        else:
            vals, s = y15, 15 - n_o
        out.append([max(-128, min(127, v if s == 0 else _r(v, s))) for v in vals])
    return np.array(out, np.int64).reshape(q.shape)


def seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


class Functional(nn.Module):
    """``Linear -> <spelling>`` for the function and method spellings."""

    def __init__(self, fn, d: int = 24) -> None:
        super().__init__()
        self.fc, self.fn = nn.Linear(16, d), fn

    def forward(self, x):
        return self.fn(self.fc(x))


class Attention(nn.Module):
    """Single- or multi-head self-attention from linears, ``@``/``torch.matmul``/``torch.bmm`` and softmax (the
    spec 2.10.2 recipe): ``softmax(q @ k^T) @ v``, heads as a 4-D [B, h, T, d] when ``heads > 1``."""

    def __init__(self, d: int = 16, heads: int = 1, spelling: str = "@") -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads, self.spelling = heads, spelling

    def mm(self, a, b):
        return {"@": lambda: a @ b, "matmul": lambda: torch.matmul(a, b), "bmm": lambda: torch.bmm(a, b),
                "method": lambda: a.matmul(b)}[self.spelling]()

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.heads > 1:
            h = self.heads
            q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        a = F.softmax(self.mm(q, k.transpose(-1, -2)), dim=-1)
        o = self.mm(a, v)
        if self.heads > 1:
            o = o.transpose(1, 2).reshape(b, t, d)
        return self.o(o)


class Rows2D(nn.Module):
    """Attention on a 2-D [T, D] input: 2-D BmmInt operands."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x):
        return torch.matmul(torch.softmax(self.q(x) @ self.k(x).t(), -1), self.v(x))


def _qat(model: nn.Module, shape: tuple[int, ...], host, steps: int = 4) -> nn.Module:
    torch.manual_seed(0)
    m = lnn.init(model, host=host)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        y = m(torch.randn(*shape) * 2)
        loss = sum(F.mse_loss(t, torch.randn_like(t)) for t in (y if isinstance(y, tuple) else (y,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _mods(m: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    return [(p, mod) for p, mod in m.named_modules() if isinstance(mod, cls)]


# -- spellings -------------------------------------------------------------------------------------------------

SOFTMAX_SPELLINGS = {
    "nn.Softmax": (lambda: seq(fc=nn.Linear(16, 24), sm=nn.Softmax(dim=-1)), "builtin.Softmax"),
    "nn.Softmax-last-index": (lambda: seq(fc=nn.Linear(16, 24), sm=nn.Softmax(dim=2)), "builtin.Softmax"),
    "F.softmax": (lambda: Functional(lambda x: F.softmax(x, dim=-1)), "builtin.Softmax"),
    "torch.softmax": (lambda: Functional(lambda x: torch.softmax(x, -1)), "builtin.Softmax"),
    "Tensor.softmax": (lambda: Functional(lambda x: x.softmax(-1)), "builtin.Softmax"),
    "nn.LogSoftmax": (lambda: seq(fc=nn.Linear(16, 24), sm=nn.LogSoftmax(dim=-1)), "builtin.LogSoftmax"),
    "F.log_softmax": (lambda: Functional(lambda x: F.log_softmax(x, dim=-1)), "builtin.LogSoftmax"),
    "torch.log_softmax": (lambda: Functional(lambda x: torch.log_softmax(x, -1)), "builtin.LogSoftmax"),
    "Tensor.log_softmax": (lambda: Functional(lambda x: x.log_softmax(dim=-1)), "builtin.LogSoftmax"),
}


@pytest.mark.parametrize("name", list(SOFTMAX_SPELLINGS))
def test_every_softmax_spelling_becomes_the_qat_module_and_verifies(name, host):
    make, op_id = SOFTMAX_SPELLINGS[name]
    m = _qat(make(), (2, 5, 16), host)
    assert list(m.lnn.ops.values()).count(op_id) == 1 and len(_mods(m, QSoftmax)) == 1
    report = lnn.verify(m, torch.randn(2, 5, 16) * 2, host=host)
    assert report.ok and all(t.mismatches == 0 for t in report.tensors), report.table()


@pytest.mark.parametrize("spelling", ["@", "matmul", "bmm", "method"])
def test_every_matmul_spelling_becomes_bmm_and_verifies(spelling, host):
    m = _qat(Attention(spelling=spelling), (2, 6, 16), host)
    assert list(m.lnn.ops.values()).count("builtin.Matmul") == 2 and len(_mods(m, QBmm)) == 2
    report = lnn.verify(m, torch.randn(2, 6, 16), host=host)
    assert report.ok and all(t.mismatches == 0 for t in report.tensors), report.table()


# -- eval = the chip's integers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("log", [False, True])
def test_eval_integers_equal_the_spec_reference(log, host):
    m = _qat(seq(fc=nn.Linear(16, 40), sm=nn.LogSoftmax(-1) if log else nn.Softmax(-1)), (3, 7, 16), host)
    sm = dict(_mods(m, QSoftmax))["sm"]
    x = torch.randn(3, 7, 16) * 3
    with torch.no_grad():
        z = m.fc(m.get_submodule(next(p for p, _ in m.named_modules() if p.startswith("q_input")))(x))
        y = sm(z)
    n_x, n_o = sm.in_exponent(0), sm.out_q.eval_exponent(sm.output_cap())
    q = torch.floor(z.double() * 2.0 ** n_x + 0.5).numpy().astype(np.int64)
    np.testing.assert_array_equal(y.double().numpy() * 2.0 ** n_o, _ref(q, n_x, n_o, log))
    if not log:  # the output exponent follows the recipe, capped at 15; probabilities fit
        assert n_o <= 15 and y.min() >= 0 and y.max() <= 1


def test_matmul_eval_is_the_exact_requantized_product(host):
    m = _qat(Attention(), (2, 6, 16), host)
    (_, mm), (_, mm2) = _mods(m, QBmm)
    a = torch.randint(-128, 128, (2, 6, 16)).double() / 16
    b = torch.randint(-128, 128, (2, 16, 6)).double() / 8
    n_o = mm.out_q.eval_exponent(4 + 3)
    got = bmm_int(a.float(), b.float(), 4, 3, mm.out_q)
    acc = torch.matmul(a * 16, b * 8).long()
    s = 7 - n_o
    want = ((acc + (1 << (s - 1))) >> s if s > 0 else acc).clamp(-128, 127)
    assert torch.equal((got.double() * 2.0 ** n_o).long(), want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_table_form_equals_the_int64_model(data):
    """softmax_q15_int8 (what training and eval run: a table of the exponential terms of every (element, row maximum)
    pair) equals softmax_q15 on the Q25-widened integers, at every input exponent, on rows with saturated, tied,
    extreme and constant values; so does the form that builds the table index in its input's buffer, on float32
    and float64, contiguous or not."""
    n_x = data.draw(st.integers(0, 25), label="n_x")
    row = data.draw(st.sampled_from([1, 2, 3, 17, 64, 300, 2048]), label="row")
    rows = data.draw(st.integers(1, 6), label="rows")
    lo = data.draw(st.integers(-128, 127), label="lo")
    hi = data.draw(st.integers(lo, 127), label="hi")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    q = torch.randint(lo, hi + 1, (rows, row), generator=torch.Generator().manual_seed(seed))
    q[0, :1] = data.draw(st.sampled_from([-128, 127, lo, hi]), label="first")
    x25 = (q << (25 - n_x)).clamp(-(1 << 31), (1 << 31) - 1)
    want = softmax_q15(x25)
    assert torch.equal(softmax_q15_int8(q, n_x), want)
    for dtype in (torch.float32, torch.float64):  # the table index formed in the input's own buffer (training)
        assert torch.equal(softmax_q15_f64(q.to(dtype), n_x, inplace=True), want.double())
        assert torch.equal(softmax_q15_f64(q.to(dtype).t().contiguous().t(), n_x, inplace=True), want.double())


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_training_node_has_the_chip_value_and_the_float_gradient(log, host):
    """The one autograd node of training's softmax: the same value and gradient as ``ref + (chip - ref).detach()``
    with ``ref`` the float function, in float32 and float64."""
    recipe = host.recipes[host.targets["csk60xx"].recipe]
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(3)
        x = (torch.randint(-128, 128, (3, 5, 40)).to(dtype) / 16).requires_grad_()
        out = ActQuantizer(8, recipe)
        out.quant = False  # the value before the output quantizer
        y = softmax_int(x, 4, out, log=log, training=True)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        x2 = x.detach().clone().requires_grad_()
        ref = F.log_softmax(x2, -1) if log else F.softmax(x2, -1)
        acc = softmax_int(x2.detach(), 4, out, log=log, training=True)
        y2 = ref + (acc.to(dtype) - ref).detach()
        (y2 * g).sum().backward()
        assert y.dtype == dtype and torch.equal(y, y2)
        assert torch.allclose(x.grad, x2.grad, rtol=1e-6, atol=1e-7)


def _recipe():
    from lnn_core.testing import isolated_host
    from lnn_ops_builtin import plugin

    return isolated_host([plugin]).recipes["pow2-sym-halfup"]


def _fixed_or_ema(recipe, n_o):
    from lnn_core.quant.observers import FixedExponent

    return ActQuantizer(8, recipe) if n_o is None else ActQuantizer(8, recipe, observer=FixedExponent(n_o))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fused_output_quantizer_node_equals_the_two_node_path(data):
    """Training's softmax with its observing output quantizer in one node (``_ChipSoftmaxQuant``) gives the same
    values, gradients and observer state, step after step, as the chip-value node followed by the quantizer
    (``out_q(_ChipSoftmax.apply(x, y15, 15, False), 15)``): EMA exponents and fixed ones in and out of
    ``0..15`` (outside, the node takes the quantizer's own fake-quant), saturating rows, float32 and float64."""
    from lnn_ops_builtin.softmax import _chip_acc, _ChipSoftmax

    recipe = _recipe()
    n_x = data.draw(st.integers(0, 8), label="n_x")
    n_o = data.draw(st.sampled_from([None, None, -2, 0, 3, 7, 8, 15]), label="n_o")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    shape = data.draw(st.sampled_from([(4, 9), (2, 3, 17), (3, 1), (2, 5, 64)]), label="shape")
    spread = data.draw(st.sampled_from([1, 8, 128]), label="spread")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed)
    fused, plain = _fixed_or_ema(recipe, n_o), _fixed_or_ema(recipe, n_o)
    for _ in range(3):
        q = torch.randint(-spread, spread, shape, generator=gen).clamp(-128, 127)
        x = (q.to(dtype) * 2.0**-n_x).requires_grad_()
        g = torch.randn(shape, generator=gen, dtype=dtype)
        y = softmax_int(x, n_x, fused, training=True)
        y.backward(g)
        x2 = x.detach().clone().requires_grad_()
        y2 = plain(_ChipSoftmax.apply(x2, _chip_acc(x2, n_x, False, True), 15, False), 15)
        y2.backward(g)
        assert y.dtype == dtype and torch.equal(y, y2)
        assert torch.equal(x.grad, x2.grad)
        for name in ("running", "exponent", "num_batches"):
            assert torch.equal(getattr(fused, name), getattr(plain, name)), name
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "_ChipSoftmaxQuantBackward"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_matmul_and_its_output_quantizer_in_one_node_equal_the_two_nodes(data):
    """Training's matmul with its observing output quantizer in one node (``_MatmulQuant``) gives the same values
    and observer state, step after step, as ``out_q(torch.matmul(x, y), cap)``, and the same gradients to both
    operands bit for bit (torch sums a 2-D column-major operand's gradient in another order): ranks 2, 3 and 4,
    either operand contiguous or a transposed view (as attention's ``k^T``), EMA exponents and
    fixed ones (saturating, and below 0, where the node takes the quantizer's own fake-quant), float32 and float64."""
    from lnn_ops_builtin.bmm import _MatmulQuant

    recipe = _recipe()
    n_o = data.draw(st.sampled_from([None, None, -2, 0, 4, 9]), label="n_o")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    lead = data.draw(st.sampled_from([(), (3,), (2, 2)]), label="batch dims")
    m, k, n = (data.draw(st.integers(1, 9), label=f"dim {c}") for c in "mkn")
    x_view, y_view = (data.draw(st.booleans(), label=f"{c} a transposed view") for c in "xy")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed)
    fused, plain = _fixed_or_ema(recipe, n_o), _fixed_or_ema(recipe, n_o)

    def operand(t: torch.Tensor, view: bool) -> torch.Tensor:
        return t.transpose(-1, -2) if view else t

    for _ in range(3):
        xs, ys = ((k, m) if x_view else (m, k)), ((n, k) if y_view else (k, n))
        x = (torch.randint(-128, 128, (*lead, *xs), generator=gen).to(dtype) / 16).requires_grad_()
        yt = (torch.randint(-128, 128, (*lead, *ys), generator=gen).to(dtype) / 8).requires_grad_()
        g = torch.randn(*lead, m, n, generator=gen, dtype=dtype)
        z = _MatmulQuant.apply(operand(x, x_view), operand(yt, y_view), fused, 7)
        z.backward(g)
        x2, yt2 = x.detach().clone().requires_grad_(), yt.detach().clone().requires_grad_()
        z2 = plain(torch.matmul(operand(x2, x_view), operand(yt2, y_view)), 7)
        z2.backward(g)
        assert z.dtype == dtype and torch.equal(z, z2)
        for got, want in ((x.grad, x2.grad), (yt.grad, yt2.grad)):
            assert torch.equal(got, want)
        for name in ("running", "exponent", "num_batches"):
            assert torch.equal(getattr(fused, name), getattr(plain, name)), name


def test_a_hooked_output_quantizer_sees_its_call_in_training(host):
    """The matmul and softmax training steps take their output quantizer into their own node only when nothing
    waits to see the quantizer's call: with a forward hook on it, the hook runs and the values are the same."""
    torch.manual_seed(0)
    model = lnn.init(Attention(d=8), host=host)
    x = torch.randn(2, 5, 8)
    model(x)  # the first step: every input exponent is known afterwards
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(x)
    model.load_state_dict(state)
    ops = [m for m in model.modules() if isinstance(m, (QBmm, QSoftmax))]
    assert len(ops) == 3
    seen = []
    owner = {id(m.out_q): type(m).__name__ for m in ops}
    for m in ops:
        m.out_q.register_forward_hook(lambda mod, args, out: seen.append(owner[id(mod)]))
    hooked = model(x)
    assert sorted(seen) == ["QBmm", "QBmm", "QSoftmax"]
    assert torch.equal(plain, hooked)
    hooked.sum().backward()


def test_training_computes_the_chip_probabilities_with_float_gradients(host):
    """Before the output quantizer, training's value is the chip's Q15 probability (so the output is on its grid
    and eval's integers when the observers are frozen); the gradient is the float softmax's."""
    torch.manual_seed(1)
    m = lnn.init(seq(fc=nn.Linear(16, 32), sm=nn.Softmax(-1)), host=host)
    m(torch.randn(8, 16))
    x = torch.randn(8, 16, requires_grad=True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    sm = dict(_mods(m, QSoftmax))["sm"]
    n_o = sm.out_q.current()
    assert torch.equal(torch.floor(y.detach() * 2.0 ** n_o), y.detach() * 2.0 ** n_o)
    for q in m.modules():
        if isinstance(q, ActQuantizer):
            q.observe = False
    with torch.no_grad():
        y_train = m(x)
        m.eval()
        y_eval = m(x)
    d = (y_train - y_eval).abs() * 2.0 ** sm.out_q.eval_exponent(15)
    assert d.max() <= 1 and (d > 0).float().mean() < 0.02


def test_functional_forms_for_attention_modules(host):
    """softmax_int / bmm_int take the caller's own output quantizer: an attention module composes them."""
    recipe = host.recipes[host.targets["csk60xx"].recipe]
    out = ActQuantizer(8, recipe)
    x = torch.randint(-128, 128, (2, 3, 9)).float() / 8
    y = softmax_int(x, 3, out, training=True)
    assert y.shape == x.shape and out.current() <= 15
    y_eval = softmax_int(x, 3, out)
    q = (x.double() * 8).long().numpy()
    n_o = out.eval_exponent(15)
    np.testing.assert_array_equal(y_eval.double().numpy() * 2.0 ** n_o, _ref(q, 3, n_o, False))


# -- lnn.verify bit-exact ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [
    (lambda: seq(fc=nn.Linear(16, 32), sm=nn.Softmax(-1)), (4, 16)),
    (lambda: seq(fc=nn.Linear(16, 32), sm=nn.LogSoftmax(-1)), (1, 10, 16)),
    (lambda: Attention(), (2, 8, 16)),
    (lambda: Attention(d=32, heads=4), (2, 7, 32)),
    (lambda: Attention(spelling="bmm"), (1, 12, 16)),
    (lambda: Rows2D(), (9, 16)),
], ids=["linear-softmax-2d", "linear-logsoftmax-3d", "self-attention", "four-heads-4d", "bmm", "matmul-2d"])
def test_verify_is_bit_exact_after_qat(make, shape, host):
    m = _qat(make(), shape, host)
    report = lnn.verify(m, torch.randn(*shape) * 2, host=host)
    assert report.ok, report.table()
    assert all(t.mismatches == 0 for t in report.tensors)


def test_four_dim_operands_fold_to_three_dim_bmm(host):
    m = _qat(Attention(d=32, heads=4), (2, 7, 32), host)
    graph = to_ir(m, torch.randn(2, 7, 32), host=host)
    bmms = [n for n in graph.nodes if n.op_type == "BmmInt"]
    assert len(bmms) == 2 and all(len(graph.tensors[t].shape) == 3 for n in bmms for t in n.inputs)
    assert graph.tensors[bmms[0].inputs[0]].shape == (8, 7, 8)


# -- bad inputs: one clear error each --------------------------------------------------------------------------

def test_softmax_over_another_dim_is_refused_at_init_with_the_module_named(host):
    model = seq(fc=nn.Linear(4, 8), sm=nn.Softmax(dim=-2), fc2=nn.Linear(8, 8), lsm=nn.LogSoftmax(dim=0))
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(model, host=host)
    found = {(v.op_name, v.rule_id): v for v in exc.value.violations}
    assert set(found) == {("sm", "csk60xx.softmax.dim")}  # dim=0 may be the last: judged at the first forward
    assert found[("sm", "csk60xx.softmax.dim")].actual == "dim=-2" and "dim=-1" in found[("sm",
                                                                                          "csk60xx.softmax.dim")].limit
    m = lnn.init(seq(fc=nn.Linear(4, 8), sm=nn.Softmax(dim=1)), host=host)
    with pytest.raises(LnnError) as exc:
        m(torch.randn(2, 3, 4))
    e = exc.value
    assert str(e).splitlines()[0] == "softmax 'sm': dim=1 of a rank-3 input is not the last dimension"
    assert (e.rule, e.limit, e.actual, e.node) == ("csk60xx.softmax.dim", -1, 1, "sm") and "transpose" in e.hint
    m(torch.randn(2, 4))  # dim=1 of a 2-D input is the last: fine


def test_a_row_over_2048_is_one_clear_error(host):
    m = lnn.init(seq(fc=nn.Linear(4, 2049), sm=nn.Softmax(-1)), host=host)
    with pytest.raises(LnnError) as exc:
        m(torch.randn(1, 4))
    e = exc.value
    assert str(e).splitlines()[0] == "softmax 'sm': a row of 2049 elements"
    assert (e.rule, e.limit, e.actual) == ("csk60xx.softmax.row", 2048, 2049) and "2048" in e.hint
    lnn.init(seq(fc=nn.Linear(4, 2048), sm=nn.Softmax(-1)), host=host)(torch.randn(1, 4))


def test_matmul_shapes_the_chip_cannot_run_are_one_clear_error(host):
    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)

        def forward(self, x, y):
            return self.a(x) @ self.b(y).transpose(-1, -2)

    m = lnn.init(Broadcast(), host=host)
    with pytest.raises(LnnError) as exc:
        m(torch.randn(2, 3, 4), torch.randn(1, 5, 4))
    assert exc.value.rule == "csk60xx.bmm.batch" and "expand" in exc.value.hint
    with pytest.raises(LnnError) as exc:
        m(torch.randn(1, 3, 4), torch.randn(1, 8200, 4))
    assert exc.value.rule == "csk60xx.bmm.right_matrix" and exc.value.actual == "65600 bytes"
    m(torch.randn(1, 3, 4), torch.randn(1, 4096, 4))  # ALIGN8(8) * 4096 = 32 KB: fits


def test_matmul_with_a_parameter_is_reported_unsupported(host):
    class WeightMatmul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.w = nn.Linear(4, 8), nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            return self.fc(x) @ self.w

    with pytest.raises(UnsupportedOpError) as exc:
        lnn.init(WeightMatmul(), config=lnn.QuantConfig(strict=True), host=host)
    assert "matmul" in str(exc.value).splitlines()[0] and exc.value.hint
    with pytest.warns(UnsupportedOpWarning, match="matmul"):  # by default: a float island, and the model runs
        m = lnn.init(WeightMatmul(), host=host)
    assert m(torch.randn(2, 4)).shape == (2, 3)


# -- QDQ -----------------------------------------------------------------------------------------------------------

def test_qdq_form_runs_in_onnxruntime_and_mostly_agrees(host, tmp_path, capsys):
    """QDQ writes float Softmax / LogSoftmax / MatMul between DequantizeLinear/QuantizeLinear: MatMul is exact, the
    softmax core is not (the chip's is fixed point), so the agreement with eval is measured and printed."""
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att, self.fc = Attention(d=16, heads=2), nn.Linear(16, 10)

        def forward(self, x):
            a = self.att(x)
            return F.softmax(self.fc(a), -1), F.log_softmax(self.fc(a), -1), a

    shape = (8, 6, 16)
    m = _qat(Heads(), shape, host)
    x = torch.randn(*shape)
    path = tmp_path / "att.onnx"
    proto = lnn.export(m, x, str(path), dialect="qdq", host=host)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Softmax", "LogSoftmax", "MatMul"} <= ops
    with torch.no_grad():
        want = [t.numpy() for t in m(x)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    rates = {}
    for name, g, w, out in zip(("softmax", "log-softmax", "attention"), got, want, m.graph.find_nodes(op="output")[0]
                               .args[0]):
        step = 2.0 ** -m.get_submodule(str(out.target)).out_q.eval_exponent(25)
        d = np.abs(g.astype(np.float64) - w) / step
        assert np.array_equal(d, np.round(d)) and d.max() <= 2, (name, d.max())
        rates[name] = float((d == 0).mean())
    assert rates["softmax"] >= 0.9 and rates["log-softmax"] >= 0.9 and rates["attention"] >= 0.8, rates
    with capsys.disabled():
        print("\nSoftmaxInt / LogSoftmaxInt / BmmInt QDQ (float Softmax, LogSoftmax, MatMul) vs eval: "
              + ", ".join(f"{k} {v:.1%} equal" for k, v in rates.items()))


# -- the "not bit-verified" mark -----------------------------------------------------------------------------------

def test_lnn_rules_marks_the_softmax_ops_not_bit_verified(host):
    """The HiFi softmax core is closed (spec 2.4.6): lnn rules (text and Markdown) marks SoftmaxInt and
    LogSoftmaxInt, and the families that export to them, and nothing else."""
    from lnn_core.rules_doc import rules_markdown, rules_text

    md = rules_markdown(host)
    section = md.split("### Ops of `csk60xx` not bit-verified against the vendor")[1]
    assert "| `LogSoftmaxInt` | `builtin.LogSoftmax` |" in section and "| `SoftmaxInt` | `builtin.Softmax` |" in section
    marked = [line.split("|")[1].strip() for line in md.splitlines()
              if line.startswith("| `builtin.") and "not bit-verified against the vendor (csk60xx)" in line]
    assert marked == ["`builtin.LogSoftmax`", "`builtin.Softmax`"]
    text = rules_text(host)
    assert "ops not bit-verified against the vendor" in text
    tail = text.split("ops not bit-verified against the vendor")[1].splitlines()[1:]
    assert tail == ["    LogSoftmaxInt  [from builtin.LogSoftmax]", "    SoftmaxInt  [from builtin.Softmax]"]
