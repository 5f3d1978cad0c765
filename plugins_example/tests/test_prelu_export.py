"""PReLU end to end through this package's hooks only: the IR writer, the CSK60xx dialect schema and shape
rule, the simulator kernel, and what the ``lnn`` front doors do with them.

The model is conv -> PReLU -> linear after a few QAT steps. Every simulated tensor is compared with
the eval-mode model (the PReLU output included), as ``lnn.verify`` does.
"""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import onnx
import pytest
import torch
import torch.fx as fx
from _prelu_reference import prelu_int as reference_prelu_int
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.check import op_view
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.ops import OpSet
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import KernelCall, Simulator, TensorSpec
from lnn_core.cli import main as lnn_main
from lnn_core.errors import ExportError, ModelFileError, SimulatorError
from lnn_core.exporter import to_ir
from lnn_core.graph import IR_DOMAIN, Graph
from lnn_ops_example import csk60xx
from lnn_ops_example.prelu import IR_OP

CHANNELS = 8


class ConvPReLULinear(nn.Module):
    def __init__(self, num_parameters: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.act = nn.PReLU(num_parameters)
        self.fc = nn.Linear(CHANNELS * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


def _trained(host, num_parameters: int) -> fx.GraphModule:
    """The model after three QAT steps, in eval mode; slopes of both signs, so every branch is taken."""
    torch.manual_seed(0)
    float_model = ConvPReLULinear(num_parameters)
    with torch.no_grad():
        float_model.act.weight.copy_(torch.linspace(-0.7, 1.3, num_parameters))
    q = lnn.init(float_model, host=host)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 3, 4, 4, generator=gen) * 2
        loss = (q(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()


@pytest.fixture(scope="module", params=[1, CHANNELS], ids=["shared-slope", "per-channel"])
def trained(request, host):
    return _trained(host, request.param)


@pytest.fixture(scope="module")
def ops(host) -> OpSet:
    return OpSet.from_host(host)


def _example(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2


def _exported(q: fx.GraphModule, x: torch.Tensor, host, ops: OpSet) -> tuple[Graph, onnx.ModelProto]:
    """The IR and its CSK60xx-dialect file, written as ``lnn.export(dialect="csk60xx")`` would with the
    host's plugin ops."""
    graph = to_ir(q, x, host=host)
    return graph, write_onnx(graph, ops=ops)


def _eval_values(q: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor the eval-mode model computes, by fx node name."""
    values: dict[str, torch.Tensor] = {}

    class Capture(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        Capture(q).run(x)
    return values


# -- the IR writer and the dialect -----------------------------------------------------------------


def test_ir_writer_writes_prelu_int_with_the_eval_integers(trained, host):
    x = _example()
    graph = to_ir(trained, x, host=host)
    assert [n.op_type for n in graph.nodes] == ["Quant", "Conv2dInt", IR_OP, "Flatten", "LinearInt", "Dequant"]
    node = graph.nodes[2]
    p = trained.act.integer_params()
    src, slope = node.inputs
    assert node.domain == IR_DOMAIN and node.attrs == {"data_bits": 8, "parameter_bits": 8, "o_bits": 8}
    assert graph.tensors[src].exponent == p["n_x"] == trained.conv.out_q.eval_exponent()
    assert graph.tensors[slope].exponent == p["n_a"] and graph.initializers[slope].dtype == np.int8
    np.testing.assert_array_equal(graph.initializers[slope], p["slope"].numpy())
    y = graph.tensors[node.outputs[0]]
    assert (y.dtype, y.shape, y.exponent) == ("int8", (2, CHANNELS, 4, 4), p["n_x"])
    assert graph.meta["sources"][node.outputs[0]] == next(n.name for n in trained.graph.nodes if n.target == "act")


def test_csk60xx_file_holds_prelu_int_and_reads_back_equal(trained, host, ops):
    graph, model = _exported(trained, _example(), host, ops)
    onnx.checker.check_model(model)
    node = next(n for n in model.graph.node if n.op_type == IR_OP)
    assert node.domain == "thinker"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    p = trained.act.integer_params()
    assert attrs["scale_x"] == attrs["scale_o"] == 2.0 ** p["n_x"] and attrs["scale_w"] == 2.0 ** p["n_a"]
    assert attrs["platform_quant"] == b"luna_quant"
    back = read_onnx(onnx.load_from_string(model.SerializeToString()), ops=ops)
    assert back == graph, back.diff(graph)


def test_without_the_plugin_ops_the_dialect_refuses_prelu_int(trained, host, ops):
    graph, model = _exported(trained, _example(), host, ops)
    with pytest.raises(ExportError) as info:
        write_onnx(graph)
    assert info.value.node == "act" and IR_OP in str(info.value)
    with pytest.raises(ModelFileError) as info:
        read_onnx(model)
    assert info.value.node == "act"


def test_shape_rule_refuses_a_slope_count_other_than_one_or_the_channels(trained, host, ops):
    _, model = _exported(trained, _example(), host, ops)
    node = next(n for n in model.graph.node if n.op_type == IR_OP)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int8), init.name))
    with pytest.raises(ModelFileError) as info:
        read_onnx(model, ops=ops)
    assert info.value.node == "act" and "1 slope, or one per channel" in str(info.value)


def test_pack_refuses_an_output_scale_other_than_the_input_scale(trained, host, ops):
    _, model = _exported(trained, _example(), host, ops)
    # scale_o one step finer, and the linear after the Flatten told so: the reader accepts the file
    for op_type, key in ((IR_OP, "scale_o"), ("LinearInt", "scale_x")):
        node = next(n for n in model.graph.node if n.op_type == op_type)
        next(a for a in node.attribute if a.name == key).f *= 2
    graph = read_onnx(model, ops=ops)
    with pytest.raises(lnn.HardwareLimitError) as info:
        pack_graph(graph, ops=ops)
    assert (info.value.rule_id, info.value.op_name) == ("csk60xx.graph.shape", "act")
    assert "scale_o" in str(info.value)


def test_pack_time_rules_judge_prelu_int(trained, host, ops):
    graph, _ = _exported(trained, _example(), host, ops)
    view = op_view(graph, graph.nodes[2])
    rules = host.rules_for(IR_OP, "csk60xx")
    assert sorted(r.id for r in rules) == ["csk60xx.prelu.bits", "csk60xx.prelu.slopes"]
    assert [v for r in rules for v in r.run(view, host.targets["csk60xx"].limits, "csk60xx")] == []
    slopes = trained.act.weight.numel()  # the count comes from the slope initializer's shape
    found = [v for r in rules for v in r.run(view, {"prelu.slopes_max": slopes - 1}, "csk60xx")]
    assert [(v.rule_id, v.op_name, v.actual) for v in found] == [("csk60xx.prelu.slopes", "act", f"{slopes} slopes")]


# -- the simulator kernel ----------------------------------------------------------------------------


def test_simulator_equals_eval_mode_on_every_tensor(trained, host, ops):
    x = _example(3)
    graph, model = _exported(trained, x, host, ops)
    res = pack_graph(read_onnx(model, ops=ops), ops=ops, fuse_relu=False)
    sim = Simulator(res.blob, kernels=ops.kernels)
    assert sim.external_ops == {"act": IR_OP} and sim.missing_kernels == []
    (y,), dump = sim.run([x.numpy()], dump=True)
    values = _eval_values(trained, x)
    compared = []
    for name, src in graph.meta["sources"].items():
        n = graph.tensors[name].exponent
        if n is None or name not in dump:
            continue
        expected = np.round(values[src].double().numpy() * 2.0**n).astype(np.int64)
        np.testing.assert_array_equal(np.asarray(dump[name]).astype(np.int64).reshape(expected.shape), expected,
                                      err_msg=name)
        compared.append(name)
    prelu_out = graph.nodes[2].outputs[0]
    assert [graph.producers()[t].op_type for t in compared] == ["Quant", "Conv2dInt", IR_OP, "Flatten", "LinearInt"]
    assert prelu_out in compared
    x_q = np.asarray(dump[graph.nodes[2].inputs[0]]).astype(np.int64)
    assert (x_q < 0).any() and (x_q > 0).any()
    np.testing.assert_array_equal(y, trained(x).detach().numpy())


def _call(x: np.ndarray, slope: np.ndarray, n_x: int, n_a: int, n_o: int | None = None) -> KernelCall:
    def spec(index: int, name: str, arr: np.ndarray, n: int) -> TensorSpec:
        return TensorSpec(index, name, arr.dtype, arr.shape, n, "share_mem", 0, arr.nbytes)

    return KernelCall("act", IR_OP, {"data_bits": 8}, (x, slope), (spec(0, "x", x, n_x), spec(1, "a", slope, n_a)),
                      spec(2, "y", x, n_x if n_o is None else n_o))


int8s = st.integers(-128, 127)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shared=st.booleans(), n_a=st.integers(-3, 12), rank=st.integers(1, 4))
def test_kernel_equals_the_independent_reference(data, shared, n_a, rank):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    channels = shape[1] if rank >= 2 else 1
    x = np.array(data.draw(st.lists(int8s, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                 dtype=np.int8).reshape(shape)
    count = 1 if shared else channels
    slope = np.array(data.draw(st.lists(int8s, min_size=count, max_size=count)), dtype=np.int8)
    y = csk60xx.kernel(_call(x, slope, 5, n_a))
    assert y.dtype == np.int8 and y.shape == x.shape
    np.testing.assert_array_equal(y.astype(np.int64), reference_prelu_int(x, slope, n_a))


def test_kernel_rounds_half_up_and_saturates():
    x = np.array([[-2, -6, 5], [-128, -128, 3], [-128, -1, 0]], dtype=np.int8).reshape(1, 3, 3)
    y = csk60xx.kernel(_call(x, np.array([4, 64, -64], dtype=np.int8), 0, 4))
    assert y.tolist() == [[[0, -1, 5], [-128, -128, 3], [127, 4, 0]]]  # as QPReLU's eval test


def test_kernel_refuses_inconsistent_exponents():
    x = np.zeros((1, 2), dtype=np.int8)
    with pytest.raises(ModelFileError) as info:
        csk60xx.kernel(_call(x, np.ones(2, dtype=np.int8), 4, 3, n_o=5))
    assert info.value.node == "act" and "inconsistent exponents" in str(info.value)


def test_a_packed_prelu_without_its_kernel_is_a_simulator_error(trained, host, ops):
    _, model = _exported(trained, _example(), host, ops)
    sim = Simulator(pack_graph(read_onnx(model, ops=ops), ops=ops).blob)
    assert sim.missing_kernels == [IR_OP]
    with pytest.raises(SimulatorError, match="no simulator kernel"):
        sim.run([_example().numpy()])


# -- the lnn command line ------------------------------------------------------------------------------


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("lnn-ops-example"),
                    reason="lnn pack/run load plugins through entry points: pip install -e plugins_example")
def test_lnn_pack_and_run_give_the_eval_output(trained, host, ops, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    x = _example(4)
    _, model = _exported(trained, x, host, ops)
    onnx.save(model, tmp_path / "prelu.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    assert lnn_main(["pack", str(tmp_path / "prelu.onnx"), "-o", str(tmp_path / "model.bin")]) == 0
    assert lnn_main(["run", str(tmp_path / "model.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), trained(x).detach().numpy())


# -- the lnn front doors: export, verify, check and QDQ reach the plugin's op through the host ---------


def test_lnn_export_writes_prelu_int(trained, host, ops):
    x = _example()
    model = lnn.export(trained, x, dialect="csk60xx", host=host)
    assert read_onnx(model, ops=ops) == to_ir(trained, x, host=host)


def test_lnn_verify_is_bit_exact(trained, host):
    report = lnn.verify(trained, _example(), host=host)
    assert report.ok, report.table()
    assert "act_1" in {t.name for t in report.tensors}


def test_lnn_check_accepts_the_untrained_model(host):
    report = lnn.check(ConvPReLULinear(CHANNELS), _example(), host=host)
    assert report.ok, report.table()


def test_qdq_export_runs_in_onnxruntime_and_equals_eval_mode(trained, host):
    """The plugin's QDQ lowering (registered as node writer "qdq:PReluInt") makes the file standard ONNX."""
    import onnxruntime as ort

    x = _example(8)
    model = lnn.export(trained, x, dialect="qdq", dynamic_batch=True, host=host)
    onnx.checker.check_model(model, full_check=True)
    assert "PRelu" in {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_array_equal(got, trained(x).detach().numpy())
