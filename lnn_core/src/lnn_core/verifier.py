"""``lnn.verify`` and ``lnn.check``: the proof of bit-exactness, and the conformance check that runs
on a randomly initialised model before any training.

``verify`` exports the model in the target's dialect, reads it back, packs it, runs the target's
simulator (``lnn_simulate`` hook) and compares EVERY quantized tensor the two sides share, not
only the outputs: the training side's eval-mode value times ``2**n`` against the simulator's
integers. Any difference is a bug, never a tolerance; the report shows the first one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .calibration import UncalibratedWarning, require_calibrated
from .check_format import memory_lines, verdict_line
from .errors import LnnError, format_message
from .exporter import ExampleRunner, FloatIslandWarning, to_ir
from .plugins import PluginHost, PluginLoadWarning
from .quant.rewrite import LnnInfo, prepare
from .rules import RuleReport, Violation

__all__ = ["TensorCheck", "VerifyReport", "CheckReport", "verify", "check", "VerifyError"]


class VerifyError(LnnError):
    """The simulator and the training side disagree. Attributes: ``report``, ``tensor``."""


@attrs.frozen
class TensorCheck:
    """One compared tensor: equal, or where it first differs."""

    name: str
    shape: tuple[int, ...]
    exponent: int | None
    equal: bool
    mismatches: int = 0
    first_index: tuple[int, ...] | None = None
    expected: Any = None  # training side (integer)
    actual: Any = None  # simulator (integer)


@attrs.define
class VerifyReport:
    """The result of :func:`verify`: every compared tensor in graph order."""

    target: str
    tensors: list[TensorCheck] = attrs.field(factory=list)
    outputs_equal: bool = True

    @property
    def ok(self) -> bool:
        return self.outputs_equal and all(t.equal for t in self.tensors)

    @property
    def first_mismatch(self) -> TensorCheck | None:
        return next((t for t in self.tensors if not t.equal), None)

    def table(self) -> str:
        bad = self.first_mismatch
        head = (f"bit-exact: {len(self.tensors)} tensors identical (target {self.target})" if self.ok else
                f"NOT bit-exact: {sum(not t.equal for t in self.tensors)} of {len(self.tensors)} tensors differ")
        if bad is None:
            return head
        return head + "\n" + format_message(
            f"first differing tensor {bad.name!r}",
            {"shape": "x".join(map(str, bad.shape)), "scale": f"2^-{bad.exponent}" if bad.exponent is not None else
             "float", "elements differing": bad.mismatches, "first index": bad.first_index,
             "training side": bad.expected, "simulator": bad.actual})

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "ok": self.ok, "outputs_equal": self.outputs_equal,
                           "tensors": [attrs.asdict(t) for t in self.tensors]}, default=str, indent=2)

    def raise_if_mismatch(self) -> None:
        bad = self.first_mismatch
        if self.ok or bad is None:
            if not self.ok:
                raise VerifyError("the simulator's outputs differ from the training side", {},
                                  "report this with the model; lnn verify should be bit-exact",
                                  report=self, tensor=None)
            return
        raise VerifyError(
            f"tensor {bad.name!r} differs between the training side and the {self.target} simulator",
            {"shape": bad.shape, "first index": bad.first_index, "training side": bad.expected,
             "simulator": bad.actual, "elements differing": bad.mismatches},
            "this is a bug in lnn (an op's integer semantics); report it with the model",
            report=self, tensor=bad.name)


class _Capture(ExampleRunner):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.tuples: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            # a copy: a later in-place op (ReLU(inplace=True), x.relu_(), x += y) would overwrite the tensor
            # itself, and the capture would then hold a value the graph never had at this node
            self.values[n.name] = out.detach().clone()
        elif isinstance(out, (tuple, list)):  # an op with several outputs: kept for the graph outputs
            self.tuples[n.name] = out
        return out


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


_NO_PROGRESS: Callable[[str], None] = lambda _stage: None


def verify(model: nn.Module, example_inputs: Any, *, target: str | None = None, host: PluginHost | None = None,
           options: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
           allow_uncalibrated: bool = False) -> VerifyReport:
    """Export, pack and simulate ``model`` and compare every shared tensor with eval mode.

    :param model: a model prepared by ``lnn.init`` (trained or not).
    :param example_inputs: a tensor or tuple of tensors (any batch size the target supports).
    :param progress: called with the name of each stage as it starts (``export``, ``eval``, ``simulate``,
        ``compare``; for progress bars).
    :param allow_uncalibrated: verify a model whose activation quantizers never saw data (a warning instead of
        :class:`~lnn_core.calibration.UncalibratedError`; its integers are all zero, so the proof is weak).
    :return: a :class:`VerifyReport`; ``report.ok`` is the verdict, ``report.table()`` explains it.
    """
    step = progress or _NO_PROGRESS
    host = host or PluginHost()
    info: LnnInfo = getattr(model, "lnn", None)
    target = target or (info.target if info is not None else "csk60xx")
    inputs = _as_inputs(example_inputs)
    step("export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatIslandWarning)
        warnings.simplefilter("ignore", UncalibratedWarning)  # said once, below
        graph = to_ir(model, inputs, host=host, allow_uncalibrated=True)
    require_calibrated(model, "verify", allow=allow_uncalibrated)
    writer = host.exporters[target]
    proto = writer(graph, host=host)
    was_training = model.training
    step("eval")
    try:
        model.eval()
        with torch.no_grad():
            cap = _Capture(model)
            cap.run(*inputs)
    finally:
        model.train(was_training)
    # integer inputs (an embedding's token ids) stay integers; the simulator takes them as they are
    np_inputs = [x.detach().cpu().numpy() if not x.is_floating_point() else x.detach().cpu().numpy().astype(np.float32)
                 for x in inputs]
    step("simulate")
    result = host.simulate(proto, np_inputs, target, options)  # a plugin returning garbage is skipped there
    if result is None:
        raise LnnError(f"no installed plugin simulates target {target!r}", {},
                       "install the target's backend (e.g. lnn-backend-csk60xx)")
    outputs, tensors = result
    step("compare")
    report = VerifyReport(target)
    sources: dict[str, str] = graph.meta.get("sources", {})
    for node in graph.nodes:
        for name in node.outputs:
            src = sources.get(name)
            info_t = graph.tensors.get(name)
            if src is None or name not in tensors or info_t is None or info_t.exponent is None:
                continue
            expected = np.round(cap.values[src].cpu().double().numpy() * 2.0**info_t.exponent).astype(np.int64)
            actual = np.asarray(tensors[name]).astype(np.int64).reshape(expected.shape)
            diff = expected != actual
            if diff.any():
                idx = tuple(int(i) for i in np.argwhere(diff)[0])
                report.tensors.append(TensorCheck(name, expected.shape, info_t.exponent, False, int(diff.sum()), idx,
                                                  int(expected[idx]), int(actual[idx])))
            else:
                report.tensors.append(TensorCheck(name, expected.shape, info_t.exponent, True))
    out_node = next(n for n in model.graph.nodes if n.op == "output")
    torch_outs = _outputs(out_node, cap)
    report.outputs_equal = len(torch_outs) == len(outputs) and all(
        np.array_equal(t.cpu().numpy().astype(np.float32), np.asarray(o, dtype=np.float32).reshape(t.shape))
        for t, o in zip(torch_outs, outputs))
    return report


def _outputs(out_node: fx.Node, cap: _Capture) -> list[torch.Tensor]:
    """The model's output tensors in order, the outputs of an op with several outputs one by one."""
    from .quant.rewrite import flat_nodes

    def leaves(value: Any) -> list[torch.Tensor]:
        if isinstance(value, (tuple, list)):
            return [t for v in value for t in leaves(v)]
        return [value.detach()]

    return [t for n in flat_nodes(out_node.args)
            for t in ([cap.values[n.name]] if n.name in cap.values else leaves(cap.tuples[n.name]))]


