"""Stage 1 (``lnn.constrain``) to stage 2 (``lnn.init``), Conv+BN folding, ahead-relu, float islands,
unsupported ops and configuration errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ConfigError, UnsupportedOpError
from lnn_core.quant.qmodule import QModule, QuantStub
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import UnsupportedOpWarning


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = y + self.bn2(self.conv2(y))
        return self.fc(F.adaptive_avg_pool2d(F.relu(y), 1).flatten(1))


def _train(model: nn.Module, steps: int, seed: int = 0, lr: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=gen)
        F.mse_loss(model(x), torch.randn(4, 4, generator=gen)).backward()
        opt.step()
        opt.zero_grad()


def _fold(w, b, bn, clamp_w: float | None = None, clamp_b: float | None = None):
    """Reference: clamp the conv's weight (``min(f * mean|w|, max|w|)``) and bias, then fold the BN running stats."""
    w = w.detach()
    if clamp_w:
        a = w.abs()
        c = min(clamp_w * float(a.mean()), float(a.max()))
        w = w.clamp(-c, c)
    if b is not None:
        b = b.detach()
        if clamp_b:
            b = b.clamp(-clamp_b, clamp_b)
    inv = (bn.running_var + bn.eps).rsqrt() * bn.weight.detach()
    wf = w * inv.reshape(-1, 1, 1, 1)
    bf = bn.bias.detach() - bn.running_mean * inv + (b * inv if b is not None else 0.0)
    return wf, bf


# -- stage 1 -> stage 2 -----------------------------------------------------------------------------------------

def test_stage1_checkpoint_loads_strictly_into_stage2(host, tmp_path: Path):
    s1 = lnn.constrain(Net(), host=host)
    _train(s1, 4)
    path = tmp_path / "stage1.pt"
    torch.save(s1.state_dict(), path)
    s2 = lnn.init(Net(), host=host)
    assert set(s2.state_dict()) == set(s1.state_dict())
    assert float(s2.conv1.clamp_weight) == 0.0  # before loading: no clamps
    s2.load_state_dict(torch.load(path), strict=True)
    sd1, sd2 = s1.state_dict(), s2.state_dict()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    # BN running statistics were learned in stage 1 and arrive in stage 2
    assert not torch.equal(s2.bn1.running_mean, torch.zeros(8))
    assert not torch.equal(s2.bn2.running_var, torch.ones(8))
    # activation statistics too: stage 2 starts from calibrated scales
    for name, q in s2.named_modules():
        if isinstance(q, ActQuantizer):
            assert int(q.num_batches) == 4, name
            assert float(q.running) > 0, name
    # clamp settings (ConstrainConfig defaults: weight 7 x mean|w|, bias 8, activation 8)
    for name in ("conv1", "conv2", "fc"):
        mod = s2.get_submodule(name)
        assert (float(mod.clamp_weight), float(mod.clamp_bias), float(mod.clamp_act)) == (7.0, 8.0, 8.0), name
    assert float(s2.q_add.clamp_act) == 8.0
    # and stage 2 trains and evaluates from there
    _train(s2, 1)
    s2.eval()
    assert s2(torch.randn(2, 3, 6, 6)).shape == (2, 4)


def test_stage1_bn_counts_batches(host):
    """A BatchNorm trained in stage 1 (folded or not) counts its batches like nn.BatchNorm2d does."""
    s1 = lnn.constrain(Net(), host=host)
    _train(s1, 3)
    assert int(s1.bn1.num_batches_tracked) == 3
    assert int(s1.bn2.num_batches_tracked) == 3


