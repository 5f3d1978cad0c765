"""Attention lowered at ``lnn.init`` (spec int8-seq-ops.md §2.10.2): ``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` become Linears,
reshapes/transposes, ``torch.bmm`` and softmax that compute torch's float function; the parameters map back to
torch's keys; what the chip cannot do (masks, add_bias_kv, ...) is reported all at once with module path and hint.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import lnn_core as lnn
from lnn_core.errors import LnnError, UnsupportedOpError
from lnn_core.quant.rewrite import UnsupportedOpWarning, trace_lowered
from lnn_ops_builtin.attention import LoweredMultiheadAttention, attention_state_dict


def lowered(model: nn.Module, host) -> fx.GraphModule:
    """The float graph ``lnn.init`` quantizes (attention lowered), as a module."""
    root, graph, _ = trace_lowered(model, host.ops)
    return fx.GraphModule(root, graph)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-6) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


def ops_of(gm: fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


class MHA(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool, average: bool, bias: bool = True, cross: bool = False,
                 dropout: float = 0.0, e: int = 32, h: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(12, e)
        self.mha = nn.MultiheadAttention(e, h, bias=bias, batch_first=batch_first, dropout=dropout)
        self.need_weights, self.average, self.cross = need_weights, average, cross

    def forward(self, x: torch.Tensor, m: torch.Tensor):
        h = self.fc(x)
        kv = self.fc(m) if self.cross else h
        y, w = self.mha(h, kv, kv, need_weights=self.need_weights, average_attn_weights=self.average)
        return (y, w) if self.need_weights else y


@settings(max_examples=40, deadline=None)
@given(batch_first=st.booleans(), need_weights=st.booleans(), average=st.booleans(), bias=st.booleans(),
       cross=st.booleans(), b=st.integers(1, 3), t=st.integers(1, 9), s=st.integers(1, 9),
       heads=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 2 ** 16))
def test_mha_lowering_is_torch_float(host, batch_first, need_weights, average, bias, cross, b, t, s, heads, seed):
    torch.manual_seed(seed)
    model = MHA(batch_first, need_weights, average, bias, cross, h=heads).eval()
    shape = (b, t, 12) if batch_first else (t, b, 12)
    mshape = (b, s, 12) if batch_first else (s, b, 12)
    x, m = torch.randn(shape), torch.randn(mshape)
    gm = lowered(model, host)
    assert torch.bmm in ops_of(gm) and torch.softmax in ops_of(gm)
    with torch.no_grad():
        want, got = model(x, m), gm(x, m)
    for a, e in zip(got if need_weights else [got], want if need_weights else [want]):
        close(a, e)
    if need_weights:  # the weights are computed only when read: not in the graph of a caller that drops them
        assert got[1].shape == want[1].shape


def test_unread_weights_leave_no_ops(host):
    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]  # need_weights=True by default: the weights are dropped

    gm = lowered(Drop().eval(), host)
    assert [n.target for n in gm.graph.nodes].count(torch.bmm) == 2
    assert operator_mul_count(gm) == 3  # B*h for q, k, v; no averaging product


def operator_mul_count(gm: fx.GraphModule) -> int:
    import operator

    return sum(1 for n in gm.graph.nodes if n.target is operator.mul)


def test_mha_training_mode_dropout_keeps_torch_semantics(host):
    torch.manual_seed(3)
    model = MHA(True, True, True, dropout=0.0).train()
    x = torch.randn(2, 5, 12)
    gm = lowered(model, host).train()
    close(gm(x, x)[0], model(x, x)[0])
    drop = lowered(MHA(True, False, True, dropout=0.5).train(), host)
    assert isinstance(drop.get_submodule("mha.dropout"), nn.Dropout) and drop.get_submodule("mha.dropout").p == 0.5


def test_parameters_split_and_map_back(host):
    torch.manual_seed(1)
    model = MHA(True, False, True).eval()
    root, _, paths = trace_lowered(model, host.ops)
    assert paths == {"mha": {"op": "builtin.MultiheadAttention", "num_heads": 4, "head_dim": 8,
                             "scaling": 8 ** -0.5}}
    attn = root.get_submodule("mha")
    assert isinstance(attn, LoweredMultiheadAttention)
    e, d = 32, 8
    w = model.mha.in_proj_weight.detach()
    close(attn.q_proj.weight.detach(), w[:e] / math.sqrt(d))  # 1/sqrt(d) folded into the query rows
    assert torch.equal(attn.k_proj.weight.detach(), w[e:2 * e]) and torch.equal(attn.v_proj.weight.detach(), w[2 * e:])
    assert {"mha.q_proj.weight", "mha.k_proj.bias", "mha.out_proj.weight"} <= set(root.state_dict())
    fresh = MHA(True, False, True).eval()
    fresh.load_state_dict(attention_state_dict(root), strict=True)
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        close(fresh(x, x), model(x, x))
    # the quantized model trains the split Linears: one quantized Linear each; its state maps back too
    q = lnn.init(model, host=host)
    assert {q.lnn.ops[p] for p in ("mha.q_proj", "mha.k_proj", "mha.v_proj", "mha.out_proj")} == {"builtin.Linear"}
    assert q.lnn.lowered["mha"]["scaling"] == 8 ** -0.5
    fresh = MHA(True, False, True).eval()
    missing, unexpected = fresh.load_state_dict(attention_state_dict(q), strict=False)
    assert not missing
    close(fresh.mha.in_proj_weight.detach(), model.mha.in_proj_weight.detach())


class Encoder(nn.Module):
    def __init__(self, norm_first: bool, batch_first: bool, layers: int = 1, activation: object = "relu",
                 stack: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 32)
        make = lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, activation=activation,
                                                  batch_first=batch_first, norm_first=norm_first)
        if stack:
            self.enc = nn.TransformerEncoder(make(), layers, norm=nn.LayerNorm(32), enable_nested_tensor=False)
        else:
            self.enc = nn.Sequential(*[make() for _ in range(layers)])

    def forward(self, x):
        return self.enc(self.fc(x))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("activation", ["relu", nn.ReLU()])
def test_encoder_layer_lowering_is_torch_float(host, norm_first, batch_first, stack, activation):
    torch.manual_seed(7)
    model = Encoder(norm_first, batch_first, 2, activation, stack).eval()
    x = torch.randn(3, 11, 10) if batch_first else torch.randn(11, 3, 10)
    gm = lowered(model, host)
    with torch.no_grad():
        close(gm(x), model(x), 5e-6)  # torch's eval fast path against the written-out layer
    gm.train()
    model.train()
    no_dropout(gm)
    no_dropout(model)
    close(gm(x), model(x), 5e-6)


def no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0


def test_encoder_trains_like_torch(host):
    """Same loss and same gradients on the shared parameters (the feed-forward and norms keep their keys)."""
    torch.manual_seed(11)
    model = Encoder(False, True, 1, "relu", True).train()
    no_dropout(model)
    gm = lowered(model, host).train()
    x = torch.randn(2, 6, 10)
    gm(x).square().mean().backward()
    model(x).square().mean().backward()
    got, want = dict(gm.named_parameters()), dict(model.named_parameters())
    for k in ("enc.layers.0.linear1.weight", "enc.layers.0.norm2.weight", "fc.weight"):
        close(got[k].grad, want[k].grad, 1e-5)


class SDPA(nn.Module):
    def __init__(self, scale: float | None = None, four_d: bool = True) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 32), nn.Linear(12, 32), nn.Linear(12, 32)
        self.scale, self.four_d = scale, four_d

    def forward(self, x):
        b, t = x.shape[0], x.shape[1]
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.four_d:
            q, k, v = (z.view(b, t, 4, 8).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return o.transpose(1, 2).reshape(b, t, 32) if self.four_d else o


@pytest.mark.parametrize("scale,four_d", [(None, True), (None, False), (0.3, True), (0.25, False)])
def test_sdpa_lowering_is_torch_float(host, scale, four_d):
    torch.manual_seed(5)
    model = SDPA(scale, four_d).eval()
    gm = lowered(model, host)
    assert F.scaled_dot_product_attention not in ops_of(gm) and torch.bmm in ops_of(gm)
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        close(gm(x), model(x))


def test_encoder_init_prints_nothing(host, capfd):
    model = Encoder(False, True, 2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lnn.init(model, host=host)
        q.eval()(torch.randn(1, 5, 10))
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""


def test_encoder_init_prints_nothing_in_a_fresh_process():
    code = ("import warnings, torch, lnn_core as lnn\n"
            "from torch import nn\n"
            "warnings.simplefilter('ignore')\n"
            "m = nn.Sequential(nn.Linear(10, 32), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)).eval()\n"
            "lnn.init(m)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""


class Masked(nn.Module):
    """Every refused form at once: masks of three kinds, add_bias_kv, add_zero_attn, kdim, SDPA mask/dropout/causal."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.a = nn.MultiheadAttention(16, 2, batch_first=True)
        self.b = nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True)
        self.c = nn.MultiheadAttention(16, 2, batch_first=True, add_zero_attn=True)
        self.d = nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=8)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1))

    def forward(self, x):
        h = self.fc(x)
        t = 5
        mask = self.mask
        y = self.a(h, h, h, attn_mask=mask)[0]
        y = y + self.b(h, h, h)[0] + self.c(h, h, h)[0] + self.d(h, x, x)[0]
        y = y + self.enc(h, is_causal=True, src_mask=mask)
        q = h.view(h.shape[0], t, 2, 8).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        z = z + F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
        return y + z.transpose(1, 2).reshape(h.shape[0], t, 16)


