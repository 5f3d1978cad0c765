"""The core's quantization machinery with a test-local op family: no plugin installed."""

from __future__ import annotations

import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core
from lnn_core.errors import ConfigError, TraceError
from lnn_core.ops import OpFamily
from lnn_core.quant.config import LayerConfig, QuantConfig
from lnn_core.quant.functional import fake_quant, quantize, requant, shr, weight_exponent
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.recipes import Recipe
from lnn_core.quant.rewrite import Built
from lnn_core.targets import Target
from lnn_core.testing import isolated_host


class QScale(QModule):
    """Test op: y = RQ(x * 3, n_x - n_o), own output scale."""

    op_id = "test.Scale3"

    def __init__(self, recipe, stage):
        super().__init__(recipe, stage=stage, clamps=())
        self.out_q = ActQuantizer(8, recipe)

    def forward(self, x):
        if not self.quantizing:
            return self.out_q(x * 3)
        n_x = self.in_exponent(0)
        if self.training:
            return self.finish_train(x * 3, cap=n_x)
        return self.finish_exact(x.double() * 2.0**n_x * 3, n_x, cap=n_x)


class Scale3(nn.Module):
    def forward(self, x):
        return x * 3


def _plugin():
    mod = types.ModuleType("test_plugin")

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        registry.add(OpFamily(id="test.Scale3", kind="compute", modules=(Scale3,),
                              build=lambda ctx: Built(QScale(ctx.recipe, ctx.stage), [ctx.node.args[0]])))
        registry.add(OpFamily(id="test.ReLU", kind="passthrough", functions=(torch.relu,), relu=True))

    @lnn_core.hookimpl
    def lnn_register_targets(registry):
        registry.add(Target("toy", "a test target", "pow2-sym-halfup", {}))

    mod.lnn_register_ops = lnn_register_ops
    mod.lnn_register_targets = lnn_register_targets
    return mod


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Scale3()
        self.b = Scale3()

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_init_with_a_test_family_quantizes_and_is_exact_in_eval():
    host = isolated_host([_plugin()])
    m = lnn_core.init(Net(), target="toy", host=host)
    assert m.lnn.ops == {"a": "test.Scale3", "b": "test.Scale3", "q_input_x": "core.Quant"}
    assert m.a.out_q.positive and not m.b.out_q.positive  # ahead-relu
    x = torch.randn(64, 5)
    m.train()
    for _ in range(5):
        m(x)
    m.eval()
    y = m(x)
    n_in, n_a, n_b = (int(q.exponent) for q in (m.q_input_x.out_q, m.a.out_q, m.b.out_q))
    xq = torch.floor(x * 2.0**n_in + 0.5).clamp(-128, 127)
    aq = requant(xq.double() * 3, n_in - n_a, 8).clamp(min=0)
    bq = requant(aq * 3, n_a - n_b, 8)
    assert torch.equal(y, (bq * 2.0**-n_b).float())


def test_untraceable_model_is_a_trace_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(TraceError) as exc:
        lnn_core.init(Branchy(), target="toy", host=isolated_host([_plugin()]))
    assert exc.value.module == "Branchy" and "disable_quant" in exc.value.hint


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError) as exc:
        QuantConfig(act_bits=7)
    assert (exc.value.option, exc.value.value) == ("act_bits", 7)
    with pytest.raises(ConfigError):
        QuantConfig(by_type={"Conv2d": {"wbits": 8}})
    with pytest.raises(ConfigError):
        Recipe("x", act_rule="median")
    host = isolated_host([_plugin()])
    with pytest.raises(ConfigError) as rexc:
        lnn_core.init(Net(), target="toy", config=QuantConfig(recipe="no-such-recipe"), host=host)
    assert (rexc.value.option, rexc.value.value) == ("recipe", "no-such-recipe")
    with pytest.raises(ConfigError) as cexc:
        lnn_core.init(Net(), target="toy", config=QuantConfig(by_path={"a": LayerConfig(act_bits=4)}), host=host)
    assert cexc.value.option == "act_bits" and "'a'" in str(cexc.value)


def test_layer_config_resolution_prefers_path_over_type():
    cfg = QuantConfig(by_type={"Scale3": LayerConfig(act_bits=16)}, by_path={"blk.*": LayerConfig(weight_bits=4)})
    assert cfg.for_layer("blk.conv", "test.Scale3", "Scale3") == LayerConfig(16, 4, False)
    assert cfg.for_layer("other", "test.Scale3", None) == LayerConfig(16, 8, False)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**40), 2**40), st.integers(-8, 30))
