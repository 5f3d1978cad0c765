"""The standard QDQ export runs in onnxruntime and reproduces the eval-mode quantized model.

Every model is trained for a few QAT steps on random data, exported with ``dialect="qdq"``, checked with
``onnx.checker.check_model(full_check=True)`` and run in onnxruntime (default session options, so its QDQ
fusions are on). The outputs are compared with the eval-mode model in steps of the output's scale: at least
99.9 % of the elements must be equal and every other one exactly one step away. (The writer emulates the chip's
half-up rounding, so these models come out equal everywhere; the margin is for what the exporter documents as
outside its control: float32 accumulation past 2**24 steps and float-island ops that differ in the last bit.)
The hand-built graphs at the end pin the rounding itself, in both writer modes.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
import lnn_ops_builtin.plugin as ops_plugin
from lnn_backend_csk60xx import plugin as backend_plugin
from lnn_backend_csk60xx.demo import build_model as build_digits_model
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_core.errors import ExportError
from lnn_core.exporter import FloatIslandWarning, export, to_ir
from lnn_core.graph import Graph, Node
from lnn_core.quant.rewrite import UnsupportedOpWarning
from lnn_core.testing import isolated_host
from lnn_ops_builtin.onnx_qdq import OPSET, write_qdq

MIN_EQUAL = 0.999
LINGER_DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "linger-demo"


@pytest.fixture(scope="module")
def qhost(host):
    """The session host when it already has the ``qdq`` writer, else one that registers it here."""
    if "qdq" in host.exporters:
        return host
    local = types.ModuleType("test_export_qdq_writer")

    @lnn.hookimpl
    def lnn_register_exporters(registry):
        registry.add_writer("qdq", write_qdq)

    local.lnn_register_exporters = lnn_register_exporters
    return isolated_host([ops_plugin, backend_plugin, local])


# -- helpers -------------------------------------------------------------------------------------------------

def _qat(model: nn.Module, shapes, host, *, steps: int = 4, batch: int = 32, rand=torch.randn) -> nn.Module:
    """``lnn.init`` plus a few Adam steps on random data (outputs pushed towards random targets), then eval."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        m = lnn.init(model, host=host)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    for _ in range(steps):
        outs = m(*[rand(batch, *s) for s in shapes])
        outs = outs if isinstance(outs, tuple) else (outs,)
        loss = sum(F.mse_loss(o, torch.randn_like(o)) for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _export(model, example, tmp_path, host, name: str = "model", *, opset: int = OPSET, **kw) -> onnx.ModelProto:
    """Export to ``tmp_path/name.qdq.onnx`` and run the full ONNX check on the file (every QDQ file here)."""
    path = tmp_path / f"{name}.qdq.onnx"
    proto = export(model, example, str(path), dialect="qdq", host=host, **kw)
    onnx.checker.check_model(str(path), full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    assert all(n.domain == "" for n in proto.graph.node)
    return proto


def _session(proto: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session; ``optimize=False`` switches graph optimizations (QDQ fusions) off."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _output_steps(proto: onnx.ModelProto) -> dict[str, float]:
    """Graph output name -> its step 2**-n_o, read from the scale of the DequantizeLinear that writes it."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    steps = {}
    for out in proto.graph.output:
        node = producer[out.name]
        assert node.op_type == "DequantizeLinear", f"output {out.name!r} is written by {node.op_type}"
        steps[out.name] = float(inits[node.input[1]])
    return steps


def _assert_matches(proto, got, want, what: str) -> None:
    """``got`` (onnxruntime) against ``want`` (eval model): >= 99.9 % equal, the rest exactly one step off."""
    steps = _output_steps(proto)
    for out, g, w in zip(proto.graph.output, got, want):
        w = w.detach().numpy() if isinstance(w, torch.Tensor) else w
        assert g.shape == w.shape, f"{what}: output {out.name!r} shape {g.shape} != {w.shape}"
        d = (g.astype(np.float64) - w.astype(np.float64)) / steps[out.name]
        assert np.array_equal(d, np.round(d)), f"{what}: output {out.name!r} is off the 2**-n grid"
        equal = float((d == 0).mean())
        far = int((np.abs(d) > 1).sum())
        assert equal >= MIN_EQUAL and far == 0, (
            f"{what}: output {out.name!r}: {equal:.4%} of {d.size} elements equal (need {MIN_EQUAL:.1%}), "
            f"{far} more than one step off (max {np.abs(d).max():.0f} steps)")


def _run_and_compare(m, inputs, proto, what: str, *, optimize: tuple[bool, ...] = (True,)) -> None:
    with torch.no_grad():
        want = m(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    for opt in optimize:
        sess = _session(proto, opt)
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        _assert_matches(proto, sess.run(None, feeds), want, f"{what}, ORT optimizations {'on' if opt else 'off'}")


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


# -- (a) and (b): two whole models --------------------------------------------------------------------------

def test_digits_cnn_matches_onnxruntime(qhost, tmp_path):
    m = _qat(build_digits_model(), [(1, 8, 8)], qhost, steps=6, rand=torch.rand)
    x = torch.rand(512, 1, 8, 8)
    proto = _export(m, x[:1], tmp_path, qhost, "digits", dynamic_batch=True)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "AveragePool", "MaxPool", "Concat"} <= set(
        _ops(proto))
    _run_and_compare(m, [x], proto, "digits CNN (512 inputs)", optimize=(True, False))


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, residual add, relu; downsampling blocks use an AvgPool2d(2) + 1x1 conv shortcut
    (ResNet-D style: the chip's convs need kernel >= stride, so a 1x1 conv cannot have stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.AvgPool2d(stride), nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_resnet_cifar_matches_onnxruntime(qhost, tmp_path):
    m = _qat(CifarResNet(), [(3, 32, 32)], qhost, steps=4)
    x = torch.randn(256, 3, 32, 32)
    proto = _export(m, x[:1], tmp_path, qhost, "resnet", dynamic_batch=True)
    ops = _ops(proto)
    assert ops.count("Conv") == 6 and "Gemm" in ops and ops.count("AveragePool") == 2
    _run_and_compare(m, [x], proto, "CIFAR ResNet (256 inputs)", optimize=(True, False))


# -- names, several inputs and outputs, dynamic batch ------------------------------------------------------

class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, img, aux):
        y = torch.relu(self.a(img)) + self.b(aux)
        return y, self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_several_named_inputs_and_outputs(qhost, tmp_path):
    m = _qat(TwoInTwoOut(), [(3, 8, 8), (3, 8, 8)], qhost)
    img, aux = torch.randn(64, 3, 8, 8), torch.randn(64, 3, 8, 8)
    proto = _export(m, (img[:1], aux[:1]), tmp_path, qhost, "two", input_names=["image", "side"],
                    output_names=["features", "logits"], dynamic_batch=True)
    assert [i.name for i in proto.graph.input] == ["image", "side"]
    assert [o.name for o in proto.graph.output] == ["features", "logits"]
    for vi in list(proto.graph.input) + list(proto.graph.output):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    _run_and_compare(m, [img, aux], proto, "two inputs / two outputs")


def test_dynamic_batch_axis(qhost, tmp_path):
    m = _qat(build_digits_model(), [(1, 8, 8)], qhost, rand=torch.rand)
    proto = _export(m, torch.rand(1, 1, 8, 8), tmp_path, qhost, "dyn", dynamic_batch=True)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"
    for batch in (1, 37):
        _run_and_compare(m, [torch.rand(batch, 1, 8, 8)], proto, f"batch {batch}")


def test_fixed_batch_is_kept(qhost, tmp_path):
    m = _qat(build_digits_model(), [(1, 8, 8)], qhost, steps=1, rand=torch.rand)
    x = torch.rand(16, 1, 8, 8)
    proto = _export(m, x, tmp_path, qhost, "fixed")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [16, 1, 8, 8]
    _run_and_compare(m, [x], proto, "fixed batch 16")


# -- the model is left alone ---------------------------------------------------------------------------------

@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("no_grad", [True, False], ids=["no_grad", "grad"])
def test_export_leaves_model_unchanged(qhost, tmp_path, train_mode, no_grad):
    m = _qat(build_digits_model(), [(1, 8, 8)], qhost, steps=2, rand=torch.rand)
    m.train(train_mode)
    modes = {name: mod.training for name, mod in m.named_modules()}
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    requires = {k: p.requires_grad for k, p in m.named_parameters()}
    with torch.no_grad() if no_grad else torch.enable_grad():
        _export(m, torch.rand(4, 1, 8, 8), tmp_path, qhost, "untouched")
        assert torch.is_grad_enabled() is not no_grad
    assert {name: mod.training for name, mod in m.named_modules()} == modes
    assert {k: p.requires_grad for k, p in m.named_parameters()} == requires
    after = m.state_dict()
    assert after.keys() == state.keys()
    changed = [k for k in state if not torch.equal(after[k], state[k])]
    assert not changed, f"export changed {changed}"


# -- float islands -------------------------------------------------------------------------------------------

class AbsIsland(nn.Module):
    """``torch.abs`` has no quantized form: a float island (exact in float, so onnxruntime agrees bit for bit)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.abs(self.c1(x)))


def test_float_island_is_dequant_abs_quant(qhost, tmp_path):
    m = _qat(AbsIsland(), [(3, 8, 8)], qhost)
    x = torch.randn(256, 3, 8, 8)
    with pytest.warns(FloatIslandWarning, match="abs"):
        proto = _export(m, x[:1], tmp_path, qhost, "island", dynamic_batch=True)
    (sig,) = [n for n in proto.graph.node if n.op_type == "Abs"]
    assert _producer(proto, sig.input[0]).op_type == "DequantizeLinear"
    # the chip's Quant: its float32 rounding floor(x * 2**n + 0.5), then QuantizeLinear
    assert _chain(proto, sig.output[0]) == ["Mul", "Add", "Floor", "Mul", "QuantizeLinear"]
    _run_and_compare(m, [x], proto, "abs island")
    with pytest.warns(FloatIslandWarning):
        canonical = write_qdq(to_ir(m, x[:1], host=qhost, dynamic_batch=True), round_half_up=False)
    onnx.checker.check_model(canonical, full_check=True)
    (sig,) = [n for n in canonical.graph.node if n.op_type == "Abs"]
    assert _producer(canonical, sig.input[0]).op_type == "DequantizeLinear"
    assert _chain(canonical, sig.output[0]) == ["QuantizeLinear"]
    _session(canonical).run(None, {"x": x[:4].numpy()})


def _producer(proto, tensor: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if tensor in n.output)


def _chain(proto, tensor: str) -> list[str]:
    """Op types from the single consumer of ``tensor`` onwards, up to and including the first QuantizeLinear."""
    ops = []
    while not ops or ops[-1] != "QuantizeLinear":
        (node,) = [n for n in proto.graph.node if tensor in n.input]
        ops.append(node.op_type)
        tensor = node.output[0]
    return ops


def test_strict_export_refuses_the_island(qhost, tmp_path):
    m = _qat(AbsIsland(), [(3, 8, 8)], qhost, steps=1)
    with pytest.raises(ExportError, match="abs") as info:
        export(m, torch.randn(1, 3, 8, 8), str(tmp_path / "strict.qdq.onnx"), dialect="qdq", host=qhost,
               strict=True)
    assert info.value.ops and "abs" in str(info.value.ops).lower()
    assert not (tmp_path / "strict.qdq.onnx").exists()


# -- op coverage ---------------------------------------------------------------------------------------------

class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return self.dw(torch.relu(self.pw(x)))


class Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(torch.relu(self.c(x)))


class StandaloneBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(self.bn(torch.relu(self.c(x))))


class CatMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return torch.cat([a * b, a * 0.75, b], dim=1)


class PoolRelu6(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return F.relu6(self.c2(self.pool(self.act(self.c(x)))))


class FlattenTranspose(nn.Module):
    """(N, C, H, W) -> flatten(2) -> (N, C, HW) -> transpose -> (N, HW, C) -> Linear on a 3-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.c(x).flatten(2).transpose(1, 2)).flatten(1)


OP_CASES = {
    "depthwise_conv": (Depthwise, {"Conv"}),
    "conv_transpose": (Deconv, {"ConvTranspose"}),
    "standalone_batchnorm": (StandaloneBN, {"Mul", "Add"}),
    "cat_mul": (CatMul, {"Concat", "Mul"}),
    "avgpool_relu6": (PoolRelu6, {"AveragePool", "Clip"}),
    "flatten_transpose": (FlattenTranspose, {"Reshape", "Transpose", "MatMul", "Flatten"}),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_exports_and_matches(qhost, tmp_path, case):
    cls, expected_ops = OP_CASES[case]
    m = _qat(cls(), [(3, 8, 8)], qhost)
    x = torch.randn(256, 3, 8, 8)
    proto = _export(m, x[:1], tmp_path, qhost, case, dynamic_batch=True)
    assert expected_ops <= set(_ops(proto)), f"{case}: {sorted(set(_ops(proto)))}"
    if case == "depthwise_conv":
        groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert 8 in groups
    _run_and_compare(m, [x], proto, case)


# -- the writer on hand-built IR graphs ----------------------------------------------------------------------

def _add_graph(n_x: int, n_y: int, n_o: int) -> Graph:
    g = Graph(name="add")
    for name in ("x", "y", "out"):
        g.add_tensor(name, "float32", ("N", 16))
    g.add_tensor("qx", "int8", ("N", 16), n_x)
    g.add_tensor("qy", "int8", ("N", 16), n_y)
    g.add_tensor("s", "int8", ("N", 16), n_o)
    g.inputs, g.outputs = ["x", "y"], ["out"]
    g.add_node(Node("quant_x", "Quant", ["x"], ["qx"], {}, "thinker"))
    g.add_node(Node("quant_y", "Quant", ["y"], ["qy"], {}, "thinker"))
    g.add_node(Node("add", "iqAdd", ["qx", "qy"], ["s"], {}, "thinker"))
    g.add_node(Node("dequant", "Dequant", ["s"], ["out"], {}, "thinker"))
    return g


def test_iqadd_rescales_each_operand_half_up(ref, tmp_path):
    """Operands on odd grid points: every operand rescale is a tie. The default writer gives the chip's
    ``SAT(SHR(x, 1) + SHR(y, 2))``; the canonical pattern rounds the float sum once, half to even."""
    qx = np.arange(-128, 128, dtype=np.int64)
    qy = np.roll(qx, 37)
    x, y = (qx / 8.0).astype(np.float32).reshape(16, 16), (qy / 16.0).astype(np.float32).reshape(16, 16)
    want = ref.sat(ref.shr(qx, 1) + ref.shr(qy, 2)).reshape(16, 16) / 4.0
    exact = write_qdq(_add_graph(3, 4, 2))
    onnx.checker.check_model(exact, full_check=True)
    np.testing.assert_array_equal(_session(exact).run(None, {"x": x, "y": y})[0], want)
    canonical = write_qdq(_add_graph(3, 4, 2), round_half_up=False)
    onnx.checker.check_model(canonical, full_check=True)
    assert not any("round_half_up" in n.name for n in canonical.graph.node)
    got = _session(canonical).run(None, {"x": x, "y": y})[0]
    diff = np.abs(got - want) * 4.0
    assert diff.max() == 1 and (diff == 1).any()


def test_quant_rounds_float_input_like_the_chip(ref):
    """The chip's Quant is ``SAT(floorf(x * 2**n + 0.5f))`` in float32: ties go up, and the largest float below
    half a step rounds up too (the float32 sum rounds to 1). QuantizeLinear alone rounds half to even."""
    g = Graph(name="quant")
    g.add_tensor("x", "float32", (64,))
    g.add_tensor("q", "int8", (64,), 2)
    g.add_tensor("y", "float32", (64,))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_node(Node("quant", "Quant", ["x"], ["q"], {}, "thinker"))
    g.add_node(Node("dequant", "Dequant", ["q"], ["y"], {}, "thinker"))
    x = np.concatenate([np.arange(-30, 30) / 8.0, [np.nextafter(0.125, 0.0), -40.0, 40.0, 0.3]]).astype(np.float32)
    want = ref.quant_f32(x, 2) / 4.0
    exact = write_qdq(g)
    onnx.checker.check_model(exact, full_check=True)
    np.testing.assert_array_equal(_session(exact).run(None, {"x": x})[0], want)
    canonical = write_qdq(g, round_half_up=False)
    diff = np.abs(_session(canonical).run(None, {"x": x})[0] - want) * 4.0
    assert diff.max() == 1 and (diff == 1).sum() >= 15


class Int16Head(nn.Module):
    """A float island (mean over the channels: a ReduceMean; a spatial mean would be int8 global pooling) and a
    16-bit linear output: written at opset 21."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).mean(1).flatten(1))


def test_int16_output_uses_opset_21(qhost, tmp_path):
    cfg = lnn.QuantConfig(by_path={"fc": lnn.LayerConfig(act_bits=16)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        m = lnn.init(Int16Head(), config=cfg, host=qhost)
    m.train()
    for _ in range(3):
        m(torch.randn(16, 3, 8, 8)).pow(2).mean().backward()
    m.eval()
    x = torch.randn(128, 3, 8, 8)
    with pytest.warns(FloatIslandWarning):
        proto = _export(m, x[:1], tmp_path, qhost, "int16", opset=21, dynamic_batch=True)
    (dq,) = [n for n in proto.graph.node if n.output[0] == "output"]
    inits = {i.name: i for i in proto.graph.initializer}
    assert inits[dq.input[2]].data_type == onnx.TensorProto.INT16
    (mean,) = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert len(mean.input) == 2 and not [a for a in mean.attribute if a.name == "axes"]
    _run_and_compare(m, [x], proto, "int16 output")


def test_unknown_op_names_the_node():
    g = _add_graph(3, 3, 2)
    g.nodes[2] = Node("blk.var", "iqVar", ["qx", "qy"], ["s"], {}, "thinker")
    with pytest.raises(ExportError, match="'blk.var' \\(iqVar\\)") as info:
        write_qdq(g)
    assert info.value.node == "blk.var" and info.value.dialect == "qdq"
    assert "hint:" in str(info.value)


def test_int32_activation_is_refused():
    g = _add_graph(3, 3, 2)
    g.tensors["s"].dtype = "int32"
    with pytest.raises(ExportError, match="int32") as info:
        write_qdq(g)
    assert info.value.node == "add"


def test_qdq_names_follow_the_ir(qhost, tmp_path):
    m = _qat(build_digits_model(), [(1, 8, 8)], qhost, steps=1, rand=torch.rand)
    graph = to_ir(m, torch.rand(1, 1, 8, 8), host=qhost)
    proto = write_qdq(graph)
    names = {n.name for n in proto.graph.node}
    assert {n.name for n in graph.nodes} <= names
    int8 = {t for t, info in graph.tensors.items() if info.exponent is not None and t not in graph.initializers}
    written = {o for n in proto.graph.node for o in n.output}
    assert int8 <= written


@pytest.mark.skipif(not LINGER_DEMO.is_dir(), reason=f"shared data folder {LINGER_DEMO} is absent")
def test_linger_resnet18_in_onnxruntime_equals_the_vendor_simulator():
    """The vendor's linger-exported ResNet-18, read by the CSK60xx dialect reader and written as QDQ: onnxruntime
    gives the outputs of the vendor's own VENUS simulator bit for bit (the canonical pattern does not)."""
    graph = read_onnx(LINGER_DEMO / "resnet18-12-regular.onnx")
    x = np.load(LINGER_DEMO / "resnet18_inputs.npy")
    want = np.load(LINGER_DEMO / "resnet18_outputs.npy")
    proto = write_qdq(graph)
    onnx.checker.check_model(proto, full_check=True)
    sess = _session(proto)
    got = np.concatenate([sess.run(None, {graph.inputs[0]: x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(got, want)


def test_a_3d_linear_in_an_int16_graph_loads_in_onnxruntime_and_equals_eval():
    """int16 activations (sigmoid's input) put the file at opset 21, where onnxruntime's MatMul + Add fusion into
    Reshape + Gemm used to insert a QuantizeLinear it could not type: the 3-D Linear's bias is written at the
    output's rank, which onnxruntime leaves alone."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)))

    torch.manual_seed(0)
    model = lnn.init(Net()).train()
    for _ in range(3):
        model(torch.randn(2, 5, 8))
    model.eval()
    x = torch.randn(2, 5, 8)
    proto = lnn.export(model, x, None, dialect="qdq")
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [21]
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        np.testing.assert_array_equal(y, model(x).detach().numpy())
