"""LayerNorm (``nn.LayerNorm``, ``F.layer_norm``; last dim or last two; affine or not) end to end: the QAT module's
eval integers against a reference written from spec/int8-seq-ops.md 2.3.4, training that computes the chip's
integers with float gradients, ``lnn.verify`` bit-exact tensor by tensor after QAT steps, the rules at ``lnn.init``
and the QDQ form's agreement with eval.
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
from lnn_core.errors import HardwareLimitError
from lnn_core.exporter import to_ir
from lnn_core.quant.qmodule import QuantStub
from lnn_core.quant.quantizers import ActQuantizer
from lnn_ops_builtin.layernorm import NORM_Q, QLayerNorm, normalize_f64, normalize_int

# -- a reference written from the spec (independent of lnn_ops_builtin.layernorm) ------------------------------

_TBL = np.array([min(32767, math.floor(2.0 ** 14 / math.sqrt((i + 256) / 1024))) for i in range(768)], np.int64)


def _ref_u(q: np.ndarray, n_x: int, t: int) -> np.ndarray:
    """spec 2.3.4: the normalized value u (Q10) of int8 rows of length t."""
    rows = q.reshape(-1, t).astype(np.int64)
    s1, s2 = rows.sum(1), (rows * rows).sum(1)
    f = np.float32(np.float32(np.float32(1e-5) * np.float32(2.0 ** (2 * n_x))) * np.float32(t))
    q_eps = math.floor(float(np.float32(f * np.float32(t))) + 0.5)
    out = np.empty_like(rows)
    for i, (a, b, row) in enumerate(zip(s1, s2, rows)):
        d = int(t * b - a * a + q_eps)  # no int32 wrap for t <= 362
        if d == 0:
            r, sh = _TBL[0], 4
        else:
            k = (d.bit_length() - 1) // 2
            norm = d >> (2 * k - 8) if 2 * k >= 8 else d << (8 - 2 * k)
            r, sh = _TBL[norm - 256], k + 5
        num = t * row - a
        out[i] = np.clip((num * r + (1 << (sh - 1))) >> sh, -32768, 32767)
    return out.reshape(q.shape)


def _ref_y(q, gamma, beta, n_x, n_g, n_o):
    t = gamma.size
    u = _ref_u(q, n_x, t).reshape(-1, t)
    acc = u * gamma.reshape(1, -1) + beta.reshape(1, -1)
    s = 10 + n_g - n_o
    y = acc if s == 0 else (acc + (1 << (s - 1))) >> s
    return np.clip(y, -128, 127).reshape(q.shape)


def seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


class FunctionalLN(nn.Module):
    """``Linear -> F.layer_norm(weight?, bias?) -> Linear``."""

    def __init__(self, d: int = 24, weight: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, d), nn.Linear(d, 4)
        self.w = nn.Parameter(torch.rand(d) + 0.5) if weight else None
        self.beta = nn.Parameter(torch.randn(d) * 0.2) if bias else None
        self.d = d

    def forward(self, x):
        return self.b(F.layer_norm(self.a(x), (self.d,), self.w, self.beta, 1e-5))


class ConvLN(nn.Module):
    """A conv net with LayerNorm over the last dim (W), and a non-affine one over the last two."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.ln1, self.ln2 = nn.LayerNorm(12), nn.LayerNorm([6, 12], elementwise_affine=False)

    def forward(self, x):
        return self.ln2(self.c2(torch.relu(self.ln1(self.c1(x)))))


def _qat(model: nn.Module, shape: tuple[int, ...], host, steps: int = 4) -> nn.Module:
    torch.manual_seed(0)
    m = lnn.init(model, host=host)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(m(torch.randn(*shape)), torch.randn_like(m(torch.randn(*shape))))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _lns(m: nn.Module) -> list[tuple[str, QLayerNorm]]:
    return [(p, mod) for p, mod in m.named_modules() if isinstance(mod, QLayerNorm)]


