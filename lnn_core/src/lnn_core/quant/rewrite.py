"""Model rewriting behind ``lnn.init`` and ``lnn.constrain``.

The float model is traced with ``torch.fx`` (nothing of torch is patched). Every node is matched
against the op families the plugins registered, by module type, function or tensor method, so
``nn.Conv2d`` and ``F.conv2d``, ``x + y``, ``torch.add`` and ``x.add(y)`` all end in the same
quantized module. Modules of a ``lowered`` family (attention) are first replaced by modules that compute the
same float function from other ops, and calls of a ``lowered`` function are decomposed while tracing (a call the
family refuses, such as a masked attention, stays whole and is reported as in 4). torch's packed-sequence helpers
(``pack_padded_sequence`` / ``pad_packed_sequence``, any spelling) are kept as one node each (:mod:`.packed`); the
RNN a packed sequence feeds reads its tensor and lengths directly and the packing node is removed. Then:

1. a ``fuses_bn`` op followed only by a ``foldable`` op (BatchNorm) takes that BatchNorm in; the
   BatchNorm module stays at its path, so its state_dict keys do not move;
2. each ``compute``/``stateless`` node becomes a call of the family's quantized module; modules
   replacing a float module keep its path (and parameter keys), modules replacing a function or
   method are added beside it as ``<owner>.q_<op>[_k]``;
3. every quantized module is bound to the quantizers that define its inputs; float data entering
   the quantized graph (graph inputs, outputs of float islands) passes a ``QuantStub``;
4. an op the toolkit does not know that runs on quantized data is reported by name and call site
   (warning, or error with ``strict=True``); it stays a float island;
5. an op whose every user is a ReLU observes only its positive range ("ahead-relu");
6. the target's hardware rules judge every op, and ALL violations are raised at once.

Every fx node is classified here, once: the decision is kept on the node as ``node.meta["lnn"]``
(a :class:`NodeRole`) and the exporter writes each node by its role, without judging it again.
An op may have several outputs: a module with several output quantizers returns a tuple, each
``operator.getitem`` on it selects one output (role ``select``), and each quantized output carries
its own quantizer to its consumers.

The stage-1 (constrain) and stage-2 (quant) models are built by the same pass, so they have the
same state_dict keys: a stage-1 checkpoint loads strictly into the stage-2 model.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Iterable
from typing import Any

import attrs
import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import ConfigError, LnnError, TraceError, UnsupportedOpError
from ..rules import OpView, RuleReport
from .config import ConstrainConfig, LayerConfig, QuantConfig
from .packed import HelperProxy, PackedCalls, helper_frame, pack_padded
from .qmodule import OutTree, QModule, QuantStub, output_tree, set_stage, tree_leaves
from .quantizers import ActQuantizer, WeightQuantizer, share_exponents, unshare_exponents
from .recipes import Recipe

__all__ = ["prepare", "trace_lowered", "REFUSED_KEY", "BuildContext", "Built", "LnnInfo", "QuantizedModel",
           "UnsupportedOpWarning", "disable_quant", "FLOAT_ATTR", "NodeRole", "ROLE_KINDS", "ROLE_KEY",
           "flat_nodes", "op_name"]

FLOAT_ATTR = "_lnn_keep_float"

_META_METHODS = frozenset({"size", "dim", "numel", "type", "element_size", "nelement", "ndimension",
                           "get_device", "is_contiguous", "stride", "data_ptr", "tolist", "item"})
_META_FUNCTIONS = frozenset({getattr, len, torch.numel, isinstance})


class UnsupportedOpWarning(UserWarning):
    """A float op runs on quantized data; the text names the op and its call site."""


class _Kind:
    """Sentinels for values that are not quantized tensors."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


FLOAT = _Kind("FLOAT")  # a float tensor (or an unknown value)
PACKED = _Kind("PACKED")  # a PackedSequence (pack_padded_sequence): read by the RNN it feeds, then removed
META = _Kind("META")  # a python value derived from shapes (sizes, dims, dtypes)
# the carrier of any other value is the ActQuantizer that defines its exponent, or, for an op with several
# outputs, a (nested) tuple of carriers shaped like the op's return value

#: the key of a node's :class:`NodeRole` in ``node.meta``
ROLE_KEY = "lnn"

#: what a node can be, for the exporter:
#: ``input`` a graph input; ``param`` a parameter or buffer (get_attr); ``value`` a python value or a constant
#: computed from parameters only (sizes, dims; no IR); ``quant`` a QuantStub (float data entering the quantized
#: graph); ``op`` written by the IR writer of op family ``op``; ``alias`` its output is its input (a folded
#: BatchNorm); ``select`` output ``index`` of an op with several outputs; ``float`` a float op (written by
#: torch's ONNX exporter; ``quantized``: it reads quantized data, a float island); ``output`` the graph output.
ROLE_KINDS = ("input", "param", "value", "quant", "op", "alias", "select", "float", "output")


@attrs.frozen
class NodeRole:
    """What ``lnn.init`` decided about one fx node, kept as ``node.meta["lnn"]``.

    :param kind: one of :data:`ROLE_KINDS`.
    :param op: the op family id (``op``, ``quant``), else None.
    :param quantized: the node reads quantized data (for ``float``: a float island).
    :param index: for ``select``: the index into the op's return value (an int, or a slice of outputs).
    :param name: the op as the user wrote it (``torch.sigmoid``, ``GELU``), for messages.
    """

    kind: str
    op: str | None = None
    quantized: bool = False
    index: Any = None
    name: str = ""


