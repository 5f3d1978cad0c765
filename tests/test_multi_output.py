"""Plural outputs and parameters on the torch side, and one classification of every node.

A test-only op family, defined in this file and registered on a private host through the public registries
alone (``OpFamily`` + an IR node writer), has two outputs and two weight/bias pairs::

    h = RQ_8(x_q . W0^T + b0, n_x + n_w0 - n_h)      b0 int32 at n_x + n_w0
    y = RQ_8(h   . W1^T + b1, n_h + n_w1 - n_y)      b1 int32 at n_h + n_w1 (the second pair's input is output 0)

It goes through ``lnn.init`` -> QAT forward/backward -> eval -> ``to_ir`` with both outputs and both pairs
correct: each output has its own quantizer, carried to its own consumers; the IR node ``TwoStageInt`` has inputs
``[x, w0, b0, w1, b1]``, outputs ``[h, y]`` (int8, each at its own exponent) and attributes ``data_bits``,
``parameter_bits``, ``o_bits``; its integers equal an independent int64 reference of the eval forward.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_backend_csk60xx.plugin as backend_plugin
import lnn_core
import lnn_core as lnn
import lnn_ops_builtin.plugin as ops_plugin
from lnn_core.errors import ExportError
from lnn_core.exporter import FloatIslandWarning, to_ir
from lnn_core.graph import IR_DOMAIN
from lnn_core.ops import OpFamily
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer, quantize_bias, quantize_weight
from lnn_core.quant.rewrite import ROLE_KEY, BuildContext, Built, NodeRole
from lnn_core.testing import isolated_host

OP_ID = "testop.TwoStage"
IR_OP = "TwoStageInt"


class TwoStage(nn.Module):
    """The float op: ``h = x W0^T + b0``, ``y = h W1^T + b1``; returns ``(h, y)``, or ``(h, (y,))`` when ``nested``
    (a nested return value, as ``nn.LSTM``'s ``y, (h, c)``)."""

    def __init__(self, f_in: int, hidden: int, f_out: int, nested: bool = False) -> None:
        super().__init__()
        self.nested = nested
        self.w0 = nn.Parameter(torch.randn(hidden, f_in) * 0.4)
        self.b0 = nn.Parameter(torch.randn(hidden) * 0.2)
        self.w1 = nn.Parameter(torch.randn(f_out, hidden) * 0.4)
        self.b1 = nn.Parameter(torch.randn(f_out) * 0.2)

    def forward(self, x: torch.Tensor):
        h = F.linear(x, self.w0, self.b0)
        y = F.linear(h, self.w1, self.b1)
        return (h, (y,)) if self.nested else (h, y)


class QTwoStage(QModule):
    """Quantized TwoStage: two output quantizers (``out_qs``), two weight/bias pairs."""

    op_id = OP_ID

    def __init__(self, float_op: TwoStage, *, recipe, act_bits: int, weight_bits: int, stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, weight_bits=weight_bits, stage=stage, clamps=())
        for name in ("w0", "b0", "w1", "b1"):  # the same parameters at the same names: same state_dict keys
            setattr(self, name, getattr(float_op, name))
        self.has_weight = True
        self.out_qs = nn.ModuleList([ActQuantizer(act_bits, recipe), ActQuantizer(act_bits, recipe)])
        if float_op.nested:
            self.out_tree = (0, (1,))

    def _result(self, h: torch.Tensor, y: torch.Tensor):
        return (h, (y,)) if self.out_tree is not None else (h, y)

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.w0, self.b0), (self.w1, self.b1)]

    def forward(self, x: torch.Tensor):
        if not self.quantizing:
            h = self.out_qs[0](F.linear(x, self.w0, self.b0))
            return self._result(h, self.out_qs[1](F.linear(h, self.w1, self.b1)))
        n_x = self.in_exponent(0)
        if self.training:  # the second pair's bias exponent needs n_h, known once output 0 is observed
            ((w0, b0, _),) = self.fake_quant_pairs(self.pairs()[:1], [n_x])
            h = self.finish_train(F.linear(x, w0, b0), None, i=0)
            ((w1, b1, _),) = self.fake_quant_pairs(self.pairs()[1:], [self.out_qs[0].current()])
            return self._result(h, self.finish_train(F.linear(h, w1, b1), None, i=1))
        with torch.no_grad():
            n_h = self.out_qs[0].eval_exponent(None)
            (w0, b0, n_w0), (w1, b1, n_w1) = self.quantize_pairs(self.pairs(), [n_x, n_h])
            h = self.finish_exact(F.linear(x.double() * 2.0**n_x, w0, b0), n_x + n_w0, None, i=0)
            y = self.finish_exact(F.linear(h.double() * 2.0**n_h, w1, b1), n_h + n_w1, None, i=1)
            return self._result(h, y)

    def integer_params(self) -> dict:
        """The frozen integers of the eval forward: per pair ``weight``, ``bias`` (int64), ``n_w``, ``n_b``."""
        n_x = self.in_exponent(0)
        n_o = [q.eval_exponent(None) for q in self.out_qs]
        pairs = self.quantize_pairs([(w.detach(), b.detach()) for w, b in self.pairs()], [n_x, n_o[0]])
        return {"n_x": n_x, "n_o": n_o,
                "pairs": [{"weight": w.to(torch.int64), "bias": b.to(torch.int64), "n_w": n_w, "n_b": n_in + n_w}
                          for (w, b, n_w), n_in in zip(pairs, [n_x, n_o[0]])]}