def test_stage2_applies_stage1_weight_clamp(host):
    """A weight outlier clipped in stage 1 (7 x mean|w| < max|w|) is clipped the same way in stage 2, before folding
    and before quantizing."""
    model = Net()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = 5.0  # far above 7 x mean|w|
    s1 = lnn.constrain(model, host=host)
    _train(s1, 2, lr=0.0)  # learns BN / activation statistics only
    s2 = lnn.init(Net(), host=host)
    s2.load_state_dict(s1.state_dict(), strict=True)
    s2.eval()
    s1.eval()
    conv, bn = s2.conv1, s2.bn1
    assert 7.0 * float(conv.weight.detach().abs().mean()) < float(conv.weight.detach().abs().max())
    wf, bf = conv.folded_weight_bias(conv.weight, conv.bias)
    w_ref, b_ref = _fold(conv.weight, conv.bias, bn, clamp_w=7.0, clamp_b=8.0)
    torch.testing.assert_close(wf, w_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(bf, b_ref, rtol=0, atol=1e-6)
    # stage 1's float forward (clamped conv, BN with running stats, activation clamp) is that folded conv
    x = torch.randn(2, 3, 6, 6)
    got = []
    handle = s1.conv1.register_forward_hook(lambda m, i, o: got.append(o))
    s1(x)
    handle.remove()
    q_x = s1.q_input_x(x)
    torch.testing.assert_close(got[0], F.conv2d(q_x, wf, bf, padding=1).clamp(-8, 8), rtol=0, atol=1e-5)
    # the integers stage 2 uses come from the clamped weight
    ip = conv.integer_params()
    n_w = ip["n_w"]
    m_w = float(wf.detach().abs().max())
    assert m_w * 2.0**n_w <= 127 < m_w * 2.0 ** (n_w + 1)
    np.testing.assert_array_equal(ip["weight"].numpy(),
                                  np.floor(wf.detach().double().numpy() * 2.0**n_w + 0.5).astype(np.int64))


def test_stage2_applies_stage1_bias_clamp(host):
    """Stage 1 clamps the conv's own bias at 8 and then applies the BN; stage 2 must compute that same function,
    so its folded bias is ``fold(clamp(b))``: with b = 10 and a BN that halves, 0.5 * 8 + 0.25, not 0.5 * 10 + 0.25."""
    model = Net()
    with torch.no_grad():
        model.conv1.bias.fill_(10.0)  # clipped to 8 in stage 1
        model.bn1.running_var.fill_(4.0)  # inv ~ 0.5: the folded bias stays inside [-8, 8] either way
        model.bn1.running_mean.fill_(-0.5)
    s1 = lnn.constrain(model, host=host)
    s1.eval()
    s2 = lnn.init(Net(), host=host)
    s2.load_state_dict(s1.state_dict(), strict=True)
    s2.eval()
    conv, bn = s2.conv1, s2.bn1
    wf, bf = conv.folded_weight_bias(conv.weight, conv.bias)
    w_ref, b_ref = _fold(conv.weight, conv.bias, bn, clamp_w=7.0, clamp_b=8.0)
    x = torch.randn(2, 3, 6, 6) * 0.1
    got = []
    handle = s1.conv1.register_forward_hook(lambda m, i, o: got.append(o))
    s1(x)
    handle.remove()
    assert float(got[0].detach().abs().max()) < 8  # the activation clamp does not hide anything here
    torch.testing.assert_close(got[0], F.conv2d(s1.q_input_x(x), w_ref, b_ref, padding=1), rtol=0, atol=1e-5)
    torch.testing.assert_close(bf, b_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0], F.conv2d(s1.q_input_x(x), wf, bf, padding=1), rtol=0, atol=1e-5)


# -- conv + BN folding -------------------------------------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folding(host, ref, bias):
    float_model = ConvBN(bias)
    with torch.no_grad():
        float_model.bn.running_mean.copy_(torch.randn(6))
        float_model.bn.running_var.copy_(torch.rand(6) * 2 + 0.1)
        float_model.bn.weight.copy_(torch.randn(6))
        float_model.bn.bias.copy_(torch.randn(6))
    float_model.eval()
    m = lnn.init(float_model, host=host)
    assert m.lnn.folded == {"bn": "conv"}
    assert "bn" not in m.lnn.ops
    qconv = m.conv
    x = torch.randn(2, 4, 5, 5)
    wf, bf = qconv.folded_weight_bias(qconv.weight, qconv.bias)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, wf, bf, padding=1), float_model(x), rtol=0, atol=1e-5)
    # calibrate, then eval: exactly the int64 reference built from the folded, quantized weights
    m.train()
    m(x)
    m.eval()
    y = m(x)
    ip = qconv.integer_params()
    n_x, n_w, n_o = ip["n_x"], ip["n_w"], ip["n_o"]
    assert n_w == ref.floor_rule(wf.detach().numpy())
    np.testing.assert_array_equal(ip["weight"].numpy(), ref.round_half_up_int(wf.detach().double().numpy() * 2.0**n_w))
    np.testing.assert_array_equal(
        ip["bias"].numpy(), ref.sat(ref.round_half_up_int(bf.detach().double().numpy() * 2.0 ** (n_x + n_w)), 32))
    q_in = ref.quant_f32(x.numpy(), n_x)
    acc = ref.conv_ref(q_in, ip["weight"].numpy(), ip["bias"].numpy(), (1, 1), (1, 1))
    np.testing.assert_array_equal(ref.to_int(y, n_o), ref.rq(acc, n_x + n_w - n_o))
    # the BatchNorm keeps its parameters at its path; the training forward is fused too
    assert {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"} <= set(m.state_dict())
    m.train()
    m(x).sum().backward()
    assert m.bn.weight.grad is not None and m.conv.weight.grad is not None


# -- ahead-relu --------------------------------------------------------------------------------------------------

class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)  # -> ReLU
        self.b = nn.Conv2d(3, 4, 1)  # -> conv
        self.c = nn.Conv2d(3, 4, 1)  # -> BN (folded) -> ReLU
        self.c_bn = nn.BatchNorm2d(4)
        self.d = nn.Conv2d(3, 4, 1)  # -> ReLU and add
        self.e = nn.Conv2d(3, 4, 1)  # -> ReLU6
        self.f = nn.Conv2d(3, 4, 1)  # -> add -> relu
        self.g = nn.Conv2d(3, 4, 1)  # -> relu (method) twice
        self.tail = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        a = self.act(self.a(x))
        b = self.tail(self.b(x))
        c = F.relu(self.c_bn(self.c(x)))
        d = self.d(x)
        d = F.relu(d) + d
        e = F.relu6(self.e(x))
        f = torch.relu(self.f(x) + a)
        g = self.g(x)
        g = g.relu() + g.relu()
        return a + b + c + d + e + f + g


