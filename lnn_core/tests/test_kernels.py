"""The C fake-quantization kernels (lnn_core.quant.kernels) against the torch operations they replace: every bit.

The torch path (``fake_quant_parts_torch``, ``tensor_bounds_torch``, ``fold_batch_norm``) is the reference; the
kernels run on both instruction sets this machine has. tests/test_qat_kernels.py compares whole training steps with
the kernels switched off through ``LNN_QAT_KERNELS=torch``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from lnn_core.errors import ConfigError  # noqa: E402
from lnn_core.quant import functional as fq  # noqa: E402
from lnn_core.quant import kernels  # noqa: E402
from lnn_core.quant.quantizers import (  # noqa: E402
    _FoldFakeQuant,
    _stateless_exponent,
    fold_batch_norm,
    fold_fake_quant_weight_bias,
)
from lnn_core.quant.recipes import Recipe  # noqa: E402

pytestmark = pytest.mark.skipif(kernels.ISA is None, reason="the C kernels are not built here (or switched off)")

ISAS = kernels.available_isas()


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint32)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == torch.float32:
        np.testing.assert_array_equal(_bits(a), _bits(b))
    else:
        assert torch.equal(a, b)


# values where the rounding can go wrong: ties at every scale, half an ulp below a tie, the saturation edges,
# subnormals, huge values, infinities and NaN
_SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 127.5, -128.5, 126.49999,
            127.49999, -128.49998, 1e-40, -1e-40, 3e38, -3e38, float("inf"), float("-inf"), 8388607.5, 16777215.0]


@st.composite
def tensors(draw, allow_nan: bool = True):
    n = draw(st.integers(1, 70))  # across the 8- and 16-wide SIMD blocks and their tails
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0, 1e4]))
    base = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(n).astype(np.float32) * scale
    picks = draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(_SPECIAL + ([float("nan")] if allow_nan
                                                                                           else []))), max_size=4))
    for i, v in picks:
        base[i] = v
    ties = draw(st.booleans())  # values on the half-integer grid of some exponent
    if ties:
        k = draw(st.integers(-3, 6))
        with np.errstate(over="ignore", invalid="ignore"):
            base = (np.floor(base * 2.0**k) + 0.5).astype(np.float32) * np.float32(2.0**-k)
    return torch.from_numpy(base.copy())


@settings(max_examples=300, deadline=None)
@given(tensors(), st.sampled_from(ISAS))
def test_bounds_equal_aminmax(x, isa):
    c = kernels.bounds(x, isa=isa)
    ref = fq.tensor_bounds_torch(x)
    if np.isnan(ref[0]):
        assert np.isnan(c[0]) and np.isnan(c[1])
    else:
        assert c == ref


@settings(max_examples=500, deadline=None)
@given(tensors(), st.integers(-6, 24), st.sampled_from([8, 16, 32]), st.booleans(), st.booleans(),
       st.sampled_from(ISAS))
def test_rounding_equals_the_torch_operations(x, n, bits, exact, with_q, isa):
    lo, hi = fq.qrange(bits)
    for clamp in (False, True):
        out, q = torch.empty_like(x), (torch.empty_like(x) if (clamp and with_q) else None)
        kernels.round_into(x, out, q, n, lo, hi, clamp, exact, isa=isa)
        s = 2.0**n
        if exact:
            r = torch.rsub(x.double(), 0.5, alpha=-s).floor_().to(torch.float32)
        else:
            r = torch.rsub(x, 0.5, alpha=-s).floor_()
        if clamp:
            if q is not None:
                _same(q, r)
            r = r.clamp(lo, hi)
        _same(out, r.mul_(1.0 / s))


@settings(max_examples=400, deadline=None)
@given(tensors(), st.integers(-4, 20), st.sampled_from([8, 16, 32]), st.booleans(), st.booleans())
def test_fake_quant_parts_equal_the_torch_path(x, n, bits, exact, give_bounds):
    bounds = fq.tensor_bounds_torch(x) if give_bounds else None
    out, clip, saved = fq.fake_quant_parts(x, n, bits, bounds, exact)
    r_out, r_clip, r_saved = fq.fake_quant_parts_torch(x, n, bits, bounds, exact)
    _same(out, r_out)
    assert clip == r_clip
    _same(saved, r_saved)
    g = torch.randn_like(x)  # and the gradient the node returns from them
    _same(fq.ste_gradient(g, clip, saved), fq.ste_gradient(g, r_clip, r_saved))


@settings(max_examples=200, deadline=None)
@given(tensors(allow_nan=False), st.integers(0, 12), st.sampled_from(ISAS))
def test_in_place_rounding(x, n, isa):
    ref = torch.empty_like(x)
    kernels.round_into(x, ref, None, n, -128, 127, True, False, isa=isa)
    y = x.clone()
    kernels.round_into(y, y, None, n, -128, 127, True, False, isa=isa)
    _same(y, ref)


def test_which_tensors_the_kernels_take():
    x = torch.randn(4, 6)
    assert kernels.usable(x) and kernels.usable(nn.Parameter(x))
    assert not kernels.usable(x.t())  # not contiguous
    assert not kernels.usable(x.double()) and not kernels.usable(x.half())
    assert not kernels.usable(torch.empty(0))
    assert not kernels.usable(torch.empty(kernels.MAX_NUMEL + 1))
    assert fq.tensor_bounds(torch.empty(0)) is None  # the torch path answers for what the kernels do not take
    with pytest.raises(ValueError, match="not available"):
        kernels.bounds(x, isa="sse9")


def _batch_norm(c: int, seed: int, affine: bool, extreme: bool) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, affine=affine, eps=1e-5 if seed % 2 else 1e-3)
    bn.running_mean.copy_(torch.randn(c, generator=g) * 3)
    var = torch.rand(c, generator=g) * 4
    if extreme:  # near-zero and huge variances, tiny and huge scales
        var[: c // 2] = torch.rand(c // 2, generator=g) * 1e-7
        var[c // 2:] *= 1e6
    bn.running_var.copy_(var)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.randn(c, generator=g) * (100 if extreme else 1))
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 24), st.integers(1, 40), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 10**6),
       st.integers(-2, 12))
def test_folded_fake_quant_equals_the_torch_chain(c, k, affine, has_bias, extreme, seed, n_x):
    bn = _batch_norm(c, seed, affine, extreme)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(c, k, 1, 1, generator=g).requires_grad_()
    b = torch.randn(c, generator=g).requires_grad_() if has_bias else None
    recipe = Recipe("r")
    w_q, b_q, n_w = fold_fake_quant_weight_bias(w, b, bn, n_x, 8, recipe)
    assert w_q.grad_fn is not None and type(w_q.grad_fn).__name__.startswith("_FoldFakeQuant")
    # the reference: the torch expression of the fold, then the weight/bias node on its torch path
    w2 = w.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_() if has_bias else None
    bn2 = _batch_norm(c, seed, affine, extreme)
    w_f, b_f = fold_batch_norm(w2, b2, bn2)
    r_w, r_b, r_n = _torch_weight_bias(w_f, b_f, n_x, recipe)
    assert n_w == r_n
    _same(w_q, r_w)
    _same(b_q, r_b)
    gw, gb = torch.randn_like(w_q), torch.randn_like(b_q)
    ((w_q * gw).sum() + (b_q * gb).sum()).backward()
    ((r_w * gw).sum() + (r_b * gb).sum()).backward()
    pairs = [(w.grad, w2.grad)] + ([(b.grad, b2.grad)] if has_bias else [])
    if affine:
        pairs += [(bn.weight.grad, bn2.weight.grad), (bn.bias.grad, bn2.bias.grad)]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6 * float(want.abs().max() + 1))


class _Ste(torch.autograd.Function):
    """``value`` forward, the straight-through gradient of ``fake_quant_parts_torch``'s ``clip``/``saved`` back."""

    @staticmethod
    def forward(ctx, x, parts):
        value, ctx.clip, saved = parts
        ctx.save_for_backward(saved)
        return value

    @staticmethod
    def backward(ctx, grad):
        return fq.ste_gradient(grad, ctx.clip, ctx.saved_tensors[0]), None