def disable_quant(module: nn.Module) -> nn.Module:
    """Keep ``module`` (and everything inside it) in float when the model is prepared.

    Call before ``lnn.init``/``lnn.constrain``. Data entering it is dequantized and data leaving
    it is re-quantized by a ``QuantStub``; the export writes explicit Dequant/Quant nodes there.
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"disable_quant() expects an nn.Module, got {type(module).__name__}",
            {"actual": repr(module)[:80]}, "pass a submodule, e.g. lnn.disable_quant(model.head)",
            option="module", value=module, valid="nn.Module")
    setattr(module, FLOAT_ATTR, True)
    return module


@attrs.define
class BuildContext:
    """Everything a family's ``build`` needs to make its quantized module.

    :param path: module path of the module to be made.
    :param node: the fx node being replaced (its ``args``/``kwargs`` hold constants and fx nodes).
    :param module: the float module being replaced (call_module nodes), else None.
    :param layer: resolved bits for this layer.
    :param recipe: the quantization recipe.
    :param stage: ``constrain`` or ``quant``.
    :param bn: a BatchNorm module folded into this op, else None.
    :param folded_into: for a foldable op (BatchNorm) being folded: the node of the op it folds into.
    """

    path: str
    node: fx.Node
    module: nn.Module | None
    layer: LayerConfig
    recipe: Recipe
    stage: str
    bn: nn.Module | None = None
    folded_into: fx.Node | None = None

    @property
    def args(self) -> tuple[Any, ...]:
        return self.node.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.node.kwargs)

    def bind(self, signature: Any) -> dict[str, Any]:
        """Bind the node's args/kwargs to a python signature (a function), defaults applied."""
        import inspect

        bound = inspect.signature(signature).bind(*self.node.args, **self.node.kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def param_tensor(self, node: Any) -> torch.Tensor | None:
        """The tensor behind a ``get_attr`` node (a parameter or buffer of the traced model), else None."""
        if isinstance(node, fx.Node) and node.op == "get_attr":
            obj: Any = self.node.graph.owning_module
            for part in str(node.target).split("."):
                obj = getattr(obj, part, None)
            return obj if isinstance(obj, torch.Tensor) else None
        return None


@attrs.define
class Built:
    """What ``build`` returns: the module, its activation inputs, and extra (parameter) inputs."""

    module: nn.Module
    act_inputs: list[Any]
    param_inputs: list[Any] = attrs.field(factory=list)


@attrs.define
class LnnInfo:
    """Kept on the prepared model as ``model.lnn``: how it was prepared and what was found."""

    stage: str
    target: str
    recipe: Recipe
    config: QuantConfig
    constrain: ConstrainConfig | None
    unsupported: list[tuple[str, str, str]] = attrs.field(factory=list)  # (node, op, call site)
    islands: list[str] = attrs.field(factory=list)
    folded: dict[str, str] = attrs.field(factory=dict)  # bn path -> op path
    ops: dict[str, str] = attrs.field(factory=dict)  # module path -> op id
    passthrough: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # node -> {op, attrs}
    #: a module called more than once: each later call site's op path -> the module's own path (same parameters)
    shared: dict[str, str] = attrs.field(factory=dict)
    #: module path -> ``{"op": id of the lowered family, **its attributes}`` for each module rewritten by a
    #: ``lowered`` family (``nn.MultiheadAttention``: ``num_heads``, ``head_dim``, ``scaling`` folded into q)
    lowered: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: op path -> the shapes of its activation inputs, from ``example_inputs`` at ``lnn.init`` (empty without)
    input_shapes: dict[str, tuple[tuple[int, ...] | None, ...]] = attrs.field(factory=dict)
    report: RuleReport | None = None


class QuantizedModel(fx.GraphModule):
    """The model ``lnn.init``/``lnn.constrain`` return: a GraphModule that keeps ``.lnn`` on copies."""

    def __deepcopy__(self, memo: dict[int, Any]) -> QuantizedModel:
        res = super().__deepcopy__(memo)
        if hasattr(self, "lnn"):
            res.lnn = copy.deepcopy(self.lnn, memo)
        return res


#: ``node.meta`` key of the ``(problem, hint)`` pairs of a call a ``lowered`` family could not lower
REFUSED_KEY = "lnn_refused"
_LOWERED_KEY = "lnn_lowered"  # a node made by a lowering (removed again when nothing reads it)


class _Tracer(fx.Tracer):
    """fx tracer that keeps the registered module types whole and applies the ``lowered`` families.

    :param ops: the op registry.
    :param lowered: replacement module (by id) -> its family, as :func:`_lower_modules` made them.
    :param refused: module (by id) -> the ``(problem, hint)`` pairs that kept it from being lowered.
    """

    def __init__(self, ops: Any, lowered: dict[int, Any], refused: dict[int, list[tuple[str, str]]]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self._by_module = ops.by_module
        self._functions = {f: fam for f, fam in ops.by_function.items() if fam.kind == "lowered"}
        self._lowered = lowered
        self._refused = refused
        self._depth = 0  # > 0 while a lowering runs: the nodes it makes are tagged
        self._packed = PackedCalls()  # pack_padded_sequence / pad_packed_sequence calls: one node each

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if getattr(m, FLOAT_ATTR, False) or type(m) in self._by_module or id(m) in self._refused:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fam = self._lowered.get(id(m))
        if fam is None:
            return super().call_module(m, forward, args, kwargs)
        refused = fam.refusals(m, *args, **kwargs) if fam.refusals is not None else []
        if refused:  # this call stays whole, in float, and is reported
            self._refused[id(m)] = refused
            try:
                out = super().call_module(m, forward, args, kwargs)
            finally:
                del self._refused[id(m)]
            out.node.meta[REFUSED_KEY] = refused
            return out
        self._depth += 1
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._depth -= 1

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     *rest: Any, **options: Any) -> Any:
        frame = helper_frame()
        if frame is not None:  # an operation of torch's packing helpers: the helper call is one node
            return self._packed.record(frame, lambda fn, a, k: super(_Tracer, self).create_proxy(
                "call_function", fn, a, k), kind, target, args)
        fam = self._functions.get(target) if kind == "call_function" else None
        if fam is None:
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
            if kind == "call_module" and id(self.root.get_submodule(target)) in self._refused:
                proxy.node.meta[REFUSED_KEY] = self._refused[id(self.root.get_submodule(target))]
            return proxy
        refused = fam.refusals(target, *args, **kwargs) if fam.refusals is not None else []
        if refused:
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
            proxy.node.meta[REFUSED_KEY] = refused
            return proxy
        self._depth += 1
        try:
            return fam.lower(*args, **kwargs)
        finally:
            self._depth -= 1

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, PackedSequence) and self._packed.owns(a.data):  # a packed sequence is its packing node
            return a.data.node
        return super().create_arg(a)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return HelperProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if self._packed.owns(obj):  # the helpers' own checks, which hold on real data
            return False
        return super().to_bool(obj)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if self._depth:
            node.meta[_LOWERED_KEY] = True
        return node


def _lower_modules(model: nn.Module, ops: Any) -> tuple[dict[int, Any], dict[int, list[tuple[str, str]]],
                                                     dict[str, dict[str, Any]]]:
    """Replace, in place and innermost first, every module of a ``lowered`` family by its lowering.

    Modules kept float (:func:`disable_quant`, also inside them) are left alone. Returns the replacement modules
    (by id) -> family, the modules that could not be lowered (by id) -> their ``(problem, hint)`` pairs, and
    path -> ``{"op": family id, **replacement.lowering_attrs}`` (what :attr:`LnnInfo.lowered` keeps).
    """
    lowered: dict[int, Any] = {}
    refused: dict[int, list[tuple[str, str]]] = {}
    paths: dict[str, dict[str, Any]] = {}

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            if getattr(child, FLOAT_ATTR, False):
                continue
            visit(child, f"{prefix}{name}.")
            fam = ops.by_module.get(type(child))
            if fam is None or fam.kind != "lowered":
                continue
            new = fam.lower(child)
            if isinstance(new, list):
                refused[id(child)] = new
                continue
            setattr(parent, name, new)
            lowered[id(new)] = fam
            paths[f"{prefix}{name}"] = {"op": fam.id, **dict(getattr(new, "lowering_attrs", {}))}

    visit(model, "")
    return lowered, refused, paths