def test_refused_forms_are_reported_at_once_with_path_and_hint(host):
    model = Masked().eval()
    x = torch.randn(2, 5, 8)
    with pytest.raises(UnsupportedOpError) as err:
        lnn.init(model, config=lnn.QuantConfig(strict=True), host=host)
    text = str(err.value)
    found = err.value.ops
    assert len(found) == 7, found
    for needle in ("attn_mask", "add_bias_kv", "add_zero_attn", "kdim=8", "is_causal=True", "dropout_p=0.1",
                   "slice the sequence to its valid length", "module 'a'", "module 'b'", "module 'c'", "module 'd'",
                   "module 'enc.self_attn'"):
        assert needle in text, needle
    assert "Traceback" not in text
    # without strict: the same calls stay float (torch's results) and each gives one warning
    with pytest.warns(UnsupportedOpWarning) as rec:
        q = lnn.init(model, host=host)
    assert len([w for w in rec if "hint: Venus has no masked softmax" in str(w.message)]) == 3
    q.eval()(x)


def test_gelu_encoder_reports_gelu(host):
    model = Encoder(False, True, 1, "gelu").eval()
    with pytest.raises(UnsupportedOpError) as err:
        lnn.init(model, config=lnn.QuantConfig(strict=True), host=host)
    assert "F.gelu" in str(err.value) and "enc.0" in str(err.value)


