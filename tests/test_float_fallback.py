"""Float fallback for modules that return tuples or take several inputs (issue 10 item 1).

``nn.GRU`` / ``nn.LSTM`` return ``(output, h_n)`` / ``(output, (h_n, c_n))``; a user module may take several
tensors and return several. Kept float (``lnn.disable_quant``, ``LayerConfig(float=True)`` by path or by type,
or as an op without a quantized form), such a module:

- runs in training and eval after ``lnn.init`` (the Quant that follows it goes after the ``getitem`` that picks
  one of its values, never on the tuple: that crashed with ``'tuple' object has no attribute 'requires_grad'``);
- exports to QDQ as the float ONNX ops between Dequant and Quant, and onnxruntime computes what eval computes;
- is refused by the CSK60xx export with one error naming the module (the chip has no float).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ExportError, UnsupportedOpError
from lnn_core.exporter import FloatIslandWarning
from lnn_core.quant.rewrite import ROLE_KEY, UnsupportedOpWarning


class CRNN(nn.Module):
    """conv + BN + ReLU over (time, freq), then an RNN over time, then a linear on every frame."""

    def __init__(self, rnn: str = "GRU", *, keep: str = "disable_quant", batch_first: bool = True,
                 state: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.rnn = getattr(nn, rnn)(4 * 6, 12, batch_first=batch_first)
        self.fc = nn.Linear(12, 5)
        self.batch_first, self.state = batch_first, state
        if keep == "disable_quant":
            lnn.disable_quant(self.rnn)

    def forward(self, x, h0=None):
        x = torch.relu(self.bn(self.conv(x)))  # [B, 4, T, 6]
        x = x.permute(0, 2, 1, 3).flatten(2)  # [B, T, 24]
        if not self.batch_first:
            x = x.transpose(0, 1)
        if self.state:  # a float graph input
            y, _ = self.rnn(x, (h0, h0) if isinstance(self.rnn, nn.LSTM) else h0)
        else:
            y, _ = self.rnn(x)
        return self.fc(y)


class Pair(nn.Module):
    """A user module taking two tensors and returning two."""

    def forward(self, a, b):
        return a * b.sigmoid(), torch.abs(a - b)


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.pair = lnn.disable_quant(Pair())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        p, q = self.pair(self.a(x), self.b(x))
        return self.head(p) + self.head(q)


def _qat(model: nn.Module, *x: torch.Tensor, steps: int = 3) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(*x).square().mean().backward()
        opt.step()
    return model.eval()


def _prepare(model: nn.Module, host, config=None) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)  # kept float on purpose: no warning
        return lnn.init(model, config=config, host=host)


KEEPS = {
    "disable_quant": None,
    "by_path": lnn.QuantConfig(by_path={"rnn": lnn.LayerConfig(float=True)}),
    "by_type": lnn.QuantConfig(by_type={"GRU": lnn.LayerConfig(float=True), "LSTM": lnn.LayerConfig(float=True)}),
}


@pytest.mark.parametrize("rnn", ["GRU", "LSTM"])
@pytest.mark.parametrize("keep", list(KEEPS))
def test_rnn_kept_float_trains_and_evaluates(rnn, keep, host):
    config = KEEPS[keep]
    if keep == "by_type":
        config = lnn.QuantConfig(by_type={rnn: lnn.LayerConfig(float=True)})
    model = CRNN(rnn, keep=keep)
    qmodel = _prepare(model, host, config)
    assert type(qmodel.rnn) is getattr(nn, rnn)
    x = torch.randn(3, 1, 7, 6)
    _qat(qmodel, x)
    with torch.no_grad():
        y = qmodel(x)
    assert y.shape == (3, 7, 5)
    # the output is on the int8 grid of the Linear's output exponent (quantized after the float RNN)
    n = qmodel.fc.out_q.eval_exponent()
    assert torch.equal(torch.round(y * 2.0**n), y * 2.0**n)
    # the RNN's input is dequantized int8 data, its picked output re-quantized: a float island
    assert "rnn" in qmodel.lnn.islands
    rnn_node = next(n for n in qmodel.graph.nodes if n.target == "rnn")
    assert rnn_node.meta[ROLE_KEY].kind == "float" and rnn_node.meta[ROLE_KEY].quantized


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("rnn", ["GRU", "LSTM"])
def test_rnn_island_qdq_export_agrees_with_eval(rnn, batch_first, host):
    """QDQ writes the float RNN (ONNX GRU / LSTM) between Dequant and Quant; onnxruntime agrees with eval up to
    float rounding inside the RNN (one output LSB at most, most outputs equal). The initial state is a second,
    float graph input read by the float op (a tuple of two for the LSTM)."""
    import onnxruntime as ort

    model = _qat(_prepare(CRNN(rnn, batch_first=batch_first, state=True), host), torch.randn(2, 1, 9, 6),
                 torch.randn(1, 2, 12))
    x, h0 = torch.randn(1, 1, 9, 6), torch.randn(1, 1, 12)
    with pytest.warns(FloatIslandWarning, match=rnn):
        proto = lnn.export(model, (x, h0), dialect="qdq", host=host)
    assert rnn in [n.op_type for n in proto.graph.node]
    sess = ort.InferenceSession(proto.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (x.numpy(), h0.numpy()))))[0]
    with torch.no_grad():
        want = model(x, h0).numpy()
    lsb = 2.0 ** -model.fc.out_q.eval_exponent()
    assert np.abs(got - want).max() <= lsb * 1.0001
    assert np.mean(got == want) >= 0.95


@pytest.mark.parametrize("rnn", ["GRU", "LSTM"])
def test_rnn_island_is_refused_by_the_csk60xx_export_naming_the_module(rnn, host):
    model = _qat(_prepare(CRNN(rnn), host), torch.randn(2, 1, 7, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatIslandWarning)
        with pytest.raises(ExportError) as exc:
            lnn.export(model, (torch.randn(1, 1, 7, 6),), dialect="csk60xx", host=host)
    err = exc.value
    assert err.module == "rnn" and err.dialect == "csk60xx" and err.node == "rnn"
    assert str(err).splitlines()[0].startswith(f"{rnn} (module 'rnn') is kept float")
    assert "qdq" in err.hint and "disable_quant" in err.hint


def test_several_islands_are_refused_all_at_once(host):
    model = _qat(_prepare(TwoInTwoOut(), host), torch.randn(4, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatIslandWarning)
        with pytest.raises(ExportError) as exc:
            lnn.export(model, (torch.randn(1, 6),), dialect="csk60xx", host=host)
    assert exc.value.module == "pair"
    assert len(exc.value.ops) == 1 and "Pair (module 'pair')" in exc.value.ops[0]


def test_user_module_with_two_inputs_and_two_outputs_kept_float(host):
    """Two quantized tensors in, two float tensors out, each re-quantized for the head; QDQ equals eval."""
    import onnxruntime as ort

    model = _qat(_prepare(TwoInTwoOut(), host), torch.randn(4, 6))
    x = torch.randn(2, 6)
    with torch.no_grad():
        want = model(x).numpy()
    with pytest.warns(FloatIslandWarning, match="Pair"):
        proto = lnn.export(model, (x,), dialect="qdq", host=host)
    sess = ort.InferenceSession(proto.SerializeToString())
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    lsb = 2.0 ** -model.head.out_q.eval_exponent()
    assert np.abs(got - want).max() <= 2 * lsb * 1.0001  # two re-quantized branches summed


def test_unsupported_rnn_is_reported_like_any_unsupported_op(host):
    """An RNN without a quantized form (a plain tanh ``nn.RNN``), not kept float on purpose: one warning naming the
    op, node and call site (an error with strict=True), never a crash; the model still trains and evaluates with the
    RNN in float."""
    with pytest.warns(UnsupportedOpWarning) as record:
        qmodel = lnn.init(CRNN("RNN", keep="none"), host=host)
    texts = [str(w.message) for w in record if issubclass(w.category, UnsupportedOpWarning)]
    assert len(texts) == 1 and "op RNN (module 'rnn')" in texts[0] and "self.rnn(x)" in texts[0]
    _qat(qmodel, torch.randn(2, 1, 5, 6))
    with pytest.raises(UnsupportedOpError) as exc:
        lnn.init(CRNN("RNN", keep="none"), config=lnn.QuantConfig(strict=True), host=host)
    assert exc.value.op == "RNN" and "disable_quant" in exc.value.hint


def test_bits_for_a_module_without_a_quantized_form_still_match_nothing(host):
    """Only a float setting applies to a module without a quantized form; bits there would be ignored, so the
    pattern is still refused as matching no quantized layer."""
    config = lnn.QuantConfig(by_path={"rnn": lnn.LayerConfig(act_bits=16)})
    with pytest.raises(lnn.ConfigError) as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsupportedOpWarning)
            lnn.init(CRNN("RNN", keep="none"), config=config, host=host)
    assert exc.value.option == "by_path" and exc.value.value == "rnn"


class PackedEncoder(nn.Module):
    """An LSTM over padded sequences of several lengths: pack_padded_sequence / pad_packed_sequence inside."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, batch_first=True)

    def forward(self, x, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, (h, _) = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y, h


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(8, 8)
        self.enc = lnn.disable_quant(PackedEncoder())
        self.fc = nn.Linear(12, 5)

    def forward(self, x, lengths):
        y, h = self.enc(self.fc0(x), lengths)
        return self.fc(y), self.fc(h)


def test_packed_sequences_in_a_module_kept_float(host):
    """A float module taking a quantized tensor and an int64 graph input (the lengths) and returning two tensors;
    the QDQ export traces it on the example lengths (zeros are no valid lengths) and onnxruntime equals eval."""
    import onnxruntime as ort

    model = _prepare(Tagger(), host)
    model.train()
    model(torch.randn(3, 7, 8), torch.tensor([7, 3, 5]))
    model.eval()
    x, lengths = torch.randn(1, 7, 8), torch.tensor([4])
    with torch.no_grad():
        want = [t.numpy() for t in model(x, lengths)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the island warning, and torch's about PackPadded shapes
        proto = lnn.export(model, (x, lengths), dialect="qdq", host=host)
    sess = ort.InferenceSession(proto.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (x.numpy(), lengths.numpy()))))
    lsb = 2.0 ** -model.fc.out_q.eval_exponent()
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() <= lsb * 1.0001
    assert np.all(want[0][:, 4:] == want[0][:, 4:5])  # padded frames: fc(0), the same in every frame