@attrs.define
class CheckReport:
    """The result of :func:`check`: every problem found, before any training."""

    target: str
    violations: list[Violation] = attrs.field(factory=list)
    problems: list[str] = attrs.field(factory=list)  # export problems, unsupported ops, float islands
    memory: dict[str, Any] = attrs.field(factory=dict)
    checked: int = 0
    fits: bool | None = None  # the memory plan fits (None: the model could not be exported, memory not judged)
    splits: list[dict[str, Any]] = attrs.field(factory=list)
    fused_relu: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems and self.fits is not False

    def table(self) -> str:
        rep = RuleReport(self.target, list(self.violations), self.checked)
        lines = [rep.table()]
        lines += [f"problem: {p}" for p in self.problems]
        lines += memory_lines(self.memory, self.fits)
        lines.append(verdict_line(self.ok, len(self.errors), len(self.problems), self.fits))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The ``lnn check --json`` schema (the same for an ONNX file and a factory; docs/cli-json.md)."""
        return {"target": self.target, "ok": self.ok, "fits": self.fits, "checked": self.checked,
                "problems": list(self.problems), "violations": [v.to_dict() for v in self.violations],
                "memory": self.memory, "splits": list(self.splits), "fused_relu": list(self.fused_relu)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def check(model: nn.Module, example_inputs: Any, *, target: str = "csk60xx", host: PluginHost | None = None,
          calibration_steps: int = 2, options: dict[str, Any] | None = None,
          progress: Callable[[str], None] | None = None) -> CheckReport:
    """Judge a float (e.g. randomly initialised) model for ``target`` before any training.

    Runs the op-level rules, calibrates the quantizers on ``example_inputs`` so that an export is
    possible, exports, and asks the target's backend for pack-time rules and the memory fit. All
    problems are collected; nothing is raised for a model that does not fit.

    :param progress: called with the name of each stage as it starts (``rules``, ``calibrate``, ``export``,
        ``pack check``; for progress bars).
    """
    step = progress or _NO_PROGRESS
    host = host or PluginHost()
    report = CheckReport(target)
    step("rules")
    inputs = _as_inputs(example_inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = prepare(model, stage="quant", host=host, target=target, check_rules=False)
        info: LnnInfo = qmodel.lnn
        from .quant.rewrite import _rules_report

        op_report = _rules_report(qmodel, info, host, host.targets[target])
        report.violations.extend(op_report.violations)
        report.checked = op_report.checked
        qmodel.train()
        step("calibrate")
        with torch.no_grad():
            for _ in range(max(1, calibration_steps)):
                ExampleRunner(qmodel).run(*inputs)  # a wrong input shape: a ConfigError naming the module
        step("export")
        try:
            graph = to_ir(qmodel, inputs, host=host)
        except LnnError as exc:
            report.problems.append(str(exc).splitlines()[0])
            graph = None
    for name, op, site in info.unsupported:
        report.problems.append(f"unsupported op {op} (node {name!r}) at {site}")
    report.problems.extend(str(w.message).splitlines()[0] for w in caught
                           if issubclass(w.category, FloatIslandWarning))
    for w in caught:  # a plugin skipped on the way is the user's to see, not the report's
        if issubclass(w.category, PluginLoadWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if graph is not None:
        step("pack check")
        pack_report = host.check_graph(graph, target, options)  # validated: a broken plugin is skipped
        if pack_report is not None:
            seen = {(v.op_name, v.rule_id) for v in report.violations}
            report.violations.extend(v for v in pack_report.violations if (v.op_name, v.rule_id) not in seen)
            report.memory = dict(getattr(pack_report, "memory", {}) or {})
            fits = getattr(pack_report, "fits", report.memory.get("fits"))
            report.fits = bool(fits) if fits is not None else None
            report.splits = [s.to_dict() if hasattr(s, "to_dict") else dict(s)
                             for s in getattr(pack_report, "splits", None) or []]
            report.fused_relu = [{"conv": f.conv, "relu": f.relu} for f in getattr(pack_report, "fused", None) or []]
    return report