def test_ahead_relu(host):
    m = lnn.init(Heads(), host=host)
    assert m.a.out_q.positive
    assert not m.b.out_q.positive
    assert m.c.out_q.positive
    assert not m.d.out_q.positive
    assert m.g.out_q.positive
    assert not m.tail.out_q.positive
    assert not m.f.out_q.positive
    relu_node = next(n for n in m.graph.nodes if n.op == "call_function" and n.target is torch.relu)
    assert m.get_submodule(relu_node.args[0].target).out_q.positive  # the add feeding torch.relu


def test_ahead_relu_observes_positive_part(host):
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return F.relu(self.conv(x))

    m = lnn.init(M(), host=host)
    m.train()
    m(torch.tensor([[[[-4.0, 1.0]]]]))
    assert float(m.conv.out_q.running) == 1.0  # max(x, 0), not max|x| = 4


def test_ahead_relu_for_relu6(host):
    """activations.py: an op whose every consumer is a ReLU *or ReLU6* observes only its positive range."""
    m = lnn.init(Heads(), host=host)
    assert m.e.out_q.positive


# -- float islands -----------------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x)) * 3.0


class WithIsland(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block()
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(self.block(self.conv1(x)))


def test_disable_quant_keeps_submodule_float(host):
    model = WithIsland()
    assert lnn.disable_quant(model.block) is model.block
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)  # an intended island is not an unsupported op
        m = lnn.init(model, host=host)
    assert not any(p == "block" or p.startswith("block.") for p in m.lnn.ops)
    assert "block" in m.lnn.islands
    assert type(m.block) is Block and type(m.block.conv) is nn.Conv2d
    assert not any(isinstance(x, QModule) for x in m.block.modules())
    # a QuantStub re-quantizes the island's output, and conv2 reads its exponent from that stub
    block_node = next(n for n in m.graph.nodes if n.op == "call_module" and n.target == "block")
    stubs = [u for u in block_node.users if isinstance(m.get_submodule(u.target), QuantStub)]
    assert len(stubs) == 1
    stub = m.get_submodule(stubs[0].target)
    assert m.conv2.input_quantizers[0] is stub.out_q
    assert m.lnn.ops[str(stubs[0].target)] == "core.Quant"
    m.train()
    m(torch.randn(2, 3, 5, 5))
    m.eval()
    seen = {}
    h1 = m.block.register_forward_hook(lambda mod, i, o: seen.update(block=o))
    h2 = stub.register_forward_hook(lambda mod, i, o: seen.update(stub=o))
    m(torch.randn(2, 3, 5, 5))
    h1.remove()
    h2.remove()
    n = stub.out_q.current()
    v = seen["stub"].double() * 2.0**n
    assert torch.equal(v, v.round()) and v.abs().max() <= 128
    w = seen["block"].double() * 2.0**n
    assert not torch.equal(w, w.round())  # the island itself computes in float


# -- unsupported ops -----------------------------------------------------------------------------------------------

class Sig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv1(x)
        y = F.gelu(y)  # the unsupported op
        return self.conv2(y)


def _unsupported_line() -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "# the unsupported op" in line)