def trace_lowered(model: nn.Module, ops: Any) -> tuple[nn.Module, fx.Graph, dict[str, dict[str, Any]]]:
    """Trace a copy of ``model`` as ``lnn.init`` does: the ``lowered`` families applied, registered modules kept whole.

    Returns the (copied, rewritten) root module, the graph, and the lowered modules by path (see
    :attr:`LnnInfo.lowered`); ``fx.GraphModule(root, graph)`` is the float model the quantized one is built from.
    """
    model = copy.deepcopy(model)
    lowered, refused, paths = _lower_modules(model, ops)
    tracer = _Tracer(ops, lowered, refused)
    try:
        graph = tracer.trace(model)
        _drop_unused_lowered(graph)
    except LnnError:
        raise
    except Exception as exc:
        packed = _in_packed_sequence_code(exc)
        raise TraceError(
            f"model {type(model).__name__!r} could not be traced into a graph",
            {"cause": f"{type(exc).__name__}: {exc}",
             "where": "torch.nn.utils.rnn (packed-sequence helpers)" if packed else None},
            "of the packed-sequence helpers only pack_padded_sequence and pad_packed_sequence are traced (one node "
            "each): use them (padded batch + lengths), or move the packing and the RNN into a submodule kept float "
            "with lnn.disable_quant(model.<submodule>)" if packed else
            "data-dependent control flow cannot be traced: move it into a submodule and keep that "
            "submodule float with lnn.disable_quant(model.<submodule>)",
            module=type(model).__name__, cause=exc) from exc
    return tracer.root, graph, paths


def _in_packed_sequence_code(exc: BaseException) -> bool:
    """Whether tracing failed inside torch's packed-sequence helpers (``torch/nn/utils/rnn.py``)."""
    import traceback

    return any(f.filename.replace("\\", "/").endswith("torch/nn/utils/rnn.py")
               for f in traceback.extract_tb(exc.__traceback__))


def _drop_unused_lowered(graph: fx.Graph) -> None:
    """Remove the nodes a lowering made that nothing reads (attention weights a caller ignores)."""
    for node in reversed(list(graph.nodes)):
        if node.meta.get(_LOWERED_KEY) and not node.users and node.op != "output":
            graph.erase_node(node)