def test_shr_matches_python_integers(v, s):
    expected = v * 2 ** (-s) if s <= 0 else (v + (1 << (s - 1))) >> s  # floor(v / 2^s + 0.5)
    assert int(shr(torch.tensor(v, dtype=torch.int64), s)) == expected
    assert int(shr(torch.tensor(float(v), dtype=torch.float64), s)) == expected


def test_half_up_ties_and_saturation():
    assert shr(torch.tensor(-5, dtype=torch.int64), 1).item() == -2  # -2.5 -> -2
    assert shr(torch.tensor(5, dtype=torch.int64), 1).item() == 3  # 2.5 -> 3
    assert requant(torch.tensor(1000.0, dtype=torch.float64), 2, 8).item() == 127
    assert quantize(torch.tensor([-0.5 / 8, 0.5 / 8]), 3, 8).tolist() == [0.0, 1.0]


def test_fake_quant_gradient_is_the_clipping_mask():
    x = torch.tensor([-20.0, -1.0, 0.3, 1.0, 20.0], requires_grad=True)
    y = fake_quant(x, 3, 8)
    assert torch.equal(y.detach(), quantize(x, 3, 8).float() / 8)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-6, 1e6))
def test_weight_exponent_never_clips_and_is_tight(m):
    n = weight_exponent(torch.tensor([m]), 8, -60, 60)
    assert m * 2.0**n <= 127 < m * 2.0 ** (n + 1)


def test_act_quantizer_ema_and_frozen_eval_exponent():
    q = ActQuantizer(8, Recipe("r"))
    q.train()
    q(torch.tensor([3.0]))
    assert math.isclose(float(q.running), 3.0)
    q(torch.tensor([1.0]))
    assert math.isclose(float(q.running), 0.9 * 3.0 + 0.1 * 1.0, rel_tol=1e-6)
    n = int(q.exponent)
    assert n == math.floor(math.log2(128 / float(q.running)) + 0.5)
    q.eval()
    q(torch.tensor([100.0]))  # eval never observes
    assert int(q.exponent) == n and math.isclose(float(q.running), 2.8, rel_tol=1e-6)


def test_observer_state_is_written_where_the_buffers_are_after_copies_and_moves():
    """The training step writes the quantizer's state through numpy views of its CPU buffers; a copy of the module,
    a dtype move and a load_state_dict must each see (and only see) their own buffers' values."""
    import copy

    q = ActQuantizer(8, Recipe("r"))
    q.train()
    q(torch.tensor([3.0]))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    assert float(state["running"]) == 3.0 and int(state["num_batches"]) == 1
    twin = copy.deepcopy(q)
    twin(torch.tensor([13.0]))  # the copy's buffers move, the original's do not
    assert int(twin.num_batches) == 2 and math.isclose(float(twin.running), 0.9 * 3 + 0.1 * 13, rel_tol=1e-6)
    assert int(q.num_batches) == 1 and float(q.running) == 3.0
    q.double()  # new buffer tensors: the next step writes into them
    q(torch.tensor([1.0], dtype=torch.float64))
    assert q.running.dtype == torch.float64 and math.isclose(float(q.running), 2.8) and int(q.num_batches) == 2
    q.load_state_dict(state)  # in place: the views stay valid and see the loaded values
    q(torch.tensor([13.0], dtype=torch.float64))
    assert int(q.num_batches) == 2 and math.isclose(float(q.running), 0.9 * 3 + 0.1 * 13)
    assert int(q.exponent) == math.floor(math.log2(128 / float(q.running)) + 0.5)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_training_batch_is_refused_with_the_quantizer_named(bad):
    from lnn_core.errors import LnnError

    q = ActQuantizer(8, Recipe("r"))
    q.path = "block.conv.out_q"
    q.train()
    q(torch.tensor([3.0]))
    with pytest.raises(LnnError) as e:
        q(torch.tensor([1.0, bad], requires_grad=True))
    assert e.value.node == "block.conv.out_q" and not math.isfinite(e.value.actual)
    first = str(e.value).splitlines()[0]
    assert "'block.conv.out_q'" in first and ("NaN" in first if math.isnan(bad) else "infinity" in first)
    assert "hint" in str(e.value)
    assert float(q.running) == 3.0 and int(q.num_batches) == 1  # the state is untouched


def test_act_quantizer_l1_rule_uses_batch_exponent_in_training():
    q = ActQuantizer(8, Recipe("r", act_rule="ema_threshold"))
    q.train()
    q(torch.tensor([3.0]))
    assert int(q.exponent) == math.floor(math.log2(127 / 3.0))  # 5
    assert math.isclose(float(q.running), 0.1 * 127 / 32, rel_tol=1e-6)