# -- spellings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: seq(fc=nn.Linear(16, 24), ln=nn.LayerNorm(24)),
    lambda: seq(fc=nn.Linear(16, 24), ln=nn.LayerNorm(24, elementwise_affine=False)),
    lambda: seq(fc=nn.Linear(16, 24), ln=nn.LayerNorm(24, bias=False)),
    lambda: FunctionalLN(),
    lambda: FunctionalLN(weight=False, bias=False),
    lambda: FunctionalLN(weight=True, bias=False),
], ids=["module", "module-no-affine", "module-no-bias", "function", "function-no-affine", "function-no-bias"])
def test_every_spelling_becomes_the_qat_module(make, host):
    m = lnn.init(make(), host=host)
    assert [op for op in m.lnn.ops.values() if op == "builtin.LayerNorm"] == ["builtin.LayerNorm"]
    assert len(_lns(m)) == 1


# -- eval = the chip's integers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [
    (lambda: seq(fc=nn.Linear(16, 40), ln=nn.LayerNorm(40)), (3, 7, 16)),
    (lambda: FunctionalLN(d=5, weight=False, bias=False), (9, 16)),
    (lambda: ConvLN(), (2, 3, 6, 12)),
], ids=["linear", "function-no-affine-T5", "conv-two-dims"])
def test_eval_integers_equal_the_spec_reference(make, shape, host):
    m = _qat(make(), shape, host)
    seen = {}

    def grab(mod, args, out):
        seen[mod] = (args[0].detach(), out.detach())

    hooks = [mod.register_forward_hook(grab) for _, mod in _lns(m)]
    with torch.no_grad():
        m(torch.randn(*shape) * 3)
    for h in hooks:
        h.remove()
    for _, mod in _lns(m):
        x, y = seen[mod]
        p = mod.integer_params()
        q = torch.floor(x.double() * 2.0 ** p["n_x"] + 0.5).numpy().astype(np.int64)
        assert np.abs(q).max() <= 128
        want = _ref_y(q, p["gamma"].numpy().reshape(-1), p["beta"].numpy().reshape(-1), p["n_x"], p["n_g"], p["n_o"])
        got = y.double().numpy() * 2.0 ** p["n_o"]
        np.testing.assert_array_equal(got, want)
        assert p["n_o"] <= 10 + p["n_g"] and p["gamma"].abs().max() <= 32767


def test_gamma_is_int16_by_the_floor_rule_and_beta_at_10_plus_n_g(host):
    m = lnn.init(seq(fc=nn.Linear(4, 8), ln=nn.LayerNorm(8)), host=host)
    ln = dict(_lns(m))["ln"]
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-1.5, 0.9, 8))
        ln.bias.copy_(torch.linspace(-0.3, 0.3, 8))
    m(torch.randn(2, 4))
    m.eval()
    m(torch.randn(2, 4))
    p = ln.integer_params()
    assert p["n_g"] == math.floor(math.log2(32767 / 1.5)) == 14
    assert p["gamma"].tolist() == [math.floor(v * 2 ** 14 + 0.5) for v in torch.linspace(-1.5, 0.9, 8).double()]
    assert p["beta"].tolist() == [math.floor(v * 2 ** 24 + 0.5) for v in torch.linspace(-0.3, 0.3, 8).double()]