def test_check_and_verify_name_the_float_module_once(host):
    """``lnn.check`` reports a float island as one violation naming its module (not one per ONNX node torch wrote
    for it: Constant, Shape, Expand, ...); ``lnn.verify`` refuses it with the export's error."""
    x = torch.randn(1, 1, 9, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = lnn.check(CRNN("GRU"), (x,), host=host)
        assert [(v.op_name, v.op_type, v.rule_id) for v in report.violations] == [
            ("rnn", "GRU", "csk60xx.graph.op_supported")]
        assert "kept float (module 'rnn')" in report.violations[0].actual
        model = _qat(_prepare(CRNN("GRU"), host), torch.randn(2, 1, 9, 6))
        with pytest.raises(ExportError) as exc:
            lnn.verify(model, (x,), host=host)
    assert exc.value.module == "rnn"


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(8, 8)
        self.lstm = lnn.disable_quant(nn.LSTM(8, 12, batch_first=True))

    def forward(self, x):
        return self.lstm(self.fc0(x))


def test_float_tuple_as_the_model_output_through_both_stages(host):
    """Stage 1 -> stage 2 with the float LSTM; its nested tuple ``(y, (h, c))`` is the model's output: three
    graph outputs in the QDQ file, equal to eval up to float rounding."""
    import onnxruntime as ort

    model = lnn.constrain(TupleOut(), host=host)
    model.train()
    model(torch.randn(2, 5, 8))
    model = lnn.init(model, host=host)
    model.train()
    y, (h, c) = model(torch.randn(2, 5, 8))
    (y.sum() + h.sum() + c.sum()).backward()
    assert model.fc0.weight.grad is not None
    model.eval()
    x = torch.randn(1, 5, 8)
    with pytest.warns(FloatIslandWarning, match="LSTM"):
        proto = lnn.export(model, (x,), dialect="qdq", host=host)
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1", "output_2"]
    sess = ort.InferenceSession(proto.SerializeToString())
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        y, (h, c) = model(x)
    for g, w in zip(got, (y, h, c)):
        assert g.shape == tuple(w.shape) and np.allclose(g, w.numpy(), atol=1e-5)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(8, 8)
        self.block = nn.Module()
        self.block.rnn = nn.RNN(8, 12, batch_first=True)

    def forward(self, x):
        y, _ = self.block.rnn(self.fc0(x))
        return y


def test_an_unsupported_module_is_named_by_its_path(host):
    """The warning and the strict error name a module by the path lnn.disable_quant / by_path take."""
    with pytest.warns(UnsupportedOpWarning) as record:
        lnn.init(Nested(), host=host)
    text = next(str(w.message) for w in record if issubclass(w.category, UnsupportedOpWarning))
    assert text.startswith("op RNN (module 'block.rnn') has no quantized form")
    assert "lnn.disable_quant(model.block.rnn)" in text
    with pytest.raises(UnsupportedOpError) as exc:
        lnn.init(Nested(), config=lnn.QuantConfig(strict=True), host=host)
    assert "RNN (module 'block.rnn') at " in exc.value.details["ops"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        lnn.init(Nested(), config=lnn.QuantConfig(by_path={"block.rnn": lnn.LayerConfig(float=True)}), host=host)