def op_name(node: fx.Node, gm: nn.Module) -> str:
    """The name a user wrote: ``torch.sigmoid``, ``F.gelu``, ``Tensor.softmax``, ``operator.pow``, ``GELU``."""
    if node.op == "call_module":  # a lowered module names the module it replaces (lnn_op_name)
        module = gm.get_submodule(node.target)
        return getattr(module, "lnn_op_name", type(module).__name__)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    name = getattr(target, "__name__", None) or repr(target)
    for prefix, namespace in (("torch", torch), ("F", torch.nn.functional)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    mod = getattr(target, "__module__", None) or ""
    if mod in ("_operator", "operator"):
        mod = "operator"
    return f"{mod}.{name}" if mod else name


def _call_site(node: fx.Node, skip: frozenset[str] = frozenset()) -> str:
    trace = node.stack_trace or ""
    frames: list[str] = []
    lines = trace.strip().splitlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith('File "'):
            path = line.split('"')[1]
            if "/torch/" in path or "/lnn_core/" in path or path in skip:
                continue
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            loc = line.split(",")
            lineno = loc[1].strip().replace("line ", "") if len(loc) > 1 else "?"
            frames.append(f"{path}:{lineno}: {code}")
    return frames[-1] if frames else "<unknown call site>"


def flat_nodes(args: Iterable[Any]) -> list[fx.Node]:
    """The fx nodes in ``args`` (nested lists, tuples, dicts and slices), in order."""
    out: list[fx.Node] = []
    for a in args:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(flat_nodes(a))
        elif isinstance(a, dict):
            out.extend(flat_nodes(a.values()))
        elif isinstance(a, slice):
            out.extend(flat_nodes((a.start, a.stop, a.step)))
    return out



def _map_tree(tree: OutTree, leaf: Any) -> Any:
    """``tree`` with every output index ``i`` replaced by ``leaf(i)``."""
    return leaf(tree) if isinstance(tree, int) else tuple(_map_tree(t, leaf) for t in tree)


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = next(reversed(stack.values()))
    return last[0] if isinstance(last, tuple) else str(last)


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, host: Any, recipe: Recipe, config: QuantConfig,
                 stage: str, info: LnnInfo) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.host = host
        self.ops = host.ops
        self.recipe = recipe
        self.config = config
        self.stage = stage
        self.info = info
        self.prov: dict[fx.Node, Any] = {}
        self.quant_of: dict[fx.Node, fx.Node] = {}  # float value -> the Quant node (QuantStub) after it
        self.names: dict[str, int] = {}
        self.bn_of: dict[fx.Node, fx.Node] = {}
        self.replaced: dict[fx.Node, Any] = {}  # new call_module node -> family
        # the user's modules as traced, by path: a module called twice is replaced at its first call, and its
        # later calls are built from the same float module (same parameters, their own activation quantizers)
        self.float_modules: dict[str, nn.Module] = {
            str(n.target): self.gm.get_submodule(str(n.target)) for n in self.graph.nodes if n.op == "call_module"}
        self.built_paths: set[str] = set()
        # the decision taken for each node as the pass meets it: (kind, op id, select index); resolved into a
        # NodeRole once the graph is final (hoisting still changes which passthrough ops read quantized data)
        self.decided: dict[fx.Node, tuple[str, str | None, Any]] = {}
        self.configured: list[tuple[str, str, str | None]] = []  # what config.for_layer was asked (check_matches)

    # -- lookups -----------------------------------------------------------------------------------
    def module_of(self, node: fx.Node) -> nn.Module:
        """The user's module a call_module node calls (as traced, before any replacement)."""
        target = str(node.target)
        return self.float_modules.get(target) or self.gm.get_submodule(target)

    def family(self, node: fx.Node) -> Any:
        if node.op == "call_module":
            return self.ops.by_module.get(type(self.module_of(node)))
        if node.op == "call_function":
            try:
                return self.ops.by_function.get(node.target)
            except TypeError:  # unhashable target
                return None
        if node.op == "call_method":
            return self.ops.by_method.get(node.target)
        return None

    def is_float_module(self, node: fx.Node) -> bool:
        return node.op == "call_module" and bool(getattr(self.module_of(node), FLOAT_ATTR, False))

    def path_for(self, node: fx.Node, base: str) -> str:
        if node.op == "call_module":
            target = str(node.target)
            if target not in self.built_paths:
                return target
            k = 1  # a later call of a module already replaced: its own op beside it
            while f"{target}_call{k}" in self.built_paths or _has_submodule(self.gm, f"{target}_call{k}"):
                k += 1
            return f"{target}_call{k}"
        owner = _owner(node)
        stem = f"{owner}.q_{base}" if owner else f"q_{base}"
        k = self.names.get(stem, 0)
        self.names[stem] = k + 1
        return stem if k == 0 else f"{stem}_{k}"

    def layer_for(self, path: str, family: Any, node: fx.Node) -> LayerConfig:
        float_type = type(self.module_of(node)).__name__ if node.op == "call_module" else None
        # every call of a shared module is configured as the module (its path), not as the call site
        layer_path = str(node.target) if node.op == "call_module" else path
        return self.checked_layer(layer_path, family.id, float_type, path, ("act_bits", "weight_bits"))

    def checked_layer(self, config_path: str, op_id: str, float_type: str | None, path: str,
                      bits: tuple[str, ...]) -> LayerConfig:
        """The config of the layer at ``config_path`` (recorded for :meth:`QuantConfig.check_matches`), its
        ``bits`` fields (``act_bits``, ``weight_bits``) checked against the recipe; errors name ``path``."""
        self.configured.append((config_path, op_id, float_type))
        layer = self.config.for_layer(config_path, op_id, float_type)
        allowed_by = {"act_bits": self.recipe.act_bits_allowed, "weight_bits": self.recipe.weight_bits_allowed}
        for what in bits:
            value, allowed = getattr(layer, what), allowed_by[what]
            if value not in allowed:
                raise ConfigError(
                    f"layer {path!r} ({op_id}): {what}={value} is not supported by recipe {self.recipe.name!r}",
                    {"valid": ", ".join(map(str, allowed)), "actual": value},
                    f"set {what} to one of {', '.join(map(str, allowed))} for this layer",
                    option=what, value=value, valid=allowed)
        return layer

    # -- passes ------------------------------------------------------------------------------------
    def fold_bn(self) -> None:
        """Pair each ``fuses_bn`` op with a directly following ``foldable`` op (BatchNorm).

        The BatchNorm node stays in the graph, calling the module its family builds for the folded
        case (same path, same parameters, identity forward); the op reads the BatchNorm's
        parameters from it. Keeping the node keeps the module referenced by the graph, so copies
        and pickles of the model keep it too.
        """
        for node in list(self.graph.nodes):
            fam = self.family(node)
            if fam is None or not fam.fuses_bn or self.is_float_module(node) or len(node.users) != 1:
                continue
            user = next(iter(node.users))
            ufam = self.family(user)
            if (ufam is None or not ufam.foldable or ufam.id not in fam.fuses_bn or self.is_float_module(user)
                    or user.op != "call_module"):
                continue
            if flat_nodes((user.args, user.kwargs)) != [node]:
                continue
            path = str(user.target)
            ctx = BuildContext(path, user, self.gm.get_submodule(path), LayerConfig(), self.recipe,
                               self.stage, folded_into=node)
            built = ufam.build(ctx)
            self.gm.add_submodule(path, built.module)
            self.bn_of[node] = user
            self.info.folded[path] = str(node.target) if node.op == "call_module" else node.name

    def new_quant(self, path: str) -> QuantStub:
        """The Quant module at ``path`` (``q_input_<name>`` for a graph input), configured as a layer: a ``by_path``
        pattern or a ``by_type`` key (``core.Quant``, ``Quant``) sets its ``act_bits`` and ``act_observer``, e.g.
        ``FixedExponent.with_args(n=8)`` to pin a streaming model's state input to the exponent of the state
        output it is fed from. ``float`` does not apply: data enters the quantized graph here."""
        layer = self.checked_layer(path, QuantStub.op_id, None, path, ("act_bits",))
        return QuantStub(layer.apply_to(self.recipe), act_bits=layer.act_bits, stage=self.stage)

    def quant_node_for(self, src: fx.Node) -> fx.Node:
        """A QuantStub after float value ``src`` (one per source, shared by all consumers)."""
        if src in self.quant_of:
            return self.quant_of[src]
        if src.op == "placeholder":
            path = f"q_input_{src.name}"
        else:  # beside the float op, never at its path (a module there would be replaced)
            owner = str(src.target).rpartition(".")[0] if src.op == "call_module" else _owner(src)
            stem = f"{owner}.q_quant" if owner else "q_quant"
            k = self.names.get(stem, 0)
            self.names[stem] = k + 1
            path = stem if k == 0 else f"{stem}_{k}"
        quant = self.new_quant(path)
        self.gm.add_submodule(path, quant)
        with self.graph.inserting_after(src):
            new = self.graph.call_module(path, (src,))
        self.quant_of[src] = new
        self.prov[new] = quant.out_q
        self.info.ops[path] = quant.op_id
        if src.op != "placeholder":
            self.info.islands.append(src.name)
        return new

    def run(self) -> None:
        self.fold_bn()
        self.folded_nodes = set(self.bn_of.values())
        unsupported = self.unsupported = []
        island: set[fx.Node] = set()  # float ops on quantized data and the float ops after them: one island each
        for node in list(self.graph.nodes):
            if node in self.prov:  # a Quant node inserted by this pass
                continue
            if node.op == "placeholder":
                self.prov[node] = FLOAT
                continue
            if node.op == "get_attr":
                self.prov[node] = FLOAT
                continue
            if node.op == "output":
                continue
            if node in self.folded_nodes:
                self.prov[node] = self.prov.get(node.args[0], FLOAT)
                continue
            if node.op == "call_function" and node.target is pack_padded:
                self.check_packed_users(node)
                self.prov[node] = PACKED
                continue
            ins = flat_nodes((node.args, node.kwargs))
            provs = [self.prov.get(i, FLOAT) for i in ins]
            quantized_in = any(isinstance(p, ActQuantizer) for p in provs)
            if (node.op == "call_method" and node.target in _META_METHODS) or (
                    node.op == "call_function" and node.target in _META_FUNCTIONS):
                self.prov[node] = META
                continue
            if ins and all(p is META for p in provs) and node.op != "call_module":
                self.prov[node] = META
                continue
            if node.op == "call_function" and node.target is operator.getitem and provs and provs[0] is META:
                self.prov[node] = META
                continue
            if self.selects(node):  # one output of an op with several: its own carrier
                self.prov[node] = self.prov[node.args[0]][node.args[1]]
                self.decided[node] = ("select", None, node.args[1])
                continue
            if node.meta.get(REFUSED_KEY):  # a call a lowered family could not lower: float, always reported
                unsupported.append(node)
                island.add(node)
                self.prov[node] = FLOAT
                continue
            fam = self.family(node)
            if fam is None:
                if self.is_float_module(node) or self.configured_float(node):
                    self.info.islands.append(node.name)
                elif quantized_in or any(i in island for i in ins):  # strict names every op of a chain
                    unsupported.append(node)
                    island.add(node)
                self.prov[node] = FLOAT
                continue
            if self.is_float_module(node):
                self.info.islands.append(node.name)
                self.prov[node] = FLOAT
                continue
            if fam.kind == "passthrough":
                first = next((p for p in provs if p is not META), FLOAT)
                self.prov[node] = first
                self.decided[node] = ("passthrough", fam.id, None)
                if isinstance(first, ActQuantizer):
                    self.record_passthrough(node, fam, first)
                continue
            self.replace(node, fam)
        self.drop_packing()
        self.report_unsupported(unsupported)
        self.hoist_quants()
        self.mark_ahead_relu()
        self.classify()
        self.graph.lint()
        self.gm.recompile()

    def check_packed_users(self, node: fx.Node) -> None:
        """A PackedSequence may only be the input of a quantized ``nn.GRU`` / ``nn.LSTM`` (which takes its tensor and
        its lengths); anything else reading it is refused, naming the reader."""
        for user in node.users:
            if user.op == "call_module":
                module = self.module_of(user)
                fam = self.family(user)
                if (isinstance(module, nn.RNNBase) and fam is not None and user.args and user.args[0] is node
                        and not self.is_float_module(user)
                        and not self.config.for_layer(str(user.target), fam.id, type(module).__name__).float):
                    continue
                what = f"module {str(user.target)!r} ({type(module).__name__}" + (
                    ", kept float)" if self.is_float_module(user) or self.configured_float(user) else ")")
            else:
                what = f"{op_name(user, self.gm)} (node {user.name!r})"
            raise UnsupportedOpError(
                f"pack_padded_sequence (node {node.name!r}): its PackedSequence is read by {what}, not by a "
                "quantized nn.GRU / nn.LSTM",
                {"rule": "a packed sequence is the input of a quantized GRU or LSTM, which runs each sequence for "
                         "its own length (the chip's GRUInt / LSTMInt lengths input)",
                 "call site": _call_site(user)},
                "give the padded tensor to other ops (pad_packed_sequence after the RNN gives it back), or keep "
                "the packing, the RNN and the padding in one submodule kept float with "
                "lnn.disable_quant(model.<submodule>)", op="pack_padded_sequence", call_site=_call_site(user),
                node=node.name, reader=what)

    def drop_packing(self) -> None:
        """Remove the packing nodes (their RNNs read the tensor and the lengths directly now) and the lengths
        conversions only they read (``lengths.cpu()``)."""
        for node in [n for n in self.graph.nodes if n.op == "call_function" and n.target is pack_padded]:
            if node.users:
                continue
            ins = flat_nodes((node.args, node.kwargs))
            self.graph.erase_node(node)
            while ins:
                i = ins.pop()
                if not i.users and i.op in ("call_method", "call_function"):
                    ins.extend(flat_nodes((i.args, i.kwargs)))
                    self.graph.erase_node(i)

    def configured_float(self, node: fx.Node) -> bool:
        """Whether the config keeps a module without a quantized form float (``by_path={"rnn":
        LayerConfig(float=True)}`` or ``by_type={"GRU": ...}``): then it is a float island on purpose, like
        ``lnn.disable_quant``, not an unsupported op. Only a float setting counts as a match for such a module
        (bits for a layer that has no quantized form would be silently ignored)."""
        if node.op != "call_module":
            return False
        path, float_type = str(node.target), type(self.module_of(node)).__name__
        if not self.config.for_layer(path, "", float_type).float:
            return False
        self.configured.append((path, "", float_type))
        return True

    def selects(self, node: fx.Node) -> bool:
        """Whether ``node`` picks outputs of an op with several outputs (``y, h = op(x)`` traces to getitem)."""
        return (node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2
                and isinstance(node.args[0], fx.Node) and isinstance(self.prov.get(node.args[0]), tuple)
                and isinstance(node.args[1], (int, slice)))

    def classify(self) -> None:
        """Keep every node's role on it (``node.meta["lnn"]``), from the decisions of this pass on the final graph."""
        roles: dict[fx.Node, NodeRole] = {}
        for node in self.graph.nodes:
            roles[node] = role = self.role(node, roles)
            node.meta[ROLE_KEY] = role

    def role(self, node: fx.Node, roles: dict[fx.Node, NodeRole]) -> NodeRole:
        """The role of ``node``, its inputs' roles known (``roles``, graph order)."""
        if node.op == "placeholder":
            return NodeRole("input")
        if node.op == "get_attr":
            return NodeRole("param")
        if node.op == "output":
            return NodeRole("output")
        data = [i for i in flat_nodes((node.args, node.kwargs)) if roles[i].kind not in ("param", "value")]
        quantized = any(isinstance(self.prov.get(i), (ActQuantizer, tuple)) for i in data)
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            if isinstance(module, QuantStub):
                return NodeRole("quant", module.op_id, quantized)
            if node in self.folded_nodes:
                return NodeRole("alias", None, quantized)
        if self.prov.get(node) is META:
            return NodeRole("value")
        kind, op_id, index = self.decided.get(node, ("float", None, None))
        if kind == "passthrough":  # an exact op: written as an integer op when it reads quantized data
            kind = "op" if isinstance(self.prov.get(node), ActQuantizer) else "float"
        if kind == "float" and not data:
            return NodeRole("value")  # computed from parameters and constants only: no IR of its own
        return NodeRole(kind, op_id if kind == "op" else None, quantized, index,
                        op_name(node, self.gm) if kind == "float" else "")

    def may_pick_from_tuple(self, node: fx.Node, src: fx.Node) -> bool:
        """Whether ``node`` may be ``value[i]`` on the tuple a float op returned (``y, h = gru(x)``): a float
        module or an op without a family may return several values, and a Quant cannot move in front of the
        selection (it would quantize the tuple). Only an int index can pick from a tuple; ``x[0]`` on a float
        tensor is then merely quantized after the selection instead of before (the same integers). A module with a
        family kept float by the config (``LayerConfig(float=True)``: an island) counts as a float module."""
        if not (node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2
                and isinstance(node.args[1], int)):
            return False
        return self.prov.get(src) is FLOAT and src.op in ("call_module", "call_function", "call_method") and (
            self.is_float_module(src) or self.family(src) is None or bool(src.meta.get(REFUSED_KEY))
            or src.name in self.info.islands)

    def record_passthrough(self, node: fx.Node, fam: Any, provider: ActQuantizer) -> None:
        """Remember a passthrough op on quantized data, with the attributes its rules judge."""
        path = str(node.target) if node.op == "call_module" else node.name
        attrs_: dict[str, Any] = {}
        if fam.describe is not None:
            module = self.gm.get_submodule(path) if node.op == "call_module" else None
            ctx = BuildContext(path, node, module, LayerConfig(provider.bits, self.config.weight_bits), self.recipe,
                               self.stage)
            attrs_ = fam.describe(ctx)
        self.info.passthrough[node.name] = {"op": fam.id, "attrs": attrs_, "path": path}

    def hoist_quants(self) -> None:
        """Quantize data before the exact ops it passes on its way in (``x -> maxpool -> Quant`` becomes
        ``x -> Quant -> maxpool``): max, ReLU and reshapes commute with half-up rounding, so the
        results are equal, and the chip then runs those ops on int8 instead of the host in float.

        Runs to a fixpoint: merging two Quant nodes into one can leave an exact op with a single user, which
        the next round moves behind the Quant too (``r = relu(x); r * maxpool(r)``).
        """
        while any(self.hoist_one(src) for src in list(self.quant_of)):
            pass  # hoist_one changed the graph: scan again from the start

    def hoist_one(self, src: fx.Node) -> bool:
        """Move the Quant node after ``src`` up through the chain of exact single-user ops that produced
        ``src``; False when there is no such chain."""
        qnode = self.quant_of[src]
        chain: list[fx.Node] = []
        node = src
        while node.op in ("call_module", "call_function", "call_method") and len(node.users) == 1:
            fam = self.family(node)
            ins = [i for i in flat_nodes((node.args, node.kwargs)) if self.prov.get(i) is not META]
            if (fam is None or fam.kind != "passthrough" or self.is_float_module(node) or len(ins) != 1
                    or self.selects(node) or self.may_pick_from_tuple(node, ins[0])):
                break
            chain.append(node)
            node = ins[0]
        if not chain:
            return False
        head, first = node, chain[-1]
        quantizer = self.prov[qnode]
        qnode.replace_all_uses_with(src)
        path = str(qnode.target)
        self.graph.erase_node(qnode)
        del self.quant_of[src]
        if src.name in self.info.islands:
            self.info.islands.remove(src.name)
        if head in self.quant_of:  # the head is quantized already: reuse its Quant node
            new = self.quant_of[head]
            self.rebind(quantizer, self.prov[new])
            quantizer = self.prov[new]
            self.gm.delete_submodule(path)
            self.info.ops.pop(path, None)
        else:
            if head.op == "placeholder":  # name it as the graph-input Quant it now is
                module = self.gm.get_submodule(path)
                self.gm.delete_submodule(path)
                op_id = self.info.ops.pop(path)
                path = f"q_input_{head.name}"
                self.gm.add_submodule(path, module)
                self.info.ops[path] = op_id
            with self.graph.inserting_after(head):
                new = self.graph.call_module(path, (head,))
            self.quant_of[head] = new
            self.prov[new] = quantizer
        first.replace_input_with(head, new)
        for n in reversed(chain):
            self.prov[n] = quantizer
            self.record_passthrough(n, self.family(n), quantizer)
        return True

    def rebind(self, old: ActQuantizer, new: ActQuantizer) -> None:
        """Make everything that read the exponent of ``old`` (a deleted Quant node's) read ``new``'s instead."""
        for node, p in self.prov.items():
            if p is old:
                self.prov[node] = new
        for m in self.gm.modules():
            if isinstance(m, QModule) and any(q is old for q in m.input_quantizers):
                m.bind_inputs([new if q is old else q for q in m.input_quantizers])

    def replace(self, node: fx.Node, fam: Any) -> None:
        base = fam.id.split(".", 1)[-1].lower()
        path = self.path_for(node, base)
        layer = self.layer_for(path, fam, node)
        if layer.float:
            self.info.islands.append(node.name)
            self.prov[node] = FLOAT
            return
        module = self.module_of(node) if node.op == "call_module" else None
        if node.op == "call_module":
            self.built_paths.add(path)
            if path != str(node.target):
                self.info.shared[path] = str(node.target)
        bn_node = self.bn_of.get(node)
        bn = self.gm.get_submodule(str(bn_node.target)) if bn_node is not None else None
        ctx = BuildContext(path, node, module, layer, layer.apply_to(self.recipe), self.stage, bn)
        built = fam.build(ctx)
        _check_weight_rule(ctx, fam, built)
        if built is None:  # the family has no quantized form for this particular call
            if any(isinstance(self.prov.get(i), ActQuantizer) for i in flat_nodes((node.args, node.kwargs))):
                self.unsupported.append(node)
            self.prov[node] = FLOAT
            return
        if not isinstance(built, Built):
            raise TypeError(f"op family {fam.id}: build() must return lnn_core.quant.rewrite.Built or None")
        act_inputs = []
        providers = []
        shapes = tuple(_node_shape(src) for src in built.act_inputs)
        if any(sh is not None for sh in shapes):
            self.info.input_shapes[path] = shapes
        for src in built.act_inputs:
            p = self.prov.get(src, FLOAT) if isinstance(src, fx.Node) else FLOAT
            if not isinstance(p, ActQuantizer):
                src = self.quant_node_for(src)
                p = self.prov[src]
            act_inputs.append(src)
            providers.append(p)
        qmod = built.module
        if isinstance(qmod, QModule):
            qmod.bind_inputs(providers)
        self.gm.add_submodule(path, qmod)
        with self.graph.inserting_before(node):
            new = self.graph.call_module(path, tuple(act_inputs) + tuple(built.param_inputs))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        self.replaced[new] = fam
        self.info.ops[path] = fam.id
        self.decided[new] = ("op", fam.id, None)
        self.prov[new] = self.carrier(qmod, providers)

    def carrier(self, qmod: nn.Module, providers: list[ActQuantizer]) -> Any:
        """What the consumers of a quantized module's output read its exponent from: the output quantizer, or
        input 0's when the op's one output keeps its input's scale. An op with several outputs gets one carrier per
        output, shaped like its return value (``(q0, (q1, q2))``); a float output (None in ``out_qs``) carries FLOAT.
        """
        if not isinstance(qmod, QModule):
            out_q = getattr(qmod, "out_q", None)
            return out_q if isinstance(out_q, ActQuantizer) else (providers[0] if providers else FLOAT)
        qs = qmod.out_qs
        tree = output_tree(qmod)
        if isinstance(tree, int):
            if not qs:
                return providers[0] if providers else FLOAT
            return qs[0] if qs[0] is not None else FLOAT
        return _map_tree(tree, lambda i: qs[i] if qs[i] is not None else FLOAT)

    def report_unsupported(self, nodes: list[fx.Node]) -> None:
        if not nodes:
            return
        skip = frozenset(_source_file(fam.lower) for _, fam in self.ops.items() if fam.kind == "lowered")
        found = [(n.name, op_name(n, self.gm), _call_site(n, skip)) for n in nodes]
        self.info.unsupported.extend(found)
        # a module is named by its path (what lnn.disable_quant and QuantConfig.by_path take), a function by node
        # and the module it runs in; a call a lowered family refused adds its problems and hints
        where = {n.name: f"module {str(n.target)!r}" if n.op == "call_module"
                 else f"node {n.name!r}" + (f" in {_owner(n)}" if _owner(n) else "") for n in nodes}
        why = {n.name: "".join(f"\n  {problem}\n  hint: {hint}" for problem, hint in n.meta.get(REFUSED_KEY, ()))
               for n in nodes}
        lines = "\n".join(f"{op} ({where[name]}) at {site}{why[name]}" for name, op, site in found)
        if self.config.strict:
            raise UnsupportedOpError(
                f"{len(found)} op(s) without a quantized form run on quantized data: "
                + ", ".join(sorted({op for _, op, _ in found})),
                {"ops": lines, "rule": "strict=True refuses float islands inside the quantized graph"},
                "replace the op with a supported one, keep the surrounding layer in float with "
                "lnn.disable_quant(...), or install a plugin that provides it",
                op=found[0][1], call_site=found[0][2], ops=found)
        paths = {n.name: str(n.target) for n in nodes if n.op == "call_module"}
        for name, op, site in found:
            keep = (f"; lnn.disable_quant(model.{paths[name]}) keeps it float without this warning"
                    if name in paths else "")
            warnings.warn(
                f"op {op} ({where[name]}) has no quantized form and runs in float on quantized data{why[name]}\n"
                f"  call site: {site}\n"
                "  hint: it is kept as a float island (Dequant -> float op -> Quant); pass strict=True to "
                f"make this an error{keep}", UnsupportedOpWarning, stacklevel=5)

    def mark_ahead_relu(self) -> None:
        def consumers(node: fx.Node) -> list[fx.Node]:
            out: list[fx.Node] = []
            for u in node.users:
                out.extend(consumers(u) if u in self.folded_nodes else [u])
            return out

        def output_users(node: fx.Node, tree: OutTree) -> dict[int, list[fx.Node]]:
            """Output index -> the nodes that read that output (through the getitem nodes that select it)."""
            if isinstance(tree, int):
                return {tree: consumers(node)}
            out: dict[int, list[fx.Node]] = {}
            for u in node.users:
                if self.selects(u):
                    found = output_users(u, tree[u.args[1]])
                else:  # reads the whole tuple
                    found = {i: [u] for i in tree_leaves(tree)}
                for i, us in found.items():
                    out.setdefault(i, []).extend(us)
            return out

        for node in self.graph.nodes:
            if node.op != "call_module" or node in self.folded_nodes:
                continue
            qmod = self.gm.get_submodule(node.target)
            if isinstance(qmod, QuantStub):
                continue
            if isinstance(qmod, QModule):
                qs, tree = qmod.out_qs, output_tree(qmod)
            else:
                qs, tree = (getattr(qmod, "out_q", None),), 0
            for i, users in output_users(node, tree).items():
                q = qs[i] if i < len(qs) else None
                if isinstance(q, ActQuantizer) and users and all(self.keeps_positive_only(u) for u in users):
                    q.positive = True

    def keeps_positive_only(self, node: fx.Node) -> bool:
        """Whether ``node`` discards negative values (a ReLU, or a clip with a lower bound >= 0)."""
        fam = self.replaced.get(node) or self.family(node)
        if fam is not None and fam.relu:
            return True
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            return bool(getattr(mod, "drops_negative", False))
        return False