def test_training_computes_the_chip_integers_with_float_gradients(host):
    """In training the output before the output quantizer is u * gamma_q + beta_q with the chip's u; the gradient
    reaches the input, gamma and beta (the float LayerNorm's, straight through)."""
    torch.manual_seed(1)
    m = lnn.init(seq(fc=nn.Linear(16, 32), ln=nn.LayerNorm(32)), host=host)
    m(torch.randn(8, 16))  # observers warm up
    ln = dict(_lns(m))["ln"]
    x = torch.randn(8, 16, requires_grad=True)
    y = m(x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert ln.weight.grad.abs().sum() > 0 and ln.bias.grad.abs().sum() > 0
    n_o = ln.out_q.current()
    assert torch.equal(torch.floor(y.detach() * 2.0 ** n_o), y.detach() * 2.0 ** n_o)  # on the int8 grid
    # with the observers frozen, training uses eval's exponents: its outputs are eval's integers, up to the float32
    # rounding of the fake quantizers on ties (at most one step on a few elements)
    for q in m.modules():
        if isinstance(q, ActQuantizer):
            q.observe = False
    with torch.no_grad():
        y_train = m(x)
        m.eval()
        y_eval = m(x)
    d = (y_train - y_eval).abs() * 2.0 ** ln.out_q.eval_exponent()
    assert d.max() <= 1 and (d > 0).float().mean() < 0.02


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_normalize_int_equals_the_spec_reference(data):
    """normalize_int (float64 per-element steps) and normalize_f64 on float32 integers (training's input) equal the
    integer reference on random rows: short, long, constant, extreme and narrow-range rows, every kernel input
    exponent."""
    t = data.draw(st.sampled_from([1, 2, 4, 5, 16, 64, 100, 362]), label="t")
    n_x = data.draw(st.integers(0, 15), label="n_x")
    lo = data.draw(st.integers(-128, 127), label="lo")
    hi = data.draw(st.integers(lo, 127), label="hi")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    q = torch.randint(lo, hi + 1, (4, t), generator=torch.Generator().manual_seed(seed))
    q[0] = data.draw(st.sampled_from([-128, 127, 0, lo]), label="constant row")
    want = _ref_u(q.numpy(), n_x, t)
    np.testing.assert_array_equal(normalize_int(q, n_x, t).numpy(), want)



def test_training_node_has_the_chip_value_and_the_float_gradient(host):
    """The one autograd node of training's LayerNorm: the same value and gradients (input, gamma, beta) as
    ``ref + (chip - ref).detach()`` with ``ref`` the float LayerNorm at the fake-quantized gamma and beta."""
    torch.manual_seed(2)
    m = lnn.init(seq(fc=nn.Linear(16, 32), ln=nn.LayerNorm(32)), host=host)
    with torch.no_grad():
        m.ln.weight.uniform_(-1.5, 1.5)
        m.ln.bias.uniform_(-0.5, 0.5)
    m(torch.randn(8, 16))
    ln = dict(_lns(m))["ln"]
    ln.out_q.quant = False  # the value before the output quantizer
    n_x = ln.in_exponent(0)
    assert n_x <= 15  # the kernel takes the input as it is (no Requant)
    x = (torch.randint(-128, 128, (3, 5, 32)).float() * 2.0**-n_x).requires_grad_()  # on the input's grid
    y = ln(x)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    grads = [x.grad, ln.weight.grad, ln.bias.grad]
    x2 = x.detach().clone().requires_grad_()
    w2, b2 = ln.weight.detach().clone().requires_grad_(), ln.bias.detach().clone().requires_grad_()
    n_g = ln.integer_params()["n_g"]
    g_q = w2 + ((w2.detach().double() * 2**n_g + 0.5).floor() / 2**n_g - w2.detach().double()).float()
    b_q = b2 + ((b2.detach().double() * 2 ** (NORM_Q + n_g) + 0.5).floor() / 2 ** (NORM_Q + n_g)
                - b2.detach().double()).float()
    u = torch.from_numpy(_ref_u((x2.detach().double() * 2.0**n_x).long().numpy(), n_x, 32)).double()
    chip = (u * 2.0**-NORM_Q * g_q.detach().double() + b_q.detach().double()).float()
    ref = F.layer_norm(x2, (32,), g_q, b_q, ln.eps)
    y2 = ref + (chip - ref).detach()
    (y2 * gy).sum().backward()
    assert torch.equal(y, y2)
    for got, want in zip(grads, [x2.grad, w2.grad, b2.grad]):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fused_output_quantizer_node_equals_the_two_node_path(data):
    """Training's LayerNorm with its observing output quantizer in one node (``_ChipLayerNormQuant``) gives the
    same values, gradients (input, gamma, beta) and observer state, step after step, as the chip-value node followed
    by the quantizer (``out_q(_ChipLayerNorm.apply(...), 10 + n_g)``): EMA exponents and fixed ones (saturating,
    and below 0, where the node takes the quantizer's own fake-quant), float32 and float64, inputs on their grid."""
    import copy

    from lnn_backend_csk60xx import plugin as backend_plugin
    from lnn_core.quant.observers import FixedExponent
    from lnn_core.quant.quantizers import fake_quant_weight_bias
    from lnn_core.testing import isolated_host
    from lnn_ops_builtin import plugin
    from lnn_ops_builtin.layernorm import GAMMA_BITS, _ChipLayerNorm, kernel_takes

    host = isolated_host([plugin, backend_plugin])  # a hypothesis test takes no function-scoped fixture
    t = data.draw(st.sampled_from([4, 24, 64]), label="t")
    n_o = data.draw(st.sampled_from([None, None, -1, 2, 9]), label="n_o")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    gain = data.draw(st.sampled_from([0.2, 1.0, 3.0]), label="gamma scale")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    torch.manual_seed(seed)
    m = lnn.init(seq(fc=nn.Linear(8, t), ln=nn.LayerNorm(t)), host=host).to(dtype)
    ln = dict(_lns(m))["ln"]
    with torch.no_grad():
        ln.weight.uniform_(-gain, gain)
        ln.bias.uniform_(-gain, gain)
    m(torch.randn(6, 8, dtype=dtype))  # the input exponent
    if n_o is not None:
        ln.out_q = ActQuantizer(8, ln.recipe, observer=FixedExponent(n_o), cap=ln.output_cap)
    n_x = ln.in_exponent(0)
    for _ in range(3):
        plain = copy.deepcopy(ln.out_q)
        x = (torch.randint(-128, 128, (2, 3, t)).to(dtype) * 2.0**-n_x).requires_grad_()
        w2, b2 = ln.weight.detach().clone().requires_grad_(), ln.bias.detach().clone().requires_grad_()
        ln.weight.grad = ln.bias.grad = None
        y = ln(x)
        gy = torch.randn_like(y)
        y.backward(gy)
        x2 = x.detach().clone().requires_grad_()
        g_q, b_q, n_g = fake_quant_weight_bias(w2, b2, NORM_Q, GAMMA_BITS, ln.recipe)
        q, n_k = ln._int_input(x2, n_x)
        y2 = plain(_ChipLayerNorm.apply(x2, g_q, b_q, normalize_f64(q, n_k, t), (t,), ln.eps), NORM_Q + n_g)
        y2.backward(gy)
        assert y.dtype == dtype and torch.equal(y, y2)
        kernel = dtype == torch.float32 and kernel_takes(x, g_q, b_q)  # the C kernel's node (float32), or torch's
        assert type(y.grad_fn).__name__ == ("_ChipLayerNormKernelBackward" if kernel else "_ChipLayerNormQuantBackward")
        for got, want in ((x.grad, x2.grad), (ln.weight.grad, w2.grad), (ln.bias.grad, b2.grad)):
            assert torch.equal(got, want)
        for name in ("running", "exponent", "num_batches"):
            assert torch.equal(getattr(ln.out_q, name), getattr(plain, name)), name


# -- lnn.verify bit-exact ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [
    (lambda: seq(fc1=nn.Linear(16, 32), ln=nn.LayerNorm(32), fc2=nn.Linear(32, 8)), (1, 10, 16)),
    (lambda: seq(fc1=nn.Linear(16, 32), ln=nn.LayerNorm(32), fc2=nn.Linear(32, 8)), (5, 16)),
    (lambda: FunctionalLN(), (2, 6, 16)),
    (lambda: FunctionalLN(weight=False, bias=False), (4, 16)),
    (lambda: ConvLN(), (1, 3, 6, 12)),
], ids=["linear-3d", "linear-2d", "function", "function-no-affine", "conv"])
def test_verify_is_bit_exact_after_qat(make, shape, host):
    m = _qat(make(), shape, host)
    report = lnn.verify(m, torch.randn(*shape) * 2, host=host)
    assert report.ok, report.table()
    names = [t.name for t in report.tensors]
    assert len(names) >= 3 and all(t.mismatches == 0 for t in report.tensors)