def _build(ctx: BuildContext) -> Built:
    return Built(QTwoStage(ctx.module, recipe=ctx.recipe, act_bits=ctx.layer.act_bits,
                           weight_bits=ctx.layer.weight_bits, stage=ctx.stage), [ctx.node.args[0]])


def write_ir(ctx) -> list[str]:
    """``TwoStageInt(x, w0, b0, w1, b1) -> (h, y)``: one tensor name per output, in ``out_qs`` order."""
    m: QTwoStage = ctx.module
    p = m.integer_params()
    inputs = [ctx.inputs[0]]
    for k, pair in enumerate(p["pairs"]):
        inputs.append(ctx.initializer(f"w{k}", pair["weight"].numpy().astype(np.int8), pair["n_w"]))
        inputs.append(ctx.initializer(f"b{k}", pair["bias"].numpy().astype(np.int32), pair["n_b"]))
    outputs = [ctx.tensor(n, "int8", ctx.out_shapes[i], suffix=f".out{i}") for i, n in enumerate(p["n_o"])]
    ctx.add(IR_OP, inputs, outputs, {"data_bits": 8, "parameter_bits": m.weight_bits, "o_bits": 8})
    return outputs


def _plugin(writer=write_ir) -> types.ModuleType:
    mod = types.ModuleType("two_stage_test_plugin")

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        registry.add(OpFamily(id=OP_ID, kind="compute", modules=(TwoStage,), build=_build,
                              description="test op: two outputs, two weight/bias pairs"))

    @lnn_core.hookimpl
    def lnn_register_exporters(registry):
        registry.add_node_writer("ir", OP_ID, writer)

    mod.lnn_register_ops = lnn_register_ops
    mod.lnn_register_exporters = lnn_register_exporters
    return mod


