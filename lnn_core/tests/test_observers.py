"""Observers (statistics rules) and the quantizers that compose them: each rule against a reference written
here from its definition, the factories and their validation, WeightQuantizer at 16 bits and with the EMA rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_core.errors import ConfigError, LnnError
from lnn_core.quant.config import LayerConfig, QuantConfig
from lnn_core.quant.observers import Bounds, EmaMax, EmaThreshold, FixedExponent, MaxFloor, Observer
from lnn_core.quant.quantizers import ActQuantizer, WeightQuantizer, quantize_weight
from lnn_core.quant.recipes import Recipe

_stats = st.lists(st.floats(0.0, 1e4, width=32), min_size=1, max_size=12)  # statistics of float32 tensors
_caps = st.one_of(st.none(), st.integers(-2, 25))


def _f32(v: float) -> float:
    return float(np.float32(v))


def _clamp(n: int, lo: int, hi: int, cap: int | None) -> int:
    n = max(lo, min(hi, n))
    return n if cap is None else min(n, cap)


def _largest_unclipped(m: float, bits: int) -> int:
    """Reference of the floor rule by search: the largest n with m * 2**n <= 2**(b-1) - 1."""
    top = 2 ** (bits - 1) - 1
    n = -80
    while m * 2.0 ** (n + 1) <= top:
        n += 1
    return n


# -- activation rules, run through ActQuantizer (float32 buffer between steps, as the state_dict keeps it) ----------

def _run(quantizer: ActQuantizer, stats: list[float], cap: int | None) -> list[int]:
    quantizer.train()
    return [quantizer.observe_bounds((-m, m * 0.5), cap) for m in stats]


@settings(max_examples=60, deadline=None)
@given(_stats, _caps, st.sampled_from([8, 16]))
def test_ema_max_against_its_definition(stats, cap, bits):
    q = ActQuantizer(bits, Recipe("r"), cap=lambda exponent_of: cap)
    used = _run(q, stats, cap)
    r, want = 0.0, []
    for i, m in enumerate(stats):
        r = m if i == 0 else 0.9 * r + 0.1 * m  # r is read back from the float32 buffer each step
        n = 23 if not r > 0 else math.floor(math.log2(2 ** (bits - 1) / r) + 0.5)
        want.append(_clamp(n, 0, 23, cap))
        r = _f32(r)
    assert used == want
    n_eval = 23 if not r > 0 else math.floor(math.log2(2 ** (bits - 1) / r) + 0.5)
    q.eval()
    assert q.eval_exponent() == q.current() == _clamp(n_eval, 0, 23, cap)


@settings(max_examples=60, deadline=None)
@given(_stats, _caps)
def test_ema_threshold_against_its_definition(stats, cap):
    q = ActQuantizer(8, Recipe("r", act_rule="ema_threshold"), cap=lambda exponent_of: cap)
    used = _run(q, stats, cap)
    r, want = 0.0, []
    for m in stats:
        n = _clamp(math.floor(math.log2(127 / m)) if m > 0 else 23, 0, 23, cap)
        want.append(n)
        r = _f32(0.9 * r + 0.1 * (127 / 2.0**n))
    assert used == want
    n_eval = 23 if not r > 0 else math.floor(math.log2(127 / r) + 0.5)
    q.eval()
    assert q.eval_exponent() == q.current() == _clamp(n_eval, 0, 23, cap)


@settings(max_examples=30, deadline=None)
@given(_stats, st.integers(0, 15))
def test_fixed_exponent_ignores_the_data(stats, n):
    q = ActQuantizer(8, Recipe("r", act_observer=FixedExponent.with_args(n=n)))
    assert _run(q, stats, None) == [n] * len(stats)
    q.eval()
    assert q.current() == q.eval_exponent() == n
    y = q(torch.tensor([0.3, -5.0, 100.0]))  # eval: the int8 grid at 2**n, saturating
    want = np.clip(np.floor(np.array([0.3, -5.0, 100.0], dtype=np.float32) * 2.0**n + 0.5), -128, 127) / 2.0**n
    assert y.numpy().tolist() == want.astype(np.float32).tolist()


def test_sigmoid_style_output_is_int8_at_two_to_the_seven():
    """The speech ops' case: sigmoid writes int8 at 2**7 whatever its statistics (spec int8-seq-ops 2.6.2)."""
    q = ActQuantizer(8, Recipe("r"), observer=FixedExponent(7))
    q.train()
    q(torch.rand(64) * 1e-3)  # tiny data: EmaMax would pick 23
    assert int(q.exponent) == 7
    q.eval()
    assert q.current() == 7


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-30, 1e30), st.sampled_from([4, 8, 16]))
def test_max_floor_is_the_largest_exponent_that_does_not_clip(m, bits):
    n = MaxFloor().exponent(0.0, bits, Bounds(-80, 80), m)
    assert n == _clamp(_largest_unclipped(m, bits), -80, 80, None)
    assert MaxFloor().exponent(0.0, bits, Bounds(-8, 30), 0.0) == 30  # nothing to scale: the top of the range