def test_an_input_finer_than_2_15_is_requantized_for_the_kernel(host):
    """The kernel takes n_x <= 15 (it forms 1 << 2 n_x as a C int): a LayerNorm on tiny values (n_x 19 here) gets
    a Requant to exponent 15 in front, which the QAT module computes too; verify is bit-exact."""
    torch.manual_seed(2)
    m = lnn.init(seq(ln=nn.LayerNorm(8), fc=nn.Linear(8, 4)), host=host)
    for _ in range(3):
        m(torch.randn(2, 5, 8) * 1e-4)
    m.eval()
    x = torch.randn(2, 5, 8) * 1e-4
    ln = dict(_lns(m))["ln"]
    p = ln.integer_params()
    assert p["n_x"] > 15 and p["n_k"] == 15
    report = lnn.verify(m, x, host=host)
    assert report.ok, report.table()
    graph = to_ir(m, x, host=host)
    ops = [n.op_type for n in graph.nodes]
    assert ops[ops.index("LayerNormInt") - 1] == "Requant"
    assert graph.tensors[graph.nodes[ops.index("LayerNormInt")].inputs[0]].exponent == 15
    stub = next(mod for mod in m.modules() if isinstance(mod, QuantStub))
    with torch.no_grad():
        xq = stub(x)
        y = ln(xq)
    q = torch.floor(xq.double() * 2.0 ** p["n_x"] + 0.5).numpy().astype(np.int64)
    s = p["n_x"] - 15
    q15 = np.clip((q + (1 << (s - 1))) >> s, -128, 127)
    want = _ref_y(q15, p["gamma"].numpy(), p["beta"].numpy(), 15, p["n_g"], p["n_o"])
    np.testing.assert_array_equal(y.double().numpy() * 2.0 ** p["n_o"], want)


