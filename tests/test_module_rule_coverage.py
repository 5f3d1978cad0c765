"""Every CSK60xx rule that judges PyTorch modules fires at ``lnn.init`` on a tiny model, and stays quiet at its limit.

The pack-time rules are covered torch-free in ``lnn_backend_csk60xx/tests/test_rule_coverage.py``; that file
declares the module rules (``MODULE_RULES``) and checks the declaration against the rules index. This file
checks that its cases cover exactly that declaration, so a module rule added without a case fails here.

An error case raises :class:`HardwareLimitError` whose ``violations`` carry the rule id, module path, limit,
actual value and hint; a warning case (``severity="warning"``) leaves the model built with the warning in
``model.lnn.report``. At the limit, ``lnn.init`` reports nothing.
"""

from __future__ import annotations

import ast
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.rules import PACK_RULES, RULES
from lnn_core.errors import HardwareLimitError

BACKEND_CASES = Path(__file__).resolve().parents[1] / "lnn_backend_csk60xx" / "tests" / "test_rule_coverage.py"


def seq(**layers: nn.Module) -> nn.Sequential:
    """Layers applied in order; each one's module path is its keyword."""
    return nn.Sequential(OrderedDict(layers))


class TwoBranch(nn.Module):
    """``a(x) <op> b(x)`` with two 1x1 convs: the quantized add/sub module is ``q_add``/``q_sub``."""

    def __init__(self, sub: bool) -> None:
        super().__init__()
        self.a, self.b, self.sub = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), sub

    def forward(self, x):
        return self.a(x) - self.b(x) if self.sub else self.a(x) + self.b(x)


class Sliced(nn.Module):
    """A conv whose output is indexed with a step (no int8 Slice form) or without one."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x)[:, ::2] if self.step == 2 else self.conv(x)[:, 0:2]


class SelfSimilarity(nn.Module):
    """``a(x) @ b(x).transpose(-1, -2)``: the quantized matmul module is ``q_matmul``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)

    def forward(self, x):
        return self.a(x) @ self.b(x).transpose(-1, -2)


