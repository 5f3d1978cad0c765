"""``check_graph``: every rule, the graph passes and the memory plan of an IR graph, without packing.

Nothing is raised for a graph that does not fit: every violation is collected (op rules, pack-time
rules, ops the backend cannot run, shapes that cannot be inferred, memory) into a :class:`CheckReport`
that says whether the graph fits the target. ``lnn check`` prints it; the core's ``lnn.check`` reaches it
through the ``lnn_check_graph`` hook.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lnn_core.check_format import memory_lines, verdict_line
from lnn_core.errors import HardwareLimitError, ModelFileError
from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, Rule, RuleReport, Violation

from .formats import DEFAULT_FORMAT
from .inference import infer_node, infer_shapes
from .ops.opset import OpSet
from .planner import REGION_PSRAM, REGION_SHARE, MemoryPlan
from .rewrites import FusedRelu, SplitRecord, run_rewrites
from .rules import check_op_supported
from .target import TARGET_ID, load_target

__all__ = ["CheckReport", "check_graph", "op_view", "infer_and_judge"]

log = logging.getLogger("lnn.backend.check")

_BITS = {"int8": 8, "uint8": 8, "int16": 16, "int32": 32}


def _known(info: TensorInfo | None) -> bool:
    return info is not None and info.shape is not None and all(isinstance(d, int) for d in info.shape)


def op_view(graph: Graph, node: Node, ops: OpSet | None = None) -> OpView:
    """What a rule sees of an IR node: its attributes plus shapes, dtypes and exponents of its tensors.

    Added keys: ``input_shapes``, ``input_dtypes``, ``input_exponents`` (None for an omitted input),
    ``output_shapes``, ``output_dtypes``, ``output_exponents``; ``data_bits``, ``parameter_bits`` (the first
    weight's) and ``o_bits`` from the actual dtypes; and what the op's family adds (its ``OpDef.view``):
    ``in_channels``/``out_channels`` (convs), ``in_features``/``out_features`` (linear), ``global`` for
    pooling over the whole input, ``slice_steps`` for slices.
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    op = ops.get(node.op_type)
    ins = [graph.tensors.get(t) if t else None for t in node.inputs]
    outs = [graph.tensors.get(t) for t in node.outputs]
    attrs: dict[str, Any] = dict(node.attrs)
    attrs["input_shapes"] = tuple(tuple(i.shape) if _known(i) else None for i in ins)
    attrs["input_dtypes"] = tuple(i.dtype if i is not None else None for i in ins)
    attrs["input_exponents"] = tuple(i.exponent if i is not None else None for i in ins)
    attrs["output_shapes"] = tuple(tuple(o.shape) if _known(o) else None for o in outs)
    attrs["output_dtypes"] = tuple(o.dtype if o is not None else None for o in outs)
    attrs["output_exponents"] = tuple(o.exponent if o is not None else None for o in outs)
    x, y = (ins[0] if ins else None), (outs[0] if outs else None)
    if x is not None and x.dtype in _BITS:
        attrs["data_bits"] = _BITS[x.dtype]
    if y is not None and y.dtype in _BITS:
        attrs["o_bits"] = _BITS[y.dtype]
    if op is not None and op.params:
        w = ins[op.params[0].weight] if op.params[0].weight < len(ins) else None
        if w is not None and w.dtype in _BITS:
            attrs["parameter_bits"] = _BITS[w.dtype]
    if op is not None and op.view is not None:
        op.view(graph, node, attrs)
    return OpView(node.name, node.op_type, attrs)


@dataclass
class CheckReport:
    """Everything :func:`check_graph` found.

    :param violations: every rule violation (op rules, pack-time rules, memory), errors and warnings.
    :param plan: the memory plan (None when the graph could not be planned).
    :param memory: a flat summary of the plan: share-memory and PSRAM bytes against their limits, the
        prefetch and workspace bytes, the tensors moved to PSRAM, ``fits``.
    :param splits: ops the rewrites cut to fit the engine buffers; ``fused``: ReLU ops folded into convs.
    :param graph: the graph after the passes (None when shape inference stopped).
    """

    target: str = TARGET_ID
    violations: list[Violation] = field(default_factory=list)
    checked: int = 0
    plan: MemoryPlan | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    splits: list[SplitRecord] = field(default_factory=list)
    fused: list[FusedRelu] = field(default_factory=list)
    graph: Graph | None = None

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def fits(self) -> bool:
        """The memory plan succeeded (share-memory and PSRAM hold every buffer)."""
        return self.plan is not None

    @property
    def ok(self) -> bool:
        return not self.errors and self.fits

    def table(self) -> str:
        """Violations as a table, then the memory fit and the splits."""
        lines = [RuleReport(self.target, list(self.violations), self.checked).table()]
        if self.plan is not None and self.memory.get("spilled_to_psram"):
            lines.append("moved to PSRAM: " + ", ".join(self.memory["spilled_to_psram"]))
        lines += memory_lines(self.memory, self.fits)
        for s in self.splits:
            lines.append(f"split: {s.node} ({s.op_type}) along {s.axis} into {len(s.parts)} parts "
                         f"{list(s.parts)}: {s.reason}")
        lines.append(verdict_line(self.ok, len(self.errors), 0, self.fits))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The ``lnn check --json`` schema (the same for an ONNX file and a factory; docs/cli-json.md)."""
        return {"target": self.target, "ok": self.ok, "fits": self.fits, "checked": self.checked, "problems": [],
                "violations": [v.to_dict() for v in self.violations], "memory": self.memory,
                "splits": [s.to_dict() for s in self.splits],
                "fused_relu": [{"conv": f.conv, "relu": f.relu} for f in self.fused]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def _violation(rule: Rule, op: OpView, limits: Mapping[str, Any], *, actual: Any = None, limit: Any = None,
               hint: str | None = None) -> list[Violation]:
    found = rule.run(op, limits, TARGET_ID)
    if actual is None:
        return found
    return [Violation(op.name, op.op_type, rule.id, rule.describe(limits), limit, actual, hint or v.hint, TARGET_ID,
                      severity=rule.severity) for v in found]


def infer_and_judge(graph: Graph, *, rules_for: Callable[[str], list[Rule]] | None = None,
                    ops: OpSet | None = None, limits: Mapping[str, Any] | None = None) -> tuple[RuleReport, bool]:
    """Infer the shapes of ``graph`` in place, node by node, and judge every node with every rule.

    Unknown ops and shapes that cannot be inferred become violations (``csk60xx.graph.op_supported``,
    ``csk60xx.graph.shape``) instead of exceptions. Returns the report and whether every shape is known.

    :raises ModelFileError: the graph itself is broken (cycle, dangling input, duplicate producer).
    """
    limits = limits if limits is not None else load_target().limits
    ops = ops if ops is not None else OpSet.builtin_only()
    rules_for = rules_for or ops.rules_for
    report = RuleReport(TARGET_ID)
    graph.toposort(path=graph.meta.get("source"))
    complete = True
    island_of = {n: i for i in graph.meta.get("float_islands", ()) for n in i.get("ir_nodes", ())}
    judged: set[str] = set()
    for node in graph.nodes:
        op = op_view(graph, node, ops)
        island = island_of.get(node.name)
        if island is not None:  # a layer kept float: one violation naming its module, not one per ONNX node
            complete = False
            if island["node"] not in judged:
                judged.add(island["node"])
                where = island.get("module") or island["node"]
                report.extend(_violation(
                    check_op_supported, OpView(where, island["op"]), limits,
                    actual=f"{island['op']} kept float (module {where!r}): the chip has no float ops",
                    limit="every op of the quantized graph an integer op",
                    hint="quantize the layer (remove lnn.disable_quant / LayerConfig(float=True) there, or "
                         "replace the op with a supported one), or export it with dialect='qdq'"))
            continue
        if node.op_type not in ops:
            report.extend(_violation(check_op_supported, op, limits))
            complete = False
            continue
        if not all(_known(graph.tensors.get(t)) for t in node.inputs if t):
            complete = False  # an earlier node's output is unknown: nothing more to say here
            continue
        try:
            infos = infer_node(graph, node, ops, path=graph.meta.get("source"))
        except ModelFileError as exc:
            report.extend(_violation(_SHAPE_RULE, op, limits, actual=exc.headline, limit="a valid op",
                                     hint=exc.hint or "fix the op's inputs"))
            complete = False
            continue
        for info in infos:
            old = graph.tensors.get(info.name)
            if info.exponent is None and old is not None:
                info.exponent = old.exponent
            graph.tensors[info.name] = info
    report.check_ops((op_view(graph, n, ops) for n in graph.nodes if n.name not in island_of), rules_for, limits)
    return report, complete


def _shape_check(op: OpView, limits: Mapping[str, Any]) -> Finding:
    """Every op's inputs must have the ranks, shapes and dtypes the op accepts."""
    return Finding(actual="shape inference failed", limit="valid inputs", hint="fix the op's inputs")


_SHAPE_RULE = Rule("csk60xx.graph.shape", (), " ".join((_shape_check.__doc__ or "").split()), _shape_check)


def _memory_summary(plan: MemoryPlan, graph: Graph | None = None) -> dict[str, Any]:
    from .report import spill_advice

    share, psram = plan.regions[REGION_SHARE], plan.regions[REGION_PSRAM]
    return {"share_mem_bytes": share.size, "share_mem_peak": share.peak, "share_mem_limit": share.limit,
            "share_mem_lower_bound": share.lower_bound,
            "share_mem_activation_lower_bound": share.activation_lower_bound,
            "prefetch_bytes": share.prefetch_total, "workspace_bytes": share.workspace_total,
            "psram_bytes": psram.size, "psram_limit": psram.limit, "spilled_to_psram": list(plan.spilled),
            "spills": spill_advice(plan, graph), "fits": True}


def check_graph(graph: Graph, *, share_mem: int | None = None, psram: int | None = None,
                rules_for: Callable[[str], list[Rule]] | None = None, ops: OpSet | None = None,
                fuse_relu: bool = True, split: bool = True, package_format: str = DEFAULT_FORMAT) -> CheckReport:
    """Judge ``graph`` (a copy) for the CSK60xx: rules, graph rewrites, memory plan. Never raises for a
    graph that does not fit; only a broken graph (cycle, dangling input) raises :class:`ModelFileError`.

    :param share_mem: share-memory bytes (default: the target file's 655360).
    :param psram: PSRAM bytes (default: 8388608).
    :param rules_for: ``op_type -> rules``; default: this backend's rules. The ``lnn`` commands pass
        ``host.rules_for(op_type, "csk60xx")`` so that plugin rules run too.
    :param ops: the ops of this run (default: the built-in ones; ``OpSet.from_host(host)`` adds plugins').
    :param package_format: the package format whose supported ops and memory plan are judged.
    """
    limits = load_target().limits
    ops = ops if ops is not None else OpSet.builtin_only()
    fmt = ops.format(package_format)
    g = graph.copy()
    rules, complete = infer_and_judge(g, rules_for=rules_for, ops=ops, limits=limits)
    report = CheckReport(violations=list(rules.violations), checked=rules.checked)
    if not complete:
        report.memory = {"fits": False, "reason": "shapes are unknown after an unsupported or invalid op"}
        return report
    passes = run_rewrites(g, limits, ops, fuse=fuse_relu, split=split)
    if fmt.rewrite is not None:
        passes.splits += fmt.rewrite(g, ops)
        infer_shapes(g, ops, path=g.meta.get("source"))
    report.splits, report.fused, report.graph = passes.splits, passes.fused, g
    if fmt.problems is not None:  # the format's loader and kernels: every broken contract, each with its node
        types = {n.name: n.op_type for n in g.nodes}
        for name, p in fmt.problems(g, ops):
            report.violations.append(Violation(name, types.get(name, "graph"), p.rule, p.what, p.limit, p.actual,
                                               p.hint, TARGET_ID))
    unknown = fmt.unsupported(g, ops)
    if unknown:
        report.memory = {"fits": False, "reason": f"op {unknown[0].name!r} ({unknown[0].op_type}) cannot be packed "
                                                  f"into the {fmt.name!r} package format"}
        return report
    try:
        report.plan = fmt.plan(g, share_mem=share_mem, psram=psram, ops=ops)
    except HardwareLimitError as exc:
        report.violations.append(Violation(g.name, "graph", exc.rule_id, str(exc.details.get("rule", exc.rule_id)),
                                           exc.limit, exc.actual, exc.hint or "", TARGET_ID))
        report.memory = {"fits": False, "reason": exc.headline, "needed": exc.actual, "limit": exc.limit,
                         "offenders": list(getattr(exc, "offenders", None) or [])}
        return report
    try:  # the package writer refuses what the loader would (exponent range, ranks, sizes): where no rule has
        if not report.errors:  # refused the graph already, that is one more thing to judge
            fmt.write(g, report.plan, ops)
    except ModelFileError as exc:
        report.violations.append(Violation(
            getattr(exc, "node", None) or g.name, "graph", f"csk60xx.package.{fmt.name}",
            str(exc.details.get("rule", exc.headline)), getattr(exc, "limit", None),
            getattr(exc, "actual", exc.headline), exc.hint or "", TARGET_ID))
        report.memory = {**_memory_summary(report.plan, g), "fits": False, "reason": exc.headline}
        report.plan = None
        return report
    report.memory = _memory_summary(report.plan, g)
    log.info("checked %d ops: %d errors, %d warnings, share-memory %d bytes", report.checked, len(report.errors),
             len(report.violations) - len(report.errors), report.memory["share_mem_bytes"])
    return report