# -- weight quantizers --------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_int16_weight_quantizer_matches_the_floor_rule_at_16_bits(seed, scale):
    w = torch.randn(33, generator=torch.Generator().manual_seed(seed)) * scale
    wq = WeightQuantizer(16, Recipe("r"))
    q, n = wq.quantize(w)
    m = float(w.abs().max())
    assert n == _clamp(_largest_unclipped(m, 16), -8, 30, None)
    want = np.floor(w.double().numpy() * 2.0**n + 0.5)
    assert np.abs(want).max() <= 32767 and q.numpy().tolist() == want.tolist()
    assert (q, n) == (q, quantize_weight(w, 16, Recipe("r"))[1])
    assert list(wq.state_dict()) == []  # the floor rule keeps no state: an op adding one adds no keys


def test_ema_weight_rule_trains_per_step_and_freezes_the_running_threshold():
    """RNN weights (spec int8-seq-ops 2.1.2): training uses each step's floor exponent, ``running`` is the EMA of
    the snapped threshold 127/2**n, eval uses R(log2(127/running)) and the final weights saturate there."""
    wq = WeightQuantizer(8, Recipe("r"), observer=EmaThreshold())
    assert set(wq.state_dict()) == {"running", "num_batches"}
    wq.train()
    gen = torch.Generator().manual_seed(3)
    r, steps = 0.0, []
    for scale in (0.9, 1.7, 0.4, 3.1, 1.2):
        w = (torch.randn(40, generator=gen) * scale).requires_grad_()
        w_q, _, n = wq.fake_quant(w, None, 0)
        want_n = _largest_unclipped(float(w.detach().abs().max()), 8)
        steps.append((n, want_n))
        assert w_q.detach().numpy().tolist() == (np.floor(w.detach().double().numpy() * 2.0**n + 0.5)
                                                 / 2.0**n).astype(np.float32).tolist()
        r = _f32(0.9 * r + 0.1 * 127 / 2.0**want_n)
    assert [a for a, _ in steps] == [b for _, b in steps]
    assert float(wq.running) == r and int(wq.num_batches) == 5
    wq.eval()
    n_eval = math.floor(math.log2(127 / r) + 0.5)
    big = torch.tensor([100.0, -100.0, 0.01])
    q, n = wq.quantize(big)
    assert n == n_eval == wq.exponent()  # from running alone: the tensor does not move it
    assert q.numpy().tolist() == np.clip(np.floor(big.double().numpy() * 2.0**n + 0.5), -128, 127).tolist()


def test_a_stateful_weight_rule_is_refused_on_the_stateless_path():
    with pytest.raises(ConfigError) as err:
        quantize_weight(torch.ones(3), 8, Recipe("r", weight_observer=EmaThreshold))
    assert err.value.option == "weight_observer" and "hint:" in str(err.value)


# -- reading an exponent writes nothing ------------------------------------------------------------------------------

def test_eval_exponent_and_current_write_nothing():
    q = ActQuantizer(8, Recipe("r", act_rule="ema_threshold"))
    q.train()
    q(torch.tensor([3.0]))
    trained = int(q.exponent)  # the per-batch floor exponent, 5
    q.eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    frozen = q.current()
    assert frozen == q.eval_exponent() != trained
    q(torch.tensor([1.0]))
    assert q.current() == frozen
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_an_explicit_cap_without_a_cap_source_is_an_error():
    """An op that caps its output exponent must tell its quantizer how (cap=...), or consumers would read
    the uncapped exponent: refused where it would bind."""
    q = ActQuantizer(8, Recipe("r"))
    q.train()
    q(torch.tensor([0.01]))  # running 0.01: free exponent 14
    q.eval()
    assert q.eval_exponent(cap=20) == 14  # the cap does not bind: fine
    with pytest.raises(LnnError) as err:
        q.eval_exponent(cap=5)
    assert err.value.limit == 5 and err.value.actual == 14
    assert "cap=" in str(err.value).splitlines()[-1]