class CrossProduct(nn.Module):
    """``a(x) @ b(y)^T``: two inputs, so their batches may differ (torch broadcasts, BmmInt does not)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)

    def forward(self, x, y):
        return self.a(x) @ self.b(y).transpose(-1, -2)


def by_path(**layers: lnn.LayerConfig) -> lnn.QuantConfig:
    return lnn.QuantConfig(by_path=dict(layers))


@dataclass(frozen=True)
class Case:
    """``build(over)`` returns ``(model, config)`` just over the limit (``over=True``) or at it.

    :param path: the module path the rule names.
    :param also: other error rule ids that fire on the over-limit model on the same module.
    :param hint: a phrase the hint contains.
    """

    rule_id: str
    path: str
    build: Callable[[bool], tuple[nn.Module, lnn.QuantConfig | None]]
    limit: object
    actual: str
    hint: str
    also: frozenset[str] = frozenset()
    severity: str = "error"
    name: str = ""
    #: ``example_inputs`` for ``lnn.init`` (the rules that judge shapes)
    examples: Callable[[bool], tuple[torch.Tensor, ...]] | None = None

    def init(self, model: nn.Module, config: lnn.QuantConfig | None, host, over: bool) -> nn.Module:
        examples = self.examples(over) if self.examples is not None else None
        return lnn.init(model, config=config, host=host, example_inputs=examples)


def _m(make: Callable[[bool], nn.Module]) -> Callable[[bool], tuple[nn.Module, None]]:
    return lambda over: (make(over), None)


CASES: list[Case] = [
    # -- window geometry, shared by conv, deconv and pooling -----------------------------------------------------
    Case("csk60xx.conv.kernel_size", "conv", _m(lambda over: seq(conv=nn.Conv2d(4, 4, 6 if over else 5))),
         "1..5 per axis", "kernel 6x6", "stacked kernels"),
    Case("csk60xx.conv.kernel_size", "conv", _m(lambda over: seq(conv=nn.Conv1d(4, 4, 6 if over else 5))),
         "1..5 per axis", "kernel 6", "stacked kernels", name="conv1d"),
    Case("csk60xx.deconv.kernel_size", "up", _m(lambda over: seq(up=nn.ConvTranspose2d(4, 4, 6 if over else 5))),
         "1..5 per axis", "kernel 6x6", "stacked kernels"),
    Case("csk60xx.deconv.stride", "up",
         _m(lambda over: seq(up=nn.ConvTranspose2d(4, 4, 3, stride=3) if over else nn.ConvTranspose2d(4, 4, 4,
                                                                                                       stride=4))),
         "each in (1, 2, 4)", "stride 3x3", "use stride 2"),
    Case("csk60xx.deconv.pad", "up",
         _m(lambda over: seq(up=nn.ConvTranspose2d(4, 4, 5, padding=5 if over else 4))),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.pool.pad", "pool",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1), pool=nn.MaxPool2d(5, stride=1, padding=5 if over else 2))),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.conv.stride", "conv",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 3, stride=3) if over else nn.Conv2d(4, 4, 4, stride=4))),
         "each in (1, 2, 4)", "stride 3x3", "use stride 2"),
    Case("csk60xx.conv.pad", "conv", _m(lambda over: seq(conv=nn.Conv2d(4, 4, 5, padding=5 if over else 4))),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.conv.pad", "conv", _m(lambda over: seq(conv=nn.Conv2d(4, 4, 2, padding=3 if over else 2))),
         "0..4 and <= kernel", "pads 3x3x3x3 with kernel 2x2", "pad at most 4", name="over_kernel"),
    Case("csk60xx.conv.kernel_ge_stride", "conv",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1 if over else 2, stride=2))),
         "kernel >= stride per axis", "kernel 1x1, stride 2x2", "raise the kernel"),
    Case("csk60xx.conv.kernel_ge_stride", "pool",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1), pool=nn.MaxPool2d(3 if over else 4, stride=4))),
         "kernel >= stride per axis", "kernel 3x3, stride 4x4", "raise the kernel", name="maxpool"),
    Case("csk60xx.conv.dilation", "conv",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 3, padding=2 if over else 1, dilation=2 if over else 1))),
         "1 per axis", "dilation 2x2", "dilation 1"),
    # -- convolution ----------------------------------------------------------------------------------------
    Case("csk60xx.conv.padding_mode", "conv",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect" if over else "zeros"))),
         "'zeros'", "padding_mode='reflect'", "padding_mode='zeros'"),
    Case("csk60xx.conv.groups", "conv",  # groups = channels (depthwise) is native
         _m(lambda over: seq(conv=nn.Conv2d(8, 8, 3, padding=1, groups=2 if over else 8))),
         "1 or depthwise", "groups 2 of 8 input channels", "one NPU call per group", severity="warning"),
    Case("csk60xx.conv.bits", "conv",
         lambda over: (seq(conv=nn.Conv2d(4, 4, 3)), by_path(conv=lnn.LayerConfig(weight_bits=4 if over else 8))),
         "weight bits in (8,)", "4-bit weight", "weight_bits=8"),
    # -- transposed convolution -----------------------------------------------------------------------------
    Case("csk60xx.deconv.kernel_for_stride", "up",  # below the stride, so kernel_ge_stride fires too
         _m(lambda over: seq(up=nn.ConvTranspose2d(4, 4, 3 if over else 4, stride=4))),
         "stride 4: kernel in (4, 5)", "kernel 3x3 with stride 4x4", "kernel of 4..5",
         also=frozenset({"csk60xx.conv.kernel_ge_stride"})),
    Case("csk60xx.deconv.groups", "up",
         _m(lambda over: seq(up=nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2 if over else 1))),
         "1", "groups 2", "groups=1"),
    Case("csk60xx.deconv.out_bits", "up",  # 16-bit outputs are fine for a conv, not for a deconv
         lambda over: (seq(up=nn.ConvTranspose2d(4, 4, 2, stride=2)),
                       by_path(up=lnn.LayerConfig(act_bits=16 if over else 8))),
         "8-bit", "16-bit output", "act_bits=8"),
    # -- matrix engine --------------------------------------------------------------------------------------
    Case("csk60xx.linear.bits", "fc",
         lambda over: (seq(fc=nn.Linear(8, 4)), by_path(fc=lnn.LayerConfig(weight_bits=4 if over else 8))),
         "weight bits in (8,)", "4-bit weight", "weight_bits=8"),
    Case("csk60xx.linear.in_features", "fc", _m(lambda over: seq(fc=nn.Linear(8193 if over else 8192, 2))),
         "<= 8192", "8193 input features", "reduce the features"),
    # -- pooling --------------------------------------------------------------------------------------------
    Case("csk60xx.pool.bits", "pool",  # the conv writes 16 bits, which the pool cannot read
         lambda over: (seq(conv=nn.Conv2d(4, 4, 3), pool=nn.MaxPool2d(2)),
                       by_path(conv=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    Case("csk60xx.pool.kernel_size", "pool",  # a max pool on the float input runs on the host: not judged
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1), pool=nn.MaxPool2d(6 if over else 5))),
         "<= 5 per axis", "kernel 6x6", "global pooling"),
    Case("csk60xx.pool.kernel_size", "pool", _m(lambda over: seq(pool=nn.AvgPool2d(6 if over else 5))),
         "<= 5 per axis", "kernel 6x6", "global pooling", name="avgpool"),
    Case("csk60xx.pool.ceil_mode", "pool",
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1), pool=nn.MaxPool2d(2, ceil_mode=over))),
         "ceil_mode=False", "ceil_mode=True", "ceil_mode=False"),
    Case("csk60xx.avgpool.divisor", "pool",
         _m(lambda over: seq(pool=nn.AvgPool2d(2, divisor_override=3 if over else None))),
         "None", "divisor_override=3", "remove divisor_override"),
    Case("csk60xx.avgpool.divisor", "pool",  # without padding the two divisors agree
         _m(lambda over: seq(pool=nn.AvgPool2d(3, stride=1, padding=1 if over else 0, count_include_pad=False))),
         "count_include_pad=True", "count_include_pad=False with padding", "count_include_pad=True",
         name="count_include_pad"),
    Case("csk60xx.avgpool.ties", "pool",  # area 6 can tie; area 4 cannot
         _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1), pool=nn.AvgPool2d((2, 3) if over else 2))),
         "an odd or power-of-two window area", "window 2x3 (area 6)", "one LSB", severity="warning"),
    # -- element-wise ---------------------------------------------------------------------------------------
    Case("csk60xx.eltwise.bits", "q_add",
         lambda over: (TwoBranch(sub=False), by_path(a=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    Case("csk60xx.sub.unverified", "q_sub", _m(lambda over: TwoBranch(sub=over)),
         "verified ops", "iqSub", "lnn verify", severity="warning"),
    # -- sigmoid / tanh ---------------------------------------------------------------------------------------
    Case("csk60xx.activation.input_bits", "act",  # the Requant in front of iqSigmoid widens int8 only
         lambda over: (seq(conv=nn.Conv2d(4, 4, 3), act=nn.Sigmoid()),
                       by_path(conv=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    # -- LayerNorm (spec/int8-seq-ops.md 2.3.5, 6.4) -------------------------------------------------------------
    Case("csk60xx.layernorm.row", "ln", _m(lambda over: seq(fc=nn.Linear(4, 363 if over else 362),
                                                            ln=nn.LayerNorm(363 if over else 362))),
         "4 <= T <= 362", "row of 363", "at most 362"),
    Case("csk60xx.layernorm.row", "ln", _m(lambda over: seq(fc=nn.Linear(4, 3 if over else 4),
                                                            ln=nn.LayerNorm(3 if over else 4))),
         "4 <= T <= 362", "row of 3", "at least 4", name="short"),
    Case("csk60xx.layernorm.eps", "ln", _m(lambda over: seq(fc=nn.Linear(4, 8), ln=nn.LayerNorm(8, eps=1e-6 if over
                                                                                                else 1e-5))),
         "eps 1e-05", "eps 1e-06", "eps=1e-05"),
    Case("csk60xx.layernorm.dims", "ln", _m(lambda over: seq(conv=nn.Conv2d(4, 4, 1),
                                                             ln=nn.LayerNorm([4, 2, 8] if over else [2, 8]))),
         "<= 2", "3 normalized dims", "last dimension"),
    Case("csk60xx.layernorm.bits", "ln",
         lambda over: (seq(fc=nn.Linear(4, 8), ln=nn.LayerNorm(8)),
                       by_path(fc=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    # -- softmax / log-softmax, matmul (spec/int8-seq-ops.md 2.4.5, 2.5.5, 2.9.5) ----------------------------------
    Case("csk60xx.softmax.dim", "sm", _m(lambda over: seq(fc=nn.Linear(4, 8), sm=nn.Softmax(dim=-2 if over else -1))),
         "dim=-1 (the last dimension)", "dim=-2", "move the softmax dimension last"),
    Case("csk60xx.softmax.dim", "sm", _m(lambda over: seq(fc=nn.Linear(4, 8),
                                                          sm=nn.LogSoftmax(dim=None if over else -1))),
         "dim=-1 (the last dimension)", "dim=None", "give dim explicitly", name="implicit"),
    Case("csk60xx.softmax.input_bits", "sm",
         lambda over: (seq(fc=nn.Linear(4, 8), sm=nn.Softmax(-1)),
                       by_path(fc=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    Case("csk60xx.softmax.row", "sm",
         _m(lambda over: seq(fc=nn.Linear(4, 2049 if over else 2048), sm=nn.Softmax(-1))),
         "row <= 2048", "row of 2049", "rows of <= 2048", examples=lambda over: (torch.randn(1, 4),)),
    Case("csk60xx.bmm.right_matrix", "q_matmul", _m(lambda over: SelfSimilarity()),
         "<= 32768 bytes", "right matrix (8, 4097): 32800 bytes", "split the product",
         examples=lambda over: (torch.randn(1, 4097 if over else 4096, 4),)),
    Case("csk60xx.bmm.rank", "q_matmul", _m(lambda over: CrossProduct()),
         "equal ranks in (2, 3), equal batches", "operands (2, 3, 8) and (1, 8, 5)", "[batch, M, K]",
         examples=lambda over: (torch.randn(2, 3, 4), torch.randn(1 if over else 2, 5, 4))),
    Case("csk60xx.bmm.bits", "q_matmul",
         lambda over: (SelfSimilarity(), by_path(b=lnn.LayerConfig(act_bits=16 if over else 8))),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    # -- GRU (spec/int8-seq-ops.md 2.2.5, 6.2) -----------------------------------------------------------------
    Case("csk60xx.gru.direction", "gru", _m(lambda over: seq(fc=nn.Linear(4, 4),
                                                             gru=nn.GRU(4, 6, bidirectional=over))),
         "the vendor runtime runs go_forward in (1,) only", "go_forward 0", "unidirectional GRU",
         severity="warning"),
    # -- embedding (spec/int8-seq-ops.md 2.8.5) -----------------------------------------------------------------
    Case("csk60xx.gather.bits", "emb",
         lambda over: (seq(emb=nn.Embedding(10, 4)), by_path(emb=lnn.LayerConfig(weight_bits=4 if over else 8))),
         "weight bits in (8,)", "4-bit weight", "weight_bits=8"),
    Case("csk60xx.gather.max_norm", "emb",
         _m(lambda over: seq(emb=nn.Embedding(10, 4, max_norm=1.0 if over else None))),
         "max_norm None", "max_norm 1", "without max_norm"),
    # -- indexing (spec 3.29: Slice cuts one axis, step 1) --------------------------------------------------------
    Case("csk60xx.slice.index", "getitem", _m(lambda over: Sliced(2 if over else 1)),
         "integers, constant a:b with step 1, ...", "index [:, ::2] (slice with step 2)", "strided conv"),
    # -- padding (spec 3.31: iqPad fills H and W with 0) -------------------------------------------------------
    Case("csk60xx.pad.form", "pad", _m(lambda over: seq(conv=nn.Conv2d(1, 4, 3),
                                                      pad=nn.ConstantPad2d(1, 0.5 if over else 0.0))),
         "constant 0 on the last two axes, pads >= 0", "pad [1, 1, 1, 1] (value 0.5)", "ZeroPad2d"),
]


def _case_id(case: Case) -> str:
    return case.rule_id.removeprefix("csk60xx.") + (f"-{case.name}" if case.name else "")


def _rule(rule_id: str):
    return next(r for r in (*RULES, *PACK_RULES) if r.id == rule_id)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_module_rule_fires_over_the_limit(case: Case, host):
    model, config = case.build(True)
    limits = host.targets["csk60xx"].limits
    if case.severity == "error":
        with pytest.raises(HardwareLimitError) as exc:
            case.init(model, config, host, True)
        err = exc.value
        violations = err.violations
        first = violations[0]
        assert (err.rule_id, err.op_name, err.limit, err.actual) == (first.rule_id, first.op_name, first.limit,
                                                                    first.actual)
        assert str(err).splitlines()[0].startswith(f"op '{first.op_name}' ({first.op_type}) does not fit target "
                                                   "csk60xx")
        assert str(err).splitlines()[-1].lstrip().startswith("hint:")
    else:
        violations = case.init(model, config, host, True).lnn.report.violations
    found = [v for v in violations if v.rule_id == case.rule_id]
    assert [v.op_name for v in found] == [case.path], [(v.op_name, v.rule_id) for v in violations]
    (v,) = found
    assert (v.limit, v.actual, v.severity, v.target) == (case.limit, case.actual, case.severity, "csk60xx")
    assert case.hint in v.hint
    assert v.rule == _rule(case.rule_id).describe(limits)
    errors = {(e.op_name, e.rule_id) for e in violations if e.severity == "error"}
    expected = {(case.path, r) for r in case.also}
    if case.severity == "error":
        expected.add((case.path, case.rule_id))
    assert errors == expected


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_module_rule_is_quiet_at_the_limit(case: Case, host):
    model, config = case.build(False)
    report = case.init(model, config, host, False).lnn.report
    assert report.violations == []


def _declared_module_rules() -> frozenset[str]:
    """``MODULE_RULES`` of the torch-free file, read as a literal (that file is a test module, not imported)."""
    tree = ast.parse(BACKEND_CASES.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "MODULE_RULES" for t in targets):
                call = node.value
                assert isinstance(call, ast.Call) and call.func.id == "frozenset", "MODULE_RULES = frozenset({...})"
                return frozenset(ast.literal_eval(call.args[0]))
    raise AssertionError(f"{BACKEND_CASES} declares no MODULE_RULES")


def test_every_module_rule_has_a_case():
    """The cases here cover exactly the module rules of the index, as the torch-free file declares them."""
    covered = {c.rule_id for c in CASES}
    assert covered == {r.id for r in RULES}
    assert covered == _declared_module_rules()
    for r in RULES:  # a module rule judges modules: it names at least one torch op id
        assert any(op.startswith("builtin.") for op in r.ops), r.id