def _source_file(fn: Any) -> str:
    import inspect

    try:
        return inspect.getsourcefile(fn) or ""
    except TypeError:
        return ""


def _has_submodule(gm: nn.Module, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


def _rules_report(gm: fx.GraphModule, info: LnnInfo, host: Any, target: Any) -> RuleReport:
    views = []
    for path, op_id in info.ops.items():
        mod = gm.get_submodule(path)
        op_attrs = mod.op_attrs() if isinstance(mod, QModule) else {}
        if isinstance(mod, QModule) and path in info.input_shapes:
            op_attrs.update(mod.shape_attrs(info.input_shapes[path]))
        views.append(OpView(path, op_id, op_attrs))
    for entry in info.passthrough.values():
        views.append(OpView(entry["path"], entry["op"], entry["attrs"]))
    report = RuleReport(target.id)
    return report.check_ops(views, lambda op_type: host.rules_for(op_type, target.id), target.limits)


def _node_shape(node: Any) -> tuple[int, ...] | None:
    """The shape :func:`_propagate_shapes` recorded for ``node`` (None: not a tensor, or no example inputs)."""
    return node.meta.get(_SHAPE_KEY) if isinstance(node, fx.Node) else None


_SHAPE_KEY = "lnn_shape"


class _ShapeRecorder(fx.Interpreter):
    """Runs a graph and keeps the shape of every tensor a node produces in ``node.meta["lnn_shape"]``."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta[_SHAPE_KEY] = tuple(int(d) for d in result.shape)
        return result


def _propagate_shapes(gm: fx.GraphModule, example_inputs: Any, model_name: str) -> None:
    """Run the float graph once on ``example_inputs`` and keep each node's shape (``node.meta["lnn_shape"]``).

    Eval mode and no gradient, restored afterwards: no BatchNorm statistic or other state changes.
    """
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    bad = [type(a).__name__ for a in args if not isinstance(a, torch.Tensor)]
    if bad:
        raise ConfigError(
            f"lnn.init: example_inputs for model {model_name!r} holds a {bad[0]}, not a tensor",
            {"rule": "example_inputs is a tensor or a tuple of tensors, one per forward argument",
             "actual": ", ".join(type(a).__name__ for a in args)},
            "pass example tensors shaped as the model takes them, e.g. example_inputs=torch.randn(1, 49, 40)",
            option="example_inputs", value=example_inputs, valid="a tensor or a tuple of tensors")
    modes = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            _ShapeRecorder(gm).run(*args)
    except Exception as exc:  # the user's model on the user's tensors: any failure is the inputs' mismatch
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        raise ConfigError(
            f"lnn.init: model {model_name!r} does not run on example_inputs of shape {shapes}",
            {"rule": "example_inputs must run through the float model's forward",
             "cause": (str(exc).strip().splitlines() or [type(exc).__name__])[0]},
            "pass tensors shaped as the model's forward takes them (batch dimension included), or leave "
            "example_inputs out (the shape rules are then checked at the first forward)",
            option="example_inputs", value=shapes, valid="inputs the float model runs on") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode


def _check_weight_rule(ctx: BuildContext, fam: Any, built: Any) -> None:
    """Refuse, at init, a stateful weight rule (an EMA) for an op that quantizes its weights without state."""
    module = built.module if isinstance(built, Built) else None
    if module is None or not (getattr(module, "has_weight", False) or hasattr(module, "weight")):
        return
    observer = ctx.recipe.make_weight_observer()
    if not observer.stateful or any(isinstance(m, WeightQuantizer) for m in module.modules()):
        return
    raise ConfigError(
        f"layer {ctx.path!r} ({fam.id}): weight observer {observer!r} keeps running statistics, but this op "
        "quantizes its weights without state",
        {"rule": "a stateful weight rule (EMA) needs an op that owns a WeightQuantizer (the RNN ops)"},
        "use the floor rule for this layer (weight_observer=None or lnn_core.quant.observers.MaxFloor), or "
        "set the EMA rule only for the layers that support it (QuantConfig(by_type=...))",
        option="weight_observer", value=observer, valid="a stateless weight observer", node=ctx.path)


def _refuse_new_setup(model: nn.Module, stage: str, info: LnnInfo, config: QuantConfig | None,
                      target: str) -> None:
    """A model prepared before keeps its graph, bits, observers and rules: a different config or target is an
    error (rebuilding the graph would drop the trained state), never silently ignored."""
    call = "lnn.init" if stage == "quant" else "lnn.constrain"
    if target != info.target:
        raise ConfigError(
            f"{call}: model {type(model).__name__!r} was prepared for target {info.target!r}, not {target!r}",
            {"rule": "a prepared model keeps the target it was built for; only its stage changes",
             "actual": target, "prepared for": info.target},
            f"call {call}(model) without target, or prepare the float model for {target!r} from the start",
            option="target", value=target, valid=info.target)
    if config is not None and config != info.config:
        differs = [f.name for f in attrs.fields(QuantConfig) if getattr(config, f.name) != getattr(info.config, f.name)]
        raise ConfigError(
            f"{call}: model {type(model).__name__!r} was prepared with another QuantConfig "
            f"({', '.join(differs)} differ)",
            {"rule": "a prepared model keeps the graph, bits and observers it was built with; only its stage "
                     "changes", "actual": repr(config), "prepared with": repr(info.config)},
            f"call {call}(model) without config, or pass this config when preparing the float model "
            "(lnn.constrain(model, quant_config=...))",
            option="config", value=config, valid=info.config, differs=differs)


def prepare(model: nn.Module, *, stage: str, host: Any, target: str, config: QuantConfig | None = None,
            constrain: ConstrainConfig | None = None, check_rules: bool = True,
            example_inputs: Any = None) -> fx.GraphModule:
    """Trace ``model`` and return a new GraphModule for ``stage`` (the input model is not modified).

    A model prepared before (stage 1 to stage 2) is switched to ``stage`` on a copy; ``config`` (None: keep
    its own) and ``target`` must then be those it was prepared with (:class:`ConfigError` otherwise).

    :param example_inputs: a tensor or a tuple of tensors as ``model``'s forward takes them. When given, the float
        graph runs once on them (eval mode, no gradient, no state changed) and the rules that judge shapes (a
        softmax row or a non-last ``dim``, BmmInt's right matrix, ...) are checked here with all the other rules
        instead of at the first forward.
    """
    if config is not None and not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be a lnn_core.QuantConfig, not {type(config).__name__}",
                          {"actual": repr(config)[:80]}, "build one with lnn.QuantConfig(...)",
                          option="config", value=config, valid="QuantConfig")
    info_existing = getattr(model, "lnn", None)
    if isinstance(info_existing, LnnInfo):
        _refuse_new_setup(model, stage, info_existing, config, target)
        return _restage(model, stage, info_existing, constrain)
    config = config or QuantConfig()
    tgt = host.targets[target]
    recipe_name = config.recipe or tgt.recipe
    if recipe_name not in host.recipes:
        raise ConfigError(
            f"unknown quantization recipe {recipe_name!r}" + ("" if config.recipe else f" (target {tgt.id})"),
            {"option": "recipe", "registered": ", ".join(host.recipes) or "none", "actual": recipe_name},
            "use one of the registered recipes (`lnn plugins` lists them)", option="recipe", value=recipe_name,
            valid=tuple(host.recipes))
    recipe = config.apply_to(host.recipes[recipe_name])
    root, graph, lowered_paths = trace_lowered(model, host.ops)
    gm = QuantizedModel(root, graph, type(model).__name__)
    if example_inputs is not None:
        _propagate_shapes(gm, example_inputs, type(model).__name__)
    gm.register_forward_pre_hook(share_exponents)  # eval: resolve each exponent once per forward
    gm.register_forward_hook(unshare_exponents, always_call=True)
    info = LnnInfo(stage, tgt.id, recipe, config, constrain, lowered=lowered_paths)
    rewriter = _Rewriter(gm, host, recipe, config, stage, info)
    rewriter.run()
    for name, m in gm.named_modules():  # the quantizers' paths, for their errors
        if isinstance(m, ActQuantizer):
            m.path = name
    config.check_matches(rewriter.configured, type(model).__name__)  # a by_path/by_type typo is an error
    set_stage(gm, stage)
    if stage == "constrain":
        for m in gm.modules():
            if isinstance(m, QModule):
                m.set_constraints(constrain or ConstrainConfig())
    gm.lnn = info
    if check_rules:
        info.report = _rules_report(gm, info, host, tgt)
        info.report.raise_if_errors()
    return gm


def _restage(model: nn.Module, stage: str, info: LnnInfo, constrain: ConstrainConfig | None) -> nn.Module:
    """A model prepared before is switched to ``stage`` (on a copy) instead of traced again."""
    new = copy.deepcopy(model)
    set_stage(new, stage)
    if stage == "constrain":
        for m in new.modules():
            if isinstance(m, QModule):
                m.set_constraints(constrain or ConstrainConfig())
    new.lnn = attrs.evolve(info, stage=stage)
    return new