def test_cap_source_is_read_purely_and_once_per_read():
    calls = []

    def cap(exponent_of):
        calls.append(1)
        return exponent_of(src) + 1

    src = ActQuantizer(8, Recipe("r"))
    q = ActQuantizer(8, Recipe("r"), cap=cap)
    for m, v in ((src, 2.0), (q, 0.001)):
        m.train()
        m(torch.tensor([v]))
        m.eval()
    assert src.current() == 6  # R(log2(128 / 2))
    assert q.current() == 7 and q.eval_exponent() == 7  # capped at n_src + 1
    assert len(calls) == 2  # one call per read, none from the training forward (its cap came explicitly)
    assert int(q.exponent) == 17  # the training step ran without a cap: the buffer is not what eval reads


# -- factories in configs ----------------------------------------------------------------------------------------------

def test_observer_factories_are_objects_from_configs_never_instances():
    import lnn_core as lnn

    assert (lnn.EmaMax, lnn.EmaThreshold, lnn.FixedExponent, lnn.MaxFloor) == (EmaMax, EmaThreshold, FixedExponent,
                                                                               MaxFloor)
    assert isinstance(EmaMax(), Observer) and isinstance(MaxFloor(), Observer)
    f = EmaThreshold.with_args(momentum=0.2)
    assert f() == EmaThreshold(0.2) and f() is not f()
    assert QuantConfig(act_observer=f) == QuantConfig(act_observer=EmaThreshold.with_args(momentum=0.2))
    r = QuantConfig(act_observer=f, weight_observer=MaxFloor).apply_to(Recipe("r"))
    assert r.make_act_observer() == EmaThreshold(0.2) and r.make_weight_observer() == MaxFloor()
    assert QuantConfig(act_rule="ema_threshold").apply_to(Recipe("r")).make_act_observer() == EmaThreshold(0.1)


@pytest.mark.parametrize("kwargs,option", [
    ({"act_observer": EmaMax()}, "act_observer"),  # an instance, not a factory
    ({"act_observer": MaxFloor}, "act_observer"),  # a weight rule: activations have no tensor in eval
    ({"weight_observer": 3}, "weight_observer"),
    ({"act_observer": lambda n: FixedExponent(n)}, "act_observer"),  # needs an argument
    ({"act_rule": "median"}, "act_rule"),
])
def test_config_refuses_bad_observer_values_with_the_option_named(kwargs, option):
    with pytest.raises(ConfigError) as err:
        QuantConfig(**kwargs)
    assert err.value.option == option
    assert str(err.value).startswith("QuantConfig:") and "hint:" in str(err.value)
    if option != "act_rule":  # a QuantConfig-only field
        with pytest.raises(ConfigError) as err:
            LayerConfig(**kwargs)
        assert err.value.option == option and str(err.value).startswith("LayerConfig:")


@pytest.mark.parametrize("bad", [{"momentum": 0.0}, {"momentum": 1.5}, {"momentum": True}])
def test_with_args_validates_at_config_time(bad):
    with pytest.raises(ConfigError) as err:
        EmaMax.with_args(**bad)
    assert err.value.option == "momentum"
    with pytest.raises(ConfigError) as err:
        FixedExponent.with_args(n=7.5)
    assert err.value.option == "n"


def test_layer_overrides_resolve_observers_path_over_type():
    cfg = QuantConfig(by_type={"Conv2d": LayerConfig(act_observer=FixedExponent.with_args(n=4))},
                      by_path={"head.*": {"act_observer": FixedExponent.with_args(n=6)}})
    assert cfg.for_layer("body.conv", "builtin.Conv2d", "Conv2d").act_observer() == FixedExponent(4)
    assert cfg.for_layer("head.conv", "builtin.Conv2d", "Conv2d").act_observer() == FixedExponent(6)
    assert cfg.for_layer("body.fc", "builtin.Linear", "Linear").act_observer is None
    layer = cfg.for_layer("head.conv", "builtin.Conv2d", "Conv2d")
    assert layer.apply_to(Recipe("r")).make_act_observer() == FixedExponent(6)