@pytest.mark.parametrize("make, producer, d_in", [(lambda: seq(fc=nn.Linear(8, 8), ln=nn.LayerNorm(8)), "fc", 8),
                                                  (lambda: FunctionalLN(8), "a", 16)])
def test_an_input_exponent_below_0_is_refused_at_the_first_quantized_forward(make, producer, d_in, host):
    """The default recipe keeps activation exponents >= 0 (it saturates instead); a configuration that puts a
    LayerNorm's input below (here a fixed exponent -2 on its producer) has no kernel form (it forms 1 << 2 n_x):
    the first training forward says so, naming the module, in eval too, not the export after the training."""
    from lnn_core.errors import LnnError

    below = lnn.LayerConfig(act_observer=lnn.FixedExponent.with_args(n=-2))
    m = lnn.init(make(), config=lnn.QuantConfig(by_path={producer: below}), host=host)
    x = torch.randn(4, 5, d_in)
    with pytest.raises(LnnError) as err:
        m(x)
    e = err.value
    ((path, _),) = _lns(m)
    assert (e.rule, e.node, e.limit, e.actual) == ("csk60xx.layernorm.in_exponent", path, 0, -2)
    assert str(e).splitlines()[0] == f"LayerNorm {path!r}: input exponent -2" and "hint:" in str(e)
    m.eval()
    with pytest.raises(LnnError, match="input exponent -2"):
        m(x)
    fine = lnn.init(make(), host=host)  # the default recipe: no exponent below 0 however large the input
    for _ in range(3):
        fine(x * 1000.0)
    assert dict(_lns(fine))[path].in_exponent(0) == 0