def test_sdpa_without_known_head_size_asks_for_scale(host):
    class Opaque(nn.Module):
        def forward(self, x):
            q = torch.relu(x)
            return F.scaled_dot_product_attention(q, q, q)

    with pytest.raises(UnsupportedOpError) as err:
        lnn.init(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Opaque()), config=lnn.QuantConfig(strict=True), host=host)
    assert "pass scale=1 / math.sqrt(head_dim)" in str(err.value)


# -- quantized end to end (the softmax and bmm families) ---------------------------------------------------------


def _qat(model: nn.Module, host, shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    m = lnn.init(model, config=lnn.QuantConfig(strict=True), host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for _ in range(steps):
        loss = m(torch.randn(shape)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


class TwoBlockEncoder(nn.Module):
    """Issue 9's acceptance encoder: 49x40 features, Linear 40->64, two nn.TransformerEncoderLayer (d_model 64,
    4 heads, ReLU feed-forward), a linear head on the flattened sequence."""

    def __init__(self, batch_first: bool = True, norm_first: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.fc = nn.Linear(40, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=batch_first, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 12)

    def forward(self, x):
        h = self.fc(x if self.batch_first else x.transpose(0, 1))
        return self.head(self.enc(h))


def _compared_ops(report) -> list[str]:
    return [t.name for t in report.tensors]


@pytest.mark.parametrize("norm_first", [False, True])
def test_two_block_encoder_is_bit_exact_tensor_by_tensor(host, norm_first):
    m = _qat(TwoBlockEncoder(norm_first=norm_first), host, (4, 49, 40))
    assert not m.lnn.unsupported
    report = lnn.verify(m, torch.randn(1, 49, 40), host=host)
    assert report.ok, report
    names = _compared_ops(report)
    assert sum("q_matmul" in n for n in names) == 4 and sum("q_softmax" in n for n in names) == 2, names


@pytest.mark.parametrize("batch_first,need_weights,average", [(False, False, True), (True, False, True),
                                                               (True, True, True), (False, True, False)])
def test_mha_is_bit_exact_tensor_by_tensor(host, batch_first, need_weights, average):
    model = MHA(batch_first, need_weights=need_weights, average=average)
    shape = (2, 9, 12) if batch_first else (9, 2, 12)
    m = lnn.init(model, config=lnn.QuantConfig(strict=True), host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.randn(shape)
        out = m(x, x)
        loss = sum(o.pow(2).mean() for o in out) if need_weights else out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x = torch.randn((1, 9, 12) if batch_first else (9, 1, 12))
    report = lnn.verify(m, (x, x), host=host)
    assert report.ok, report


def test_sdpa_is_bit_exact_tensor_by_tensor(host):
    m = _qat(SDPA(None, True), host, (2, 9, 12))
    assert not m.lnn.unsupported
    report = lnn.verify(m, torch.randn(1, 9, 12), host=host)
    assert report.ok, report


def test_two_block_encoder_exports_to_both_dialects(host, capsys, tmp_path):
    m = _qat(TwoBlockEncoder(), host, (4, 49, 40))
    x = torch.randn(1, 49, 40)
    proto = lnn.export(m, x, tmp_path / "enc.onnx", host=host)
    types = [n.op_type for n in proto.graph.node]
    assert types.count("BmmInt") == 4 and types.count("SoftmaxInt") == 2 and types.count("LayerNormInt") == 4
    qdq = lnn.export(m, x, dialect="qdq", host=host)
    sess = ort.InferenceSession(qdq.SerializeToString())
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = m(x).numpy()
    agree = float(np.mean(y == expected))
    with capsys.disabled():
        print(f"\nQDQ agreement with eval, 2-block transformer encoder: {agree:.2%} of outputs equal, "
              f"max |diff| {np.abs(y - expected).max():.4g}")
    assert y.shape == expected.shape


@pytest.mark.parametrize("t,d,rule", [(2052, 8, "csk60xx.softmax.row"), (520, 64, "csk60xx.bmm.right_matrix")])
def test_too_long_a_sequence_names_the_attention(host, t, d, rule):
    """Spec 2.9.5 / 2.4.5: rows of at most 2048, right matrices of at most 32 KB; the shapes are known at the first
    forward, which names the op inside the attention (its module path) and the rule."""
    model = nn.Sequential(nn.Linear(4, d), SelfAttention(d)).eval()
    m = lnn.init(model, host=host)
    with pytest.raises(LnnError) as err:
        m(torch.randn(1, t, 4))
    assert "1.mha" in str(err.value) and rule in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value)


class SelfAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 1, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]