def _torch_weight_bias(w_f, b_f, n_x, recipe):
    """The weight/bias fake-quant of the folded pair on the torch path only (float32, as the layer computes it)."""
    bounds = fq.tensor_bounds_torch(w_f)
    n_w = _stateless_exponent(w_f, 8, recipe, bounds)
    w_parts = fq.fake_quant_parts_torch(w_f.detach(), n_w, 8, bounds, exact=True)
    b_parts = fq.fake_quant_parts_torch(b_f.detach(), n_x + n_w, recipe.bias_bits, None, exact=True)
    return _Ste.apply(w_f, w_parts), _Ste.apply(b_f, b_parts), n_w


def test_fold_saves_the_statistics_it_used():
    bn = _batch_norm(4, 3, True, False)
    w = torch.randn(4, 3).requires_grad_()
    w_q, b_q, _ = _FoldFakeQuant.apply(w, None, bn.weight, bn.bias, bn, 4, 8, Recipe("r"))
    before = torch.autograd.grad(w_q.sum() + b_q.sum(), bn.weight, retain_graph=True)[0]
    bn.running_mean.add_(5.0)  # an in-place update after the forward does not move this step's gradient
    after = torch.autograd.grad(w_q.sum() + b_q.sum(), bn.weight)[0]
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_a_bad_kernel_choice_is_a_config_error():
    code = ("from lnn_core.errors import ConfigError\n"
            "try:\n    import lnn_core.quant.kernels\nexcept ConfigError as e:\n"
            "    print(e.option, e.value, sorted(e.valid)); print(str(e).splitlines()[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, LNN_QAT_KERNELS="fast"))
    assert r.returncode == 0, r.stderr
    first, line = r.stdout.splitlines()
    assert first == "LNN_QAT_KERNELS fast ['auto', 'portable', 'torch']"
    assert "LNN_QAT_KERNELS" in line and "'fast'" in line
    assert isinstance(ConfigError("x", {}, "y"), ValueError)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.sampled_from([1, 3, 8, 19, 64]), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1), st.sampled_from(ISAS))