def test_a_hooked_output_quantizer_sees_its_call_in_training(host):
    """The training step takes its output quantizer into its own node only when nothing waits to see the
    quantizer's call: with a forward hook on it, the hook runs and the values are the same."""
    torch.manual_seed(0)
    model = lnn.init(seq(fc=nn.Linear(8, 8), ln=nn.LayerNorm(8)), host=host)
    x = torch.randn(4, 5, 8)
    model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(x)
    model.load_state_dict(state)
    (_, ln), = _lns(model)
    seen = []
    ln.out_q.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    hooked = model(x)
    assert seen == [hooked.shape] and torch.equal(plain, hooked)


# -- rules at lnn.init ---------------------------------------------------------------------------------------------

def test_every_layernorm_limit_is_reported_at_init_at_once(host):
    model = seq(fc=nn.Linear(4, 400), big=nn.LayerNorm(400), fc2=nn.Linear(400, 3), small=nn.LayerNorm(3),
                fc3=nn.Linear(3, 8), eps=nn.LayerNorm(8, eps=1e-3))
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(model, host=host)
    found = {(v.op_name, v.rule_id): v for v in exc.value.violations}
    assert set(found) == {("big", "csk60xx.layernorm.row"), ("small", "csk60xx.layernorm.row"),
                          ("eps", "csk60xx.layernorm.eps")}
    big = found[("big", "csk60xx.layernorm.row")]
    assert (big.limit, big.actual) == ("4 <= T <= 362", "row of 400") and "at most 362" in big.hint
    assert found[("small", "csk60xx.layernorm.row")].actual == "row of 3"
    assert found[("eps", "csk60xx.layernorm.eps")].actual == "eps 0.001"
    first = str(exc.value).splitlines()[0]
    assert first.startswith("op 'big' (builtin.LayerNorm) does not fit target csk60xx; 3 violations")


# -- QDQ -----------------------------------------------------------------------------------------------------------

def test_qdq_form_runs_in_onnxruntime_and_mostly_agrees(host, tmp_path, capsys):
    """QDQ writes a float layer norm between DequantizeLinear/QuantizeLinear: not exact (the chip uses an rsqrt
    table), so the agreement is measured: most outputs equal, none more than one step off."""
    rates = {}
    for name, make, shape, far in (("linear", lambda: seq(fc1=nn.Linear(16, 32), ln=nn.LayerNorm(32)), (8, 8, 16), 1),
                                   ("conv", ConvLN, (8, 3, 6, 12), 3)):  # conv: ln1's differences pass a conv
        m = _qat(make(), shape, host)
        x = torch.randn(*shape)
        path = tmp_path / f"{name}.onnx"
        proto = lnn.export(m, x, str(path), dialect="qdq", host=host)
        assert "ReduceMean" in [n.op_type for n in proto.graph.node]
        # gamma is int16 in the IR but written as float32: the file stays at opset 13
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
        with torch.no_grad():
            want = m(x).numpy()
        step = 2.0 ** -_lns(m)[-1][1].out_q.eval_exponent()  # both models end in a LayerNorm
        for optimize in (False, True):
            options = ort.SessionOptions()
            if not optimize:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            d = np.abs(got.astype(np.float64) - want) / step
            assert np.array_equal(d, np.round(d)), f"{name}: off the output grid"
            rates[name] = float((d == 0).mean())
            assert d.max() <= far, f"{name}: {d.max()} steps off"
            assert rates[name] >= 0.8, rates
    with capsys.disabled():
        print("\nLayerNormInt QDQ (float layer norm) vs eval: "
              + ", ".join(f"{k} {v:.1%} equal" for k, v in rates.items())
              + " (the rest: linear one step off, conv at most three: two LayerNorms chained)")