def test_unsupported_op_warns_with_call_site(host):
    with pytest.warns(UnsupportedOpWarning) as record:
        m = lnn.init(Sig(), host=host)
    msgs = [str(w.message) for w in record if issubclass(w.category, UnsupportedOpWarning)]
    assert len(msgs) == 1
    site = f"{Path(__file__).resolve()}:{_unsupported_line()}"
    assert "F.gelu" in msgs[0]
    assert site in msgs[0] or f"{__file__}:{_unsupported_line()}" in msgs[0], msgs[0]
    assert [op for _, op, _ in m.lnn.unsupported] == ["F.gelu"]
    # it stays a float island, and conv2 gets a QuantStub
    assert isinstance(m.get_submodule(str(next(iter(
        n for n in m.graph.nodes if n.op == "call_module" and n.target == "conv2")).args[0].target)), QuantStub)


class SigModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def test_unsupported_module_stays_in_the_model(host):
    """An unsupported module (nn.GELU) is a float island: it still runs, followed by a QuantStub."""
    with pytest.warns(UnsupportedOpWarning, match="GELU"):
        m = lnn.init(SigModule(), host=host)
    assert type(m.act) is nn.GELU
    m.train()
    x = torch.randn(2, 3, 5, 5)
    m(x)
    m.eval()
    seen = {}
    h = m.conv1.register_forward_hook(lambda mod, i, o: seen.update(conv1=o))
    h2 = m.conv2.register_forward_pre_hook(lambda mod, i: seen.update(conv2_in=i[0]))
    m(x)
    h.remove()
    h2.remove()
    n = m.conv2.input_quantizers[0].current()
    expected = torch.floor(F.gelu(seen["conv1"]) * 2.0**n + 0.5).clamp(-128, 127) / 2.0**n
    assert torch.equal(seen["conv2_in"], expected)


def test_unsupported_op_warning_points_at_the_caller(host):
    """The warning is attributed to the line that called lnn.init, not to lnn's own code."""
    with pytest.warns(UnsupportedOpWarning) as record:
        lnn.init(Sig(), host=host)
    assert Path(record[0].filename).resolve() == Path(__file__).resolve(), record[0].filename


def test_unsupported_op_strict_raises(host):
    with pytest.raises(UnsupportedOpError) as info:
        lnn.init(Sig(), host=host, strict=True)
    err = info.value
    assert [op for _, op, _ in err.ops] == ["F.gelu"]
    assert err.op == "F.gelu"
    assert f":{_unsupported_line()}" in err.call_site and Path(__file__).name in err.call_site
    assert "F.gelu" in str(err)
    with pytest.raises(UnsupportedOpError):
        lnn.init(Sig(), host=host, config=lnn.QuantConfig(strict=True))


# -- configuration errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,option,value", [
    ({"act_bits": 7}, "act_bits", 7),
    ({"weight_bits": 5}, "weight_bits", 5),
    ({"act_bits": True}, "act_bits", True),
])
def test_bad_quant_config(kwargs, option, value):
    with pytest.raises(ConfigError) as info:
        lnn.QuantConfig(**kwargs)
    assert info.value.option == option
    assert info.value.value == value
    assert str(value) in str(info.value)


def test_bits_not_allowed_by_recipe(host):
    with pytest.raises(ConfigError) as info:
        lnn.init(Net(), host=host, config=lnn.QuantConfig(act_bits=4))
    assert (info.value.option, info.value.value) == ("act_bits", 4)


def test_unknown_recipe_is_a_config_error(host):
    with pytest.raises(ConfigError) as info:
        lnn.init(Net(), host=host, config=lnn.QuantConfig(recipe="pow2-nope"))
    assert info.value.option == "recipe"
    assert info.value.value == "pow2-nope"


def test_bad_constrain_config():
    with pytest.raises(ConfigError) as info:
        lnn.ConstrainConfig(weight_factor=-1.0)
    assert (info.value.option, info.value.value) == ("weight_factor", -1.0)


def test_quantized_model_moves_like_any_module(host):
    """``.to()``, ``.cpu()``, ``.float()`` and ``.cuda()`` walk every submodule (``nn.Module._apply``): the
    quantized modules must not shadow that machinery, and a moved model computes the same integers."""
    import copy

    model = lnn.init(Net(), host=host)
    x = torch.randn(2, 3, 6, 6)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        y = model(x)
        for moved in (copy.deepcopy(model).to("cpu"), copy.deepcopy(model).cpu(), copy.deepcopy(model).float(),
                      copy.deepcopy(model).to(torch.float32)):
            assert torch.equal(moved(x), y)