def test_straight_through_gradient_and_channel_sums(outer, channels, inner, clipped, nan, seed, isa):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(outer, channels, inner, generator=g)
    q = torch.randint(-131, 131, (outer, channels, inner), generator=g).float()
    if nan:
        q.view(-1)[0] = float("nan")  # hardtanh's backward lets a NaN's gradient through; so does the kernel
    clip, saved = ((-129.0, 128.0), q) if clipped else (None, None)
    sums = torch.empty(channels)
    got = kernels.ste_into(grad, clip, saved, channels, inner, sums, isa=isa)
    want = fq.ste_gradient(grad, clip, saved)
    if nan and clipped:  # torch's hardtanh_backward zeroes a NaN's gradient in its vector loop and passes it in its
        assert got.view(-1)[0] == grad.view(-1)[0]  # scalar tail; the kernel passes it everywhere
        want.view(-1)[0] = grad.view(-1)[0]
    _same(got, want)
    torch.testing.assert_close(sums, want.sum((0, 2)), rtol=1e-5, atol=1e-5)
    assert kernels.ste_into(grad, "mask", q > 0, channels, inner, None) is None  # a boolean mask: the torch path


@settings(max_examples=300, deadline=None)
@given(tensors(), st.integers(0, 2**31 - 1), st.integers(-2, 12), st.sampled_from([1, -1]), st.sampled_from([8, 16]),
       st.booleans(), st.sampled_from(ISAS))
def test_iq_add_and_sub_equal_the_torch_operations(x, seed, n, sign, bits, give_bounds, isa):
    y = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * float(x.abs().nan_to_num().max() + 1)
    s = kernels.sum_bounds(x, y, sign)
    ref = fq.tensor_bounds_torch(x + y if sign > 0 else x - y)
    assert s == ref or (np.isnan(ref[0]) and np.isnan(s[0]) and np.isnan(s[1]))
    lo, hi = fq.qrange(bits)
    out, t = torch.empty_like(x), torch.empty_like(x)
    kernels.sum_round_into(x, y, out, t, n, sign, lo, hi, isa=isa)
    sc = 2.0**n
    r = torch.rsub(x, 0.5, alpha=-sc).floor_()
    r = r.add_(torch.rsub(y, 0.5, alpha=-sc).floor_()) if sign > 0 else r.sub_(torch.rsub(y, 0.5, alpha=-sc).floor_())
    _same(t, r)
    _same(out, r.clamp(lo, hi).mul_(1.0 / sc))
    # the autograd node (with or without the bounds): the value, and the gradient masked where the sum saturated
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    z = fq.fake_quant_sum(xr, yr, n, sign, lo, hi, bits, s if give_bounds else None)
    _same(z.detach(), out)
    g = torch.randn_like(z)
    z.backward(g)
    ok = ~torch.isnan(r)  # torch's mask of a NaN sum differs between its loops (see ste_gradient)
    want = torch.where((r >= lo) & (r <= hi), g, torch.zeros_like(g))
    _same(xr.grad[ok], want[ok])
    _same(yr.grad[ok], (want if sign > 0 else -want)[ok])
