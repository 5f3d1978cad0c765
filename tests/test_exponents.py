"""Exponents do not depend on call order, the default rules give today's integers (recomputed here from their
definitions), per-layer observers reach the ops, and lnn.init on a prepared model refuses a new config/target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ConfigError
from lnn_core.quant.config import LayerConfig, QuantConfig
from lnn_core.quant.observers import EmaThreshold, FixedExponent
from lnn_core.quant.qmodule import QModule, QuantStub
from lnn_core.quant.quantizers import ActQuantizer


class AllKinds(nn.Module):
    """conv (+ folded BN), linear, standalone BatchNorm, add, mul, avg-pool, cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)))
        b = self.conv2(a)
        s = a + b
        m = s * b
        c = torch.cat([F.avg_pool2d(s, 2), F.avg_pool2d(m, 2)], 1)
        return self.fc(self.bn(c).flatten(1))


def _trained(config: QuantConfig | None, host, steps: int = 4) -> nn.Module:
    q = lnn.init(AllKinds(), config=config, host=host)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    q.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 4, 4, generator=gen) * 2
        loss = q(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q


def _snapshot(q: nn.Module) -> dict[str, object]:
    out: dict[str, object] = {}
    for path, m in q.named_modules():
        if isinstance(m, QModule):
            out[f"{path}:n_in"] = [m.in_exponent(i) for i in range(len(m.input_quantizers))]
            if hasattr(m, "integer_params"):
                p = m.integer_params()
                out[f"{path}:params"] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in p.items()}
        if isinstance(m, ActQuantizer):
            out[f"{path}:current"] = m.current()
    return out


@pytest.mark.parametrize("rule", ["ema_max", "ema_threshold"])
def test_integer_params_are_the_same_before_and_after_an_eval_forward(rule, host):
    """After ``model.eval()`` every exponent and integer is known before any eval forward, and a forward
    changes none of them (before this, a consumer read its producer's last-written buffer)."""
    q = _trained(QuantConfig(act_rule=rule), host)
    q.eval()
    kinds = {m.op_id for m in q.modules() if isinstance(m, QModule)}
    assert kinds == {"core.Quant", "builtin.Conv2d", "builtin.Linear", "builtin.BatchNorm2d", "builtin.Add",
                     "builtin.Mul", "builtin.AvgPool2d", "builtin.Cat"}
    stale = [p for p, m in q.named_modules() if isinstance(m, ActQuantizer) and int(m.exponent) != m.current()]
    if rule == "ema_threshold":  # the last training batch's exponent is not the frozen one: the old trap
        assert stale
    before = _snapshot(q)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2
    y1 = q(x)
    assert _snapshot(q) == before
    y2 = q(x)
    assert torch.equal(y1, y2)
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items())  # eval wrote no state


def test_eval_exponents_follow_a_loaded_state_without_a_forward(host):
    """Loading another state in eval mode changes the exponents at once: they are read from the state."""
    a = _trained(None, host, steps=2).eval()
    b = _trained(None, host, steps=6).eval()
    snap_b = _snapshot(b)
    assert _snapshot(a) != snap_b
    a.load_state_dict(b.state_dict())
    assert _snapshot(a) == snap_b


# -- the default rules give the integers of their definitions ----------------------------------------------------

class LinearOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(x)


def _r(v: float) -> int:
    return math.floor(v + 0.5)


def _f32(v: float) -> float:
    return float(np.float32(v))


def _reference_exponent(stats: list[float], rule: str, cap: int | None = None) -> int:
    """The eval exponent of an activation observed on ``stats`` (spec/int8-ops.md section 2), float32 buffer."""
    r = 0.0
    for i, m in enumerate(stats):
        if rule == "ema_max":
            r = _f32(m if i == 0 else 0.9 * r + 0.1 * m)
        else:
            nb = min(max(math.floor(math.log2(127 / m)), 0), 23)
            nb = nb if cap is None else min(nb, cap)
            r = _f32(0.9 * r + 0.1 * 127 / 2.0**nb)
    top = 128 if rule == "ema_max" else 127
    n = min(max(_r(math.log2(top / r)), 0), 23)
    return n if cap is None else min(n, cap)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", ["ema_max", "ema_threshold"])