class Net(nn.Module):
    """``fc -> TwoStage``; output 0 only feeds a ReLU (then a Linear), output 1 is a graph output and feeds a mul."""

    def __init__(self, nested: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.two = TwoStage(8, 5, 4, nested)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.two.nested:
            h, (y,) = self.two(self.fc(x))
        else:
            h, y = self.two(self.fc(x))
        return self.head(torch.relu(h)), y, y * 0.5


class Whole(nn.Module):
    """The op's return value is the model's: both outputs become graph outputs, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.two = TwoStage(6, 5, 4)

    def forward(self, x: torch.Tensor):
        return self.two(x)


@pytest.fixture(scope="module")
def host():
    return isolated_host([ops_plugin, backend_plugin, _plugin()])


def _trained(host, steps: int = 4):
    torch.manual_seed(0)
    model = lnn.init(Net(), host=host)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        out, y, _ = model(torch.randn(16, 6))
        loss = out.square().mean() + y.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(host):
    return _trained(host)


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, tuple) else [out]


def _two_io(model, x):
    """The eval input and outputs of ``model.two`` on ``x``."""
    seen = {}
    handle = model.two.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["x"], tuple(_flat(seen["out"]))


# -- lnn.init: one quantizer per output, carried to its own consumers ----------------------------------------------


def test_each_output_has_its_quantizer_and_carries_it_to_its_consumers(host):
    model = lnn.init(Net(), host=host)
    two = model.two
    assert isinstance(two, QTwoStage) and len(two.out_qs) == 2 and two.out_qs[0] is not two.out_qs[1]
    assert two.input_quantizers == (model.fc.out_q,)
    assert model.head.input_quantizers == (two.out_qs[0],)  # through getitem 0 and the ReLU
    (mul,) = [m for path, m in model.named_modules() if model.lnn.ops.get(path) == "builtin.Mul"]
    assert mul.input_quantizers == (two.out_qs[1],)  # through getitem 1
    # ahead-relu per output: output 0 feeds only a ReLU, output 1 is a graph output
    assert two.out_qs[0].positive and not two.out_qs[1].positive
    keys = set(model.state_dict())
    assert {"two.w0", "two.b0", "two.w1", "two.b1", "two.out_qs.0.running", "two.out_qs.1.running"} <= keys
    assert not any(k.startswith("two.out_q.") for k in keys)


def test_every_node_carries_the_role_lnn_init_gave_it(host):
    model = lnn.init(Net(), host=host)
    roles = {n.name: n.meta[ROLE_KEY] for n in model.graph.nodes}
    assert all(isinstance(r, NodeRole) for r in roles.values())
    picks = [n for n in model.graph.nodes if n.meta[ROLE_KEY].kind == "select"]
    assert [(n.args[0].target, n.meta[ROLE_KEY].index) for n in picks] == [("two", 0), ("two", 1)]
    by_target = {n.target: n.meta[ROLE_KEY] for n in model.graph.nodes if n.op == "call_module"}
    assert by_target["two"] == NodeRole("op", OP_ID, quantized=True)
    assert by_target["fc"].op == "builtin.Linear" and by_target["q_input_x"].kind == "quant"
    relu = next(n for n in model.graph.nodes if n.target is torch.relu)
    assert relu.meta[ROLE_KEY] == NodeRole("op", "builtin.ReLU", quantized=True)


# -- QAT: both outputs on their grids, gradients to both pairs -------------------------------------------------------


def test_qat_step_trains_both_pairs_and_observes_both_outputs(host):
    torch.manual_seed(1)
    model = lnn.init(Net(), host=host)
    model.train()
    h_seen = {}
    model.two.register_forward_hook(lambda m, a, out: h_seen.update(out=out))
    out, y, _ = model(torch.randn(8, 6))
    (out.square().mean() + y.square().mean()).backward()
    two = model.two
    for name in ("w0", "b0", "w1", "b1"):
        grad = getattr(two, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert [int(q.num_batches) for q in two.out_qs] == [1, 1]
    h, y2 = _flat(h_seen["out"])
    for t, q in zip((h, y2), two.out_qs):  # each output lies on its own quantizer's grid
        v = t.detach().double() * 2.0 ** q.current()
        assert torch.equal(v, v.round()) and v.abs().max() <= 128


# -- eval: exact integers of both pairs ------------------------------------------------------------------------------


def test_eval_forward_equals_an_int64_reference_of_both_stages(trained, ref):
    two = trained.two
    x, (h, y) = _two_io(trained, torch.randn(32, 6))
    p = two.integer_params()
    n_x, (n_h, n_y) = p["n_x"], p["n_o"]
    (w0, b0), (w1, b1) = ((q["weight"].numpy(), q["bias"].numpy()) for q in p["pairs"])
    assert [q["n_b"] for q in p["pairs"]] == [n_x + p["pairs"][0]["n_w"], n_h + p["pairs"][1]["n_w"]]
    x_q = ref.to_int(x, n_x)
    h_q = ref.rq(ref.linear_ref(x_q, w0, b0), n_x + p["pairs"][0]["n_w"] - n_h)
    y_q = ref.rq(ref.linear_ref(h_q, w1, b1), n_h + p["pairs"][1]["n_w"] - n_y)
    np.testing.assert_array_equal(ref.to_int(h, n_h), h_q)
    np.testing.assert_array_equal(ref.to_int(y, n_y), y_q)
    assert np.abs(h_q).max() > 8 and np.abs(y_q).max() > 8  # the grids are used, not degenerate


# -- export: one IR node, two outputs, two pairs --------------------------------------------------------------------


def test_ir_node_has_both_outputs_and_both_pairs(trained, host):
    x = torch.randn(4, 6)
    graph = to_ir(trained, x, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == IR_OP]
    two = trained.two
    p = two.integer_params()
    assert node.domain == IR_DOMAIN
    assert node.attrs == {"data_bits": 8, "parameter_bits": 8, "o_bits": 8}
    assert len(node.inputs) == 5 and len(node.outputs) == 2
    x_t, w0, b0, w1, b1 = node.inputs
    assert graph.tensors[x_t].exponent == p["n_x"] == trained.fc.out_q.eval_exponent()
    for (w, b), pair in zip(((w0, b0), (w1, b1)), p["pairs"]):
        assert graph.tensors[w].dtype == "int8" and graph.tensors[w].exponent == pair["n_w"]
        assert graph.tensors[b].dtype == "int32" and graph.tensors[b].exponent == pair["n_b"]
        np.testing.assert_array_equal(graph.initializers[w], pair["weight"].numpy())
        np.testing.assert_array_equal(graph.initializers[b], pair["bias"].numpy())
    # the integers are the floor-rule weights and the biases at n_x + n_w of their own pair
    w1_i, n_w1 = quantize_weight(two.w1, 8, two.recipe)
    n_h = two.out_qs[0].eval_exponent()
    assert graph.tensors[b1].exponent == n_h + n_w1
    np.testing.assert_array_equal(graph.initializers[w1], w1_i.numpy())
    np.testing.assert_array_equal(graph.initializers[b1], quantize_bias(two.b1, n_h + n_w1, 32).numpy())
    h_t, y_t = (graph.tensors[t] for t in node.outputs)
    assert (h_t.dtype, h_t.shape, h_t.exponent) == ("int8", (4, 5), two.out_qs[0].eval_exponent())
    assert (y_t.dtype, y_t.shape, y_t.exponent) == ("int8", (4, 4), two.out_qs[1].eval_exponent())
    # each output reaches its own consumers: the ReLU reads h, the graph output's Dequant reads y
    readers = {t: sorted(n.op_type for n in graph.nodes if t in n.inputs) for t in node.outputs}
    assert readers == {node.outputs[0]: ["Relu"], node.outputs[1]: ["Dequant", "iqMul"]}
    assert len(graph.outputs) == 3
    # the verifier compares each output with the fx node that picks it
    picks = {n.name: n.meta[ROLE_KEY].index for n in trained.graph.nodes if n.meta[ROLE_KEY].kind == "select"}
    assert [picks[graph.meta["sources"][t]] for t in node.outputs] == [0, 1]


def test_ir_outputs_hold_the_eval_integers(trained, host):
    x = torch.randn(4, 6)
    graph = to_ir(trained, x, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == IR_OP]
    _, outs = _two_io(trained, x)
    for t, value in zip(node.outputs, outs):  # every output's exponent puts the eval value on the int8 grid
        v = value.double() * 2.0 ** graph.tensors[t].exponent
        assert torch.equal(v, v.round()) and v.abs().max() <= 128


def test_export_leaves_the_model_as_it_was(trained, host):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    to_ir(trained, torch.randn(4, 6), host=host)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_a_writer_returning_the_wrong_number_of_outputs_names_the_op():
    def one_output(ctx):
        return write_ir(ctx)[0]

    host = isolated_host([ops_plugin, backend_plugin, _plugin(one_output)])
    model = _trained(host, steps=1)
    with pytest.raises(ExportError) as info:
        to_ir(model, torch.randn(2, 6), host=host)
    assert info.value.node == "two" and info.value.dialect == "ir"
    assert OP_ID in str(info.value).splitlines()[0] and "2 output tensor name(s)" in str(info.value)


def test_a_node_without_a_role_is_refused_with_the_node_named(host):
    model = _trained(host, steps=1)
    node = next(n for n in model.graph.nodes if n.target == "head")
    del node.meta[ROLE_KEY]
    with pytest.raises(ExportError) as info:
        to_ir(model, torch.randn(2, 6), host=host)
    assert info.value.node == node.name and "not classified by lnn.init" in str(info.value).splitlines()[0]


def test_nested_outputs_are_picked_level_by_level(host):
    """``h, (y,) = op(x)`` (the LSTM shape): each getitem selects through one level; carriers and IR follow."""
    torch.manual_seed(0)
    model = lnn.init(Net(nested=True), host=host)
    two = model.two
    assert two.out_tree == (0, (1,))
    (mul,) = [m for path, m in model.named_modules() if model.lnn.ops.get(path) == "builtin.Mul"]
    assert model.head.input_quantizers == (two.out_qs[0],) and mul.input_quantizers == (two.out_qs[1],)
    assert [n.meta[ROLE_KEY].index for n in model.graph.nodes if n.meta[ROLE_KEY].kind == "select"] == [0, 1, 0]
    model.train()
    model(torch.randn(8, 6))
    model.eval()
    graph = to_ir(model, torch.randn(4, 6), host=host)
    (node,) = [n for n in graph.nodes if n.op_type == IR_OP]
    readers = {t: sorted(n.op_type for n in graph.nodes if t in n.inputs) for t in node.outputs}
    assert readers == {node.outputs[0]: ["Relu"], node.outputs[1]: ["Dequant", "iqMul"]}
    assert [graph.tensors[t].exponent for t in node.outputs] == [q.eval_exponent() for q in two.out_qs]


def test_an_op_whose_tuple_is_the_model_output_gives_one_graph_output_per_output(host):
    torch.manual_seed(0)
    model = lnn.init(Whole(), host=host)
    model.train()
    model(torch.randn(8, 6))
    model.eval()
    graph = to_ir(model, torch.randn(4, 6), host=host)
    (node,) = [n for n in graph.nodes if n.op_type == IR_OP]
    assert graph.outputs == ["output_0", "output_1"]
    dequant = {n.outputs[0]: n.inputs[0] for n in graph.nodes if n.op_type == "Dequant"}
    assert [dequant[o] for o in graph.outputs] == node.outputs


# -- classify once: the exporter follows lnn.init's decisions ------------------------------------------------------


class KeptFloat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.act = lnn.disable_quant(nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


def test_a_passthrough_module_kept_float_exports_as_a_float_island(host):
    """lnn.init keeps ``disable_quant(nn.ReLU())`` float (a Quant after it); the export writes the same: a float
    Relu between Dequant and Quant, not an int8 Relu."""
    torch.manual_seed(0)
    model = lnn.init(KeptFloat(), host=host)
    model.train()
    model(torch.randn(8, 6))
    model.eval()
    act = next(n for n in model.graph.nodes if n.target == "act")
    assert act.meta[ROLE_KEY] == NodeRole("float", quantized=True, name="ReLU")
    with pytest.warns(FloatIslandWarning, match="ReLU"):
        graph = to_ir(model, torch.randn(2, 6), host=host)
    assert [n.op_type for n in graph.nodes] == ["Quant", "LinearInt", "Dequant", "Relu", "Quant", "LinearInt",
                                                "Dequant"]
    relu = graph.nodes[3]
    assert relu.domain == "" and graph.tensors[relu.outputs[0]].exponent is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatIslandWarning)
        with pytest.raises(ExportError):
            to_ir(model, torch.randn(2, 6), host=host, strict=True)


class Three(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_a_layer_kept_float_by_the_config_exports_as_a_float_island(host):
    """``by_path={"b": LayerConfig(float=True)}``: lnn.init keeps ``b`` an nn.Linear; the export writes a float Gemm
    between Dequant and Quant (it used to hand the float module to the int8 writer, which failed)."""
    torch.manual_seed(0)
    config = lnn.QuantConfig(by_path={"b": lnn.LayerConfig(float=True)})
    model = lnn.init(Three(), config=config, host=host)
    model.train()
    model(torch.randn(8, 6))
    model.eval()
    b = next(n for n in model.graph.nodes if n.target == "b")
    assert type(model.b) is nn.Linear and b.meta[ROLE_KEY] == NodeRole("float", quantized=True, name="Linear")
    with pytest.warns(FloatIslandWarning, match="Linear"):
        graph = to_ir(model, torch.randn(2, 6), host=host)
    assert [n.op_type for n in graph.nodes] == ["Quant", "LinearInt", "Dequant", "Gemm", "Quant", "LinearInt",
                                                "Dequant"]


# -- the backend half: the same op through pack -> simulate -> verify ---------------------------------------


def _two_stage_infer(c):
    x, w0, b0, w1, b1 = (c.info(i) for i in range(5))
    c.dtype(x, ["int8"], "input")
    for w, b in ((w0, b0), (w1, b1)):
        c.dtype(w, ["int8"], "weight")
        c.dtype(b, ["int32"], "bias")
    if w0.shape[1] != x.shape[-1] or w1.shape[1] != w0.shape[0]:
        raise c.fail("weights do not chain", {"x": x.shape, "w0": w0.shape, "w1": w1.shape})
    return [c.out("int8", [*x.shape[:-1], w0.shape[0]], None, 0), c.out("int8", [*x.shape[:-1], w1.shape[0]], None, 1)]


def _two_stage_kernel(call):
    """``h = RQ_8(x W0^T + b0, n_x + n_w0 - n_h)``, ``y = RQ_8(h W1^T + b1, n_h + n_w1 - n_y)``, half-up, exact."""
    x, w0, b0, w1, b1 = (np.asarray(a).astype(np.int64) for a in call.inputs)
    n = [s.exponent for s in call.input_specs]
    n_h, n_y = (s.exponent for s in call.outputs)

    def rq(acc, shift):
        v = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift
        return np.clip(v, -128, 127)

    h = rq(x @ w0.T + b0, n[0] + n[1] - n_h)
    y = rq(h @ w1.T + b1, n_h + n[3] - n_y)
    return h.astype(np.int8), y.astype(np.int8)


def _two_stage_op():
    from lnn_backend_csk60xx.ops import AttrSpec, OpDef, Params

    bits = {k: AttrSpec("int", default=8) for k in ("data_bits", "parameter_bits", "o_bits")}
    return OpDef(IR_OP, "lnn.test", (5, 5), _two_stage_infer, outputs=2, attrs=bits,
                 scales={"scale_x": ("in", 0), "scale_w0": ("in", 1), "scale_w1": ("in", 3),
                         "scale_h": ("out", 0), "scale_y": ("out", 1)},
                 params=(Params(1, 2), Params(3, 4, x=("out", 0))),
                 prefetch_bytes=lambda graph, node: sum(graph.initializers[node.inputs[i]].size for i in (1, 3)),
                 kernel=_two_stage_kernel)


def _backend_plugin() -> types.ModuleType:
    mod = types.ModuleType("two_stage_backend_plugin")

    @lnn_core.hookimpl
    def lnn_register_target_ops(registry):
        registry.add("csk60xx", _two_stage_op())

    mod.lnn_register_target_ops = lnn_register_target_ops
    return mod


def test_the_two_output_op_packs_simulates_and_verifies_bit_exact(trained):
    """quantize -> export -> pack -> simulate -> verify: every tensor, both outputs included, equals eval mode."""
    host = isolated_host([ops_plugin, backend_plugin, _plugin(), _backend_plugin()])
    x = torch.randn(4, 6) * 2
    report = lnn.verify(trained, x, host=host)
    assert report.ok, report.table()
    graph = to_ir(trained, x, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == IR_OP]
    compared = {t.name for t in report.tensors}
    assert set(node.outputs) <= compared  # both outputs of the op were compared, not only the graph outputs
    # the dialect file carries both scales of the outputs and both bias exponents survive a read-back
    from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
    from lnn_backend_csk60xx.ops import OpSet

    ops = OpSet.from_host(host)
    back = read_onnx(write_onnx(graph, ops=ops), ops=ops)
    for t in [*node.inputs, *node.outputs]:
        assert back.tensors[t].exponent == graph.tensors[t].exponent, t