def test_default_rules_give_the_integers_of_their_definition(seed, rule, host):
    """Quant -> Linear, trained a few steps: exponents, weights, bias and the eval output recomputed here
    from the rules' definitions (EMA of max|x|, round rule, floor rule for weights, half-up everywhere)."""
    torch.manual_seed(seed)
    q = lnn.init(LinearOnly(), config=QuantConfig(act_rule=rule), host=host)
    stub = next(m for m in q.modules() if isinstance(m, QuantStub))
    seen: dict[str, list[float]] = {"x": [], "y": []}
    stub.out_q.register_forward_hook(lambda m, a, o: seen["x"].append(float(a[0].detach().abs().max())))
    q.fc.out_q.register_forward_hook(lambda m, a, o: seen["y"].append(float(a[0].detach().abs().max())))
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed + 10)
    q.train()
    for _ in range(5):
        x = torch.randn(16, 6, generator=gen) * 3
        loss = (q(x) - 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    assert len(seen["x"]) == len(seen["y"]) == 5
    w, b = q.fc.weight.detach().double(), q.fc.bias.detach().double()
    n_x = _reference_exponent(seen["x"], rule)
    top = 127  # the floor rule on the final weights: the largest exponent that clips nothing
    m_w = float(w.abs().max())
    n_w = math.floor(math.log2(top / m_w))
    while m_w * 2.0 ** (n_w + 1) <= top:
        n_w += 1
    while m_w * 2.0**n_w > top:
        n_w -= 1
    # the training caps n_x + n_w of each step are far above these exponents here (n_w >= 4): the running
    # statistic is the uncapped rule's, and the eval cap is the final n_x + n_w
    n_o = min(_reference_exponent(seen["y"], rule), n_x + n_w)
    assert n_w >= 4 and n_o < n_x + 4
    w_q = np.floor(w.numpy() * 2.0**n_w + 0.5)
    b_q = np.floor(b.numpy() * 2.0 ** (n_x + n_w) + 0.5)
    p = q.fc.integer_params()
    assert (p["n_x"], p["n_w"], p["n_o"]) == (n_x, n_w, n_o)
    assert p["weight"].numpy().tolist() == w_q.tolist() and p["bias"].numpy().tolist() == b_q.tolist()
    xe = torch.randn(3, 6, generator=torch.Generator().manual_seed(99)) * 3
    x_q = np.clip(np.floor(xe.numpy() * np.float32(2.0**n_x) + np.float32(0.5)), -128, 127).astype(np.int64)
    acc = x_q @ w_q.astype(np.int64).T + b_q.astype(np.int64)
    s = n_x + n_w - n_o
    y_q = np.clip(np.floor(acc / 2.0**s + 0.5) if s > 0 else acc * 2 ** (-s), -128, 127)
    assert q(xe).numpy().tolist() == (y_q / 2.0**n_o).astype(np.float32).tolist()


# -- per-layer observers ---------------------------------------------------------------------------------------------

def test_a_layer_observer_from_the_config_reaches_that_layer_only(host):
    cfg = QuantConfig(by_type={"Cat": LayerConfig(act_observer=FixedExponent.with_args(n=5))})
    q = _trained(cfg, host, steps=2).eval()
    cats = [m for m in q.modules() if isinstance(m, QModule) and m.op_id == "builtin.Cat"]
    assert len(cats) == 1 and cats[0].out_q.observer == FixedExponent(5) and cats[0].out_q.current() == 5
    others = [m.out_q.observer for m in q.modules() if isinstance(m, QModule) and m not in cats and m.out_qs]
    assert others and all(type(o).__name__ == "EmaMax" for o in others)


def test_a_stateful_weight_rule_on_an_op_without_weight_state_is_refused_at_init(host):
    cfg = QuantConfig(by_path={"fc": LayerConfig(weight_observer=EmaThreshold)})
    with pytest.raises(ConfigError) as err:
        lnn.init(AllKinds(), config=cfg, host=host)
    assert err.value.option == "weight_observer" and err.value.node == "fc"
    assert str(err.value).startswith("layer 'fc'")


# -- lnn.init on a prepared model ------------------------------------------------------------------------------------

def test_init_on_a_constrained_model_keeps_its_config_and_refuses_another(host):
    cfg = QuantConfig(act_rule="ema_threshold")
    stage1 = lnn.constrain(AllKinds(), quant_config=cfg, host=host)
    stage2 = lnn.init(stage1, host=host)  # no config: the one it was constrained with
    assert stage2.lnn.config == cfg and stage2.lnn.stage == "quant"
    assert lnn.init(stage1, config=QuantConfig(act_rule="ema_threshold"), host=host).lnn.config == cfg
    with pytest.raises(ConfigError) as err:
        lnn.init(stage1, config=QuantConfig(act_bits=16), host=host)
    assert err.value.option == "config" and set(err.value.differs) == {"act_bits", "act_rule"}
    assert str(err.value).startswith("lnn.init: model 'AllKinds' was prepared with another QuantConfig")
    with pytest.raises(ConfigError) as err:
        lnn.init(stage1, target="some-other-chip", host=host)
    assert err.value.option == "target" and err.value.valid == "csk60xx"
    assert "hint:" in str(err.value)


def test_copies_read_their_own_state_and_the_state_dict_keeps_its_keys(host):
    """A copy's quantizers ask the copy's ops for their caps (deepcopy), and the observers add no
    state_dict keys: each output quantizer keeps exactly running/exponent/num_batches, as checkpoints have."""
    import copy

    q = _trained(None, host, steps=2).eval()
    for twin in (copy.deepcopy(q), lnn.init(q, host=host).eval()):  # init on a prepared model copies it too
        for path, m in twin.named_modules():
            if isinstance(m, ActQuantizer) and m.cap_source is not None:
                assert m.cap_source.__self__ is twin.get_submodule(path.rsplit(".", 1)[0])
        assert _snapshot(twin) == _snapshot(q)
        with torch.no_grad():
            twin.conv2.weight.mul_(64.0)  # n_w of the copy drops by 6: its consumers' caps follow
        assert _snapshot(twin) != _snapshot(q)
    sd = q.state_dict()
    for path, m in q.named_modules():
        if isinstance(m, ActQuantizer):
            assert {k for k in sd if k.startswith(path + ".")} == {f"{path}.{b}" for b in
                                                                   ("running", "exponent", "num_batches")}

