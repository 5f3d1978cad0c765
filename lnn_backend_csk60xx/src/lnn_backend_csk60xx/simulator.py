"""Python face of the C int8 simulator (``lnn_backend_csk60xx._sim``, built by ``_sim_build.py``).

:class:`Simulator` loads a model.bin image (the C loader validates it completely first), checks
inputs against the model (count, shape, dtype) before calling C, and turns C status codes into
exceptions: damaged or inconsistent files raise :class:`~lnn_core.errors.ModelFileError`, run-time
failures :class:`~lnn_core.errors.SimulatorError`, both carrying the C message and ``.status``.

Plugin ops (external ops in model.bin) run through the Python kernels of their op definitions
(``OpSet.kernels``), passed here as ``kernels``. The C executor runs the whole graph; at an external op
it calls :func:`lnn_sim_py_external` (a cffi ``extern "Python"`` function) with a handle to the
:class:`Simulator`, which reads the op's inputs from their planned places in the arenas and calls
``kernel(call: KernelCall)``. An external op has 1..``LNN_SIM_MAX_OP_OUTPUTS`` outputs: its kernel returns
one array (one output) or a tuple/list with one array per output, in order; each is checked for shape and
dtype, and only then are all written at their outputs' planned offsets. A kernel that raises stops the
run with a :class:`SimulatorError` chained to the kernel's exception.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnn_core.errors import ConfigError, ModelFileError, SimulatorError

from ._sim import ffi, lib
from .limits import SIM_LIMITS

__all__ = ["Simulator", "StatefulRun", "TensorSpec", "KernelCall", "OpTime", "STATUS_NAMES", "ISA_PATHS",
           "available_isas", "check_isa_env"]

log = logging.getLogger("lnn.backend.simulator")

_DTYPES = {lib.LNN_SIM_DT_FLOAT32: np.dtype("<f4"), lib.LNN_SIM_DT_INT8: np.dtype("i1"),
           lib.LNN_SIM_DT_UINT8: np.dtype("u1"), lib.LNN_SIM_DT_INT16: np.dtype("<i2"),
           lib.LNN_SIM_DT_INT32: np.dtype("<i4"), lib.LNN_SIM_DT_INT64: np.dtype("<i8")}
_REGIONS = {lib.LNN_SIM_REGION_FLASH: "flash", lib.LNN_SIM_REGION_PSRAM: "psram",
            lib.LNN_SIM_REGION_SHARE: "share_mem"}

#: status code -> name (``LNN_SIM_E_<REASON>``)
STATUS_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("LNN_SIM_E_") or n == "LNN_SIM_OK"}
_MAX_IO = lib.LNN_SIM_MAX_OP_INPUTS
#: recurrent op code -> (initial-state input position, final-state output position) pairs: h0 -> h_n (and c0 -> c_n)
_STATE_IO = {lib.LNN_SIM_OP_GRU: ((6, 1),), lib.LNN_SIM_OP_LSTM: ((6, 1), (7, 2))}
#: the instruction-set paths of the C kernels, in the order of their bits in lnn_sim_isa_available()
ISA_PATHS = ("portable", "avx2", "avx512vnni")


def available_isas() -> tuple[str, ...]:
    """The paths this build of the simulator and this CPU can run (``LNN_SIM_ISA`` may name any of them)."""
    bits = int(lib.lnn_sim_isa_available())
    return tuple(name for i, name in enumerate(ISA_PATHS) if bits & (1 << i))


def check_isa_env() -> None:
    """Refuse an ``LNN_SIM_ISA`` that names no path, or one this CPU cannot run, before the C loader reads it."""
    value = os.environ.get("LNN_SIM_ISA", "")
    if not value or value in available_isas():
        return
    known = value in ISA_PATHS
    raise ConfigError(
        f"environment variable LNN_SIM_ISA={value!r}: " +
        ("this CPU or build cannot run that path" if known else "not a path of the C simulator"),
        {"valid": ", ".join(available_isas()), "all paths": ", ".join(ISA_PATHS)},
        "unset LNN_SIM_ISA (the simulator takes the best path the CPU has) or name one of the valid paths",
        option="LNN_SIM_ISA", value=value, valid=available_isas())


_FILE_ERRORS = {lib.LNN_SIM_E_TRUNCATED, lib.LNN_SIM_E_MAGIC, lib.LNN_SIM_E_VERSION, lib.LNN_SIM_E_TARGET,
                lib.LNN_SIM_E_CRC, lib.LNN_SIM_E_SECTION, lib.LNN_SIM_E_STRING, lib.LNN_SIM_E_TENSOR,
                lib.LNN_SIM_E_OP, lib.LNN_SIM_E_ATTR, lib.LNN_SIM_E_SHAPE, lib.LNN_SIM_E_PLAN, lib.LNN_SIM_E_LIMIT,
                lib.LNN_SIM_E_SCHEDULE, lib.LNN_SIM_E_WORK}
_NO_MAC_LIMIT = 2 ** 64 - 1


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the loaded model describes it (``exponent`` None for float tensors)."""

    index: int
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    exponent: int | None
    region: str
    offset: int
    size: int


@dataclass(frozen=True)
class OpTime:
    """One op's entry of :meth:`Simulator.profile`: its name, its kind (the simulator's op code name, e.g.
    ``CONV2D``, or a plugin op's type), its work in MACs and its mean wall time per run in microseconds."""

    name: str
    kind: str
    macs: int
    us: float


@dataclass(frozen=True)
class KernelCall:
    """What a plugin's simulator kernel receives for one run of its op.

    :param inputs: the input tensors (read-only copies, in the op's input order).
    :param input_specs: dtype, shape and exponent of each input.
    :param output: the first output (for a single-output op, the tensor the kernel must return: exactly
        this shape and dtype).
    :param attrs: the node's attributes as packed (scales are the tensors' exponents).
    :param outputs: every output, in order (``(output,)`` for a single-output op); a kernel of an op with
        several outputs returns a tuple or list with one array per entry, each of exactly its shape and dtype.
    """

    op_name: str
    op_type: str
    attrs: Mapping[str, Any]
    inputs: tuple[np.ndarray, ...]
    input_specs: tuple[TensorSpec, ...]
    output: TensorSpec
    outputs: tuple[TensorSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.output,))
        elif self.outputs[0] != self.output:
            raise ValueError(f"KernelCall of op {self.op_name!r}: output must be outputs[0]")


@dataclass(frozen=True)
class _External:
    op_type: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


@ffi.def_extern()
def lnn_sim_py_external(user: Any, model: Any, op: int, msg: Any, msg_size: int) -> int:
    """The C executor's call into Python for an external op (see the module docstring)."""
    sim = ffi.from_handle(user)
    return sim._run_external(int(op), msg, int(msg_size))


class Simulator:
    """The C int8 simulator on one model.bin image.

    :param model: the model.bin bytes (copied by the loader).
    :param path: file name used in error messages.
    :param kernels: ``op type -> kernel(call: KernelCall)`` for the model's plugin ops; a kernel returns one
        array, or a tuple/list with one array per output of an op with several outputs.
    :param max_macs: refuse a model whose work exceeds this many MACs (multiply-accumulates of conv, linear and
        batchnorm ops, window cells of pools, one per element every op reads or writes); None: the loader's
        default ``SIM_LIMITS.default_max_macs`` (40 G, about 10x a ResNet-50), 0: no limit.
    :raises ModelFileError: the image is damaged or inconsistent, or needs more than ``max_macs`` (``.status``
        holds the C code; a refusal for work also ``.limit``, ``.actual`` and ``.node``, the heaviest op).
    :raises ConfigError: ``max_macs`` is not a non-negative integer.
    """

    def __init__(self, model: bytes | bytearray | memoryview, *, path: str | None = None,
                 kernels: Mapping[str, Callable[[KernelCall], Any]] | None = None,
                 max_macs: int | None = None) -> None:
        self.path = path
        self.kernels = dict(kernels or {})
        self.max_macs = self._mac_limit(max_macs)
        data = bytes(model)
        check_isa_env()
        if data[:9] == b"thinker10":  # a thinker package: decoded into lnn's IR and packed as model.bin
            from .thinker.graph import to_model_bin

            data = to_model_bin(data, path=path)
        out = ffi.new("lnn_sim_model **")
        msg = ffi.new("char[]", lib.LNN_SIM_MAX_MSG)
        limit = self.max_macs if self.max_macs else _NO_MAC_LIMIT
        status = lib.lnn_sim_load_ex(data, len(data), limit, out, msg, lib.LNN_SIM_MAX_MSG)
        if status == lib.LNN_SIM_E_WORK:
            raise self._work_error(data, ffi.string(msg).decode("utf-8", "replace"))
        if status != lib.LNN_SIM_OK:
            text = ffi.string(msg).decode("utf-8", "replace")
            raise self._error(status, f"cannot load packed model{self._where()}: {text}", None)
        self._model = ffi.gc(out[0], lib.lnn_sim_free)
        self._blob = data
        self._msg = msg
        self.tensors = [self._spec(t) for t in range(lib.lnn_sim_num_tensors(self._model))]
        self.inputs = [self.tensors[lib.lnn_sim_input_index(self._model, i)]
                       for i in range(lib.lnn_sim_num_inputs(self._model))]
        self.outputs = [self.tensors[lib.lnn_sim_output_index(self._model, i)]
                        for i in range(lib.lnn_sim_num_outputs(self._model))]
        self.op_names = [ffi.string(lib.lnn_sim_op_name(self._model, i)).decode("utf-8", "replace")
                         for i in range(lib.lnn_sim_num_ops(self._model))]
        self.op_types = [int(lib.lnn_sim_op_type(self._model, i)) for i in range(len(self.op_names))]
        self._op_outputs: list[list[int]] = []
        self._op_inputs: list[list[int]] = []
        idx = ffi.new("int32_t[]", _MAX_IO)
        count = ffi.new("int32_t *")
        for i in range(len(self.op_names)):
            lib.lnn_sim_op_outputs(self._model, i, idx, _MAX_IO, count)
            self._op_outputs.append([idx[k] for k in range(min(count[0], _MAX_IO))])
            lib.lnn_sim_op_inputs(self._model, i, idx, _MAX_IO, count)
            self._op_inputs.append([idx[k] for k in range(min(count[0], _MAX_IO))])
        self.region_sizes = {"share_mem": int(lib.lnn_sim_region_size(self._model, lib.LNN_SIM_REGION_SHARE)),
                             "psram": int(lib.lnn_sim_region_size(self._model, lib.LNN_SIM_REGION_PSRAM)),
                             "flash": int(lib.lnn_sim_region_size(self._model, lib.LNN_SIM_REGION_FLASH))}
        self._externals = self._read_externals()
        self._pending: BaseException | None = None
        if self._externals:
            self._handle = ffi.new_handle(self)
            lib.lnn_sim_set_external(self._model, lib.lnn_sim_py_external, self._handle)
        log.debug("loaded %d ops, %d tensors", len(self.op_names), len(self.tensors))

    # -- work ------------------------------------------------------------------------------------
    @staticmethod
    def _mac_limit(value: int | None) -> int:
        if value is None:
            return SIM_LIMITS.default_max_macs
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= _NO_MAC_LIMIT:
            raise ConfigError(f"Simulator max_macs must be a non-negative integer, got {value!r}",
                              {"valid": f"0 (no limit) .. {_NO_MAC_LIMIT}", "default": SIM_LIMITS.default_max_macs},
                              "pass e.g. max_macs=100_000_000_000, or 0 for no limit", option="max_macs",
                              value=value, valid="int >= 0")
        return int(value)

    @property
    def isa(self) -> str:
        """The instruction-set path of the C kernels: ``"portable"``, ``"avx2"`` or ``"avx512vnni"``.

        The best the CPU has, unless the environment variable ``LNN_SIM_ISA`` named another when the model was
        loaded (read once, at load). Every path computes the same integers; the variable is there to test that.
        """
        return ffi.string(lib.lnn_sim_isa(self._model)).decode()

    @property
    def macs(self) -> int:
        """The model's work in MACs, as the loader counts it against ``max_macs``."""
        return int(lib.lnn_sim_macs(self._model))

    @property
    def op_macs(self) -> dict[str, int]:
        """Op name -> its work in MACs."""
        return {name: int(lib.lnn_sim_op_macs(self._model, i)) for i, name in enumerate(self.op_names)}

    def _work_error(self, data: bytes, text: str) -> ModelFileError:
        """The refusal of a model over ``max_macs``, with the total and the heaviest op as attributes (the image is
        loaded once more without the limit to read them: it passed every other check)."""
        out = ffi.new("lnn_sim_model **")
        total, op_name, op_macs = None, None, None
        if lib.lnn_sim_load_ex(data, len(data), _NO_MAC_LIMIT, out, ffi.NULL, 0) == lib.LNN_SIM_OK:
            model = ffi.gc(out[0], lib.lnn_sim_free)
            total = int(lib.lnn_sim_macs(model))
            ops = [int(lib.lnn_sim_op_macs(model, i)) for i in range(lib.lnn_sim_num_ops(model))]
            top = max(range(len(ops)), key=ops.__getitem__)
            op_name = ffi.string(lib.lnn_sim_op_name(model, top)).decode("utf-8", "replace")
            op_macs = ops[top]
        return ModelFileError(
            f"packed model{self._where()} needs more work than the simulator's limit of {self.max_macs} MACs",
            {"rule": "MACs of conv/linear/batchnorm, window cells of pools, one per element read or written",
             "limit": f"{self.max_macs} MACs", "actual": f"{total} MACs" if total is not None else None,
             "heaviest op": f"{op_name} ({op_macs} MACs)" if op_name is not None else None, "loader": text},
            "if the model is meant to be this large, raise the limit: lnn run --max-macs N, or "
            "Simulator(..., max_macs=N) (0: no limit)", path=self.path, node=op_name, status=lib.LNN_SIM_E_WORK,
            limit=self.max_macs, actual=total)

    # -- plugin ops ------------------------------------------------------------------------------
    def _read_externals(self) -> dict[int, _External]:
        out: dict[int, _External] = {}
        type_p, attrs_p = ffi.new("const char **"), ffi.new("const char **")
        for i, code in enumerate(self.op_types):
            if code != lib.LNN_SIM_OP_EXTERNAL:
                continue
            lib.lnn_sim_op_external(self._model, i, type_p, attrs_p)
            op_type = ffi.string(type_p[0]).decode("utf-8", "replace")
            text = ffi.string(attrs_p[0]).decode("utf-8", "replace")
            try:  # the loader bounded its size and nesting (LNN_SIM_MAX_ATTR_JSON_*); RecursionError stays caught
                attrs = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise ModelFileError(f"op {self.op_names[i]!r} ({op_type}) in the packed model{self._where()} "
                                     "has attributes that are not JSON", {"attributes": text[:200]},
                                     "re-run `lnn pack`", path=self.path, node=self.op_names[i],
                                     status=lib.LNN_SIM_E_ATTR) from exc
            if not isinstance(attrs, dict):
                raise ModelFileError(f"op {self.op_names[i]!r} ({op_type}) in the packed model{self._where()} "
                                     "has attributes that are not a JSON object", {"attributes": text[:200]},
                                     "re-run `lnn pack`", path=self.path, node=self.op_names[i],
                                     status=lib.LNN_SIM_E_ATTR)
            out[i] = _External(op_type, attrs)
        return out

    @property
    def external_ops(self) -> dict[str, str]:
        """Plugin ops of the model: op name -> op type."""
        return {self.op_names[i]: ext.op_type for i, ext in self._externals.items()}

    @property
    def missing_kernels(self) -> list[str]:
        """Op types of plugin ops that have no kernel in :attr:`kernels` (sorted)."""
        return sorted({ext.op_type for ext in self._externals.values() if ext.op_type not in self.kernels})

    def _run_external(self, op: int, msg: Any, msg_size: int) -> int:
        """Run one external op (called from C through :func:`lnn_sim_py_external`); never raises."""
        try:
            self._call_kernel(op)
        except BaseException as exc:  # an exception must not unwind through C: kept, re-raised by _check
            self._pending = exc
            text = f"{type(exc).__name__}: {exc}".splitlines()[0].encode("utf-8", "replace")[: max(msg_size - 1, 0)]
            ffi.memmove(msg, text + b"\0", len(text) + 1)
            return lib.LNN_SIM_E_EXTERNAL
        return lib.LNN_SIM_OK

    def _call_kernel(self, op: int) -> None:
        ext = self._externals[op]
        kernel = self.kernels.get(ext.op_type)
        name = self.op_names[op]
        if kernel is None:
            raise SimulatorError(
                f"op {name!r} ({ext.op_type}) of the model{self._where()} has no simulator kernel",
                {"kernels": ", ".join(sorted(self.kernels)) or "none"},
                f"install the plugin that provides {ext.op_type!r} and run through `lnn run`, or pass "
                "kernels=OpSet.from_host(host).kernels", status=lib.LNN_SIM_E_EXTERNAL, op_name=name)
        specs = tuple(self.tensors[t] for t in self._op_inputs[op])
        out_specs = tuple(self.tensors[t] for t in self._op_outputs[op])
        arrays = []
        for spec in specs:
            arr = self._read(spec)
            arr.flags.writeable = False
            arrays.append(arr)
        call = KernelCall(name, ext.op_type, ext.attrs, tuple(arrays), specs, out_specs[0], out_specs)
        results = self._kernel_results(kernel(call), call)
        for spec, result in zip(out_specs, results):  # all checked first: a bad result writes nothing
            lib.lnn_sim_set_tensor(self._model, spec.index, ffi.from_buffer(result), result.nbytes)

    @staticmethod
    def _kernel_results(value: Any, call: KernelCall) -> list[np.ndarray]:
        """The kernel's return value as one contiguous array per output of ``call``, each checked."""
        n_out = len(call.outputs)
        several = isinstance(value, (tuple, list))
        if several and (n_out > 1 or (len(value) == 1 and isinstance(value[0], np.ndarray))):
            values = list(value)
        else:  # one array (for one output, a list of numbers is one array too)
            values = [value]
        if len(values) != n_out:
            got = f"a {type(value).__name__} of {len(value)} arrays" if several else "one array"
            raise SimulatorError(
                f"the kernel of op {call.op_name!r} ({call.op_type}) returned {got}, but the op has {n_out} outputs",
                {"outputs": ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in call.outputs)},
                "return a tuple with one array per entry of call.outputs, in order",
                status=lib.LNN_SIM_E_EXTERNAL, op_name=call.op_name)
        out = []
        for k, (spec, raw) in enumerate(zip(call.outputs, values)):
            result = np.asarray(raw)
            if result.shape != spec.shape or result.dtype != spec.dtype:
                which = "the wrong tensor" if n_out == 1 else f"the wrong tensor for output {k} ({spec.name!r})"
                fix = "call.output" if n_out == 1 else f"call.outputs[{k}]"
                raise SimulatorError(
                    f"the kernel of op {call.op_name!r} ({call.op_type}) returned {which}",
                    {"expected": f"{spec.dtype} {spec.shape}", "actual": f"{result.dtype} {result.shape}"},
                    f"return exactly {fix}'s shape and dtype (np.asarray(y, dtype={fix}.dtype))",
                    status=lib.LNN_SIM_E_EXTERNAL, op_name=call.op_name)
            out.append(np.ascontiguousarray(result))
        return out

    def _where(self) -> str:
        return f" '{self.path}'" if self.path else ""

    def _error(self, status: int, headline: str, op_name: str | None) -> Exception:
        details = {"status": f"{STATUS_NAMES.get(status, 'unknown')} ({status})"}
        if status in _FILE_ERRORS:
            return ModelFileError(headline, details, "re-run `lnn pack`; if the file was copied, compare its size "
                                  "with the original", path=self.path, node=op_name, status=status)
        return SimulatorError(headline, details, "check the inputs against Simulator.inputs",
                              status=status, op_name=op_name)

    def _spec(self, t: int) -> TensorSpec:
        d = ffi.new("lnn_sim_tensor_desc *")
        lib.lnn_sim_tensor_info(self._model, t, d)
        exp = None if d.exponent == -(2 ** 31) else int(d.exponent)
        return TensorSpec(t, ffi.string(d.name).decode("utf-8", "replace"), _DTYPES[d.dtype],
                          tuple(int(d.dims[i]) for i in range(d.rank)), exp, _REGIONS[d.region], int(d.offset),
                          int(d.size))

    def _read(self, spec: TensorSpec) -> np.ndarray:
        out = np.empty(spec.shape, dtype=spec.dtype)
        lib.lnn_sim_get_tensor(self._model, spec.index, ffi.from_buffer(out), out.nbytes)
        return out

    # -- integer boundary ---------------------------------------------------------------------------
    def _consumers(self, tensor: int) -> list[int]:
        return [i for i, ins in enumerate(self._op_inputs) if tensor in ins]

    def _is_index(self, spec: TensorSpec) -> bool:
        """A graph input of integers (an embedding's token ids, which no quantize op reads): fed as it is."""
        return spec.dtype.kind in "iu" and any(spec.index == s.index for s in self.inputs)

    def _boundary(self) -> tuple[dict[int, TensorSpec], dict[int, TensorSpec]]:
        """Quantize ops fed by graph inputs (op -> its int8 output) and dequantize ops writing graph outputs
        (op -> its integer input), for :meth:`run` with ``integer=True``. Integer graph inputs (token ids) have no
        quantize op: they are fed as they are."""
        quants: dict[int, TensorSpec] = {}
        for spec in self.inputs:
            if self._is_index(spec):
                continue
            users = self._consumers(spec.index)
            if len(users) != 1 or self.op_types[users[0]] != lib.LNN_SIM_OP_QUANT:
                raise SimulatorError(
                    f"graph input {spec.name!r} of the model{self._where()} is not quantized by one quantize op, so "
                    "it has no integer form", {"read by": ", ".join(self.op_names[u] for u in users) or "nothing"},
                    "feed the float input (without --int)", status=lib.LNN_SIM_E_INPUT, op_name=None)
            quants[users[0]] = self.tensors[self._op_outputs[users[0]][0]]
        dequants: dict[int, TensorSpec] = {}
        for spec in self.outputs:
            for i, outs in enumerate(self._op_outputs):
                if spec.index in outs and self.op_types[i] == lib.LNN_SIM_OP_DEQUANT:
                    dequants[i] = self.tensors[self._op_inputs[i][0]]
        return quants, dequants

    @property
    def int_inputs(self) -> list[TensorSpec]:
        """The integer tensors :meth:`run` takes with ``integer=True``, one per graph input: what its input quantize
        op writes, or the input itself for integer inputs (token ids)."""
        quants, _ = self._boundary()
        by_input = {self._op_inputs[op][0]: spec for op, spec in quants.items()}
        return [by_input.get(s.index, s) for s in self.inputs]

    @property
    def int_outputs(self) -> list[TensorSpec]:
        """The tensors :meth:`run` returns with ``integer=True``: each graph output, or the integer
        input of the dequantize op that writes it."""
        _, dequants = self._boundary()
        by_output = {self._op_outputs[op][0]: spec for op, spec in dequants.items()}
        return [by_output.get(spec.index, spec) for spec in self.outputs]

    def _coerce(self, spec: TensorSpec, value: Any, what: str) -> np.ndarray:
        """``value`` as the array input ``spec`` takes: exactly its shape and dtype; an integer input (token ids)
        takes any integer dtype whose values fit (int64 from torch is narrowed), never floats."""
        if (type(value) is np.ndarray and value.dtype == spec.dtype and value.shape == spec.shape
                and value.flags.c_contiguous):  # the common case, checked first: a streamed frame costs microseconds
            return value
        arr = np.asarray(value)
        if arr.shape == spec.shape and self._is_index(spec) and arr.dtype != spec.dtype:
            if arr.dtype.kind not in "iu":
                raise SimulatorError(
                    f"{what}input {spec.name!r} of the model{self._where()} takes integers (token ids), not "
                    f"{arr.dtype}", {"expected": f"integers (int64 or {spec.dtype}) {spec.shape}",
                                     "actual": f"{arr.dtype} {arr.shape}"},
                    "feed the token ids as an integer array (np.int64, e.g. np.load of an int64 .npy); float values "
                    "are not indices", status=lib.LNN_SIM_E_INPUT, op_name=None, input=spec.name,
                    expected=str(spec.dtype), actual=str(arr.dtype))
            info = np.iinfo(spec.dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise SimulatorError(
                    f"{what}input {spec.name!r} of the model{self._where()} holds values beyond {spec.dtype}",
                    {"limit": f"{info.min}..{info.max}", "actual": f"{arr.min()}..{arr.max()}"},
                    "token ids are row numbers of the embedding table", status=lib.LNN_SIM_E_INPUT, op_name=None,
                    input=spec.name, limit=(int(info.min), int(info.max)), actual=(int(arr.min()), int(arr.max())))
            arr = arr.astype(spec.dtype)
        if arr.shape != spec.shape or arr.dtype != spec.dtype:
            raise SimulatorError(
                f"{what}input {spec.name!r} of the model{self._where()} does not match",
                {"expected": f"{spec.dtype} {spec.shape}", "actual": f"{arr.dtype} {arr.shape}"},
                f"convert with np.asarray(x, dtype=np.{spec.dtype.name}).reshape{spec.shape}",
                status=lib.LNN_SIM_E_INPUT, op_name=None, input=spec.name, expected=str(spec.dtype),
                actual=str(arr.dtype))
        return np.ascontiguousarray(arr)

    def _check_inputs(self, specs: Sequence[TensorSpec], inputs: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
        if len(inputs) != len(specs):
            raise SimulatorError(f"the model{self._where()} takes {len(specs)} {what}inputs, got {len(inputs)}",
                                 {"inputs": ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in specs)},
                                 "pass one array per graph input", status=lib.LNN_SIM_E_INPUT, op_name=None)
        return [self._coerce(spec, value, what) for spec, value in zip(specs, inputs)]

    def run(self, inputs: Sequence[np.ndarray], *, dump: bool = False, integer: bool = False
            ) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Run the model once.

        :param inputs: one array per graph input, with exactly the model's shape and dtype (an integer input, an
            embedding's token ids, takes any integer dtype whose values fit: int64 from torch is narrowed to the
            model's int32; a float array is refused); with ``integer=True`` one array per :attr:`int_inputs` entry
            instead.
        :param dump: also return ``{tensor name: array}`` of the graph inputs and of every op output,
            captured right after the op ran (integers as int8/16/32 arrays, float tensors as float32).
        :param integer: skip the graph's input quantize and output dequantize ops: take the int8 tensors the
            quantize ops would write, return the integer tensors the dequantize ops would read.
        :returns: the outputs, or ``(outputs, dump)`` with ``dump=True``.
        :raises SimulatorError: wrong input count, shape or dtype, or an op failed.
        """
        if integer:
            return self._run_integer(inputs, dump)
        for spec, arr in zip(self.inputs, self._check_inputs(self.inputs, inputs, "")):
            lib.lnn_sim_set_tensor(self._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
        dumped: dict[str, np.ndarray] = {}
        if dump:
            for spec in self.inputs:
                dumped[spec.name] = self._read(spec)
            for i, name in enumerate(self.op_names):
                status = lib.lnn_sim_invoke_op(self._model, i, self._msg, lib.LNN_SIM_MAX_MSG)
                self._check(status, name)
                for t in self._op_outputs[i]:
                    dumped[self.tensors[t].name] = self._read(self.tensors[t])
        else:
            self._check(lib.lnn_sim_invoke(self._model, self._msg, lib.LNN_SIM_MAX_MSG), None)
        outputs = [self._read(spec) for spec in self.outputs]
        return (outputs, dumped) if dump else outputs

    def run_batch(self, inputs: Sequence[np.ndarray], *, threads: int = 1, integer: bool = False
                  ) -> list[np.ndarray]:
        """Run the model on a batch of rows, in parallel on ``threads`` threads.

        A row is one input of the model's own shape: for a model input of shape ``(b, *rest)`` the batch array has
        shape ``(N * b, *rest)`` (``N`` rows; every graph input the same ``N``). The outputs come back the same
        way, ``(N * b_out, *rest_out)``, row ``i`` of each at ``[i * b_out:(i + 1) * b_out]``. Each row's result
        is bit-identical to :meth:`run` on that row alone. The whole batch goes to C in one call (the GIL is
        released), where ``threads`` POSIX threads take the rows in chunks from a shared counter (a thread that
        starts late or shares its core takes fewer), each on its own copy of the arenas and scratch (made on first
        use and kept with the model; the weights are shared).
        A model with plugin ops runs on one thread (their kernels are Python), as does a build without threads.

        :param threads: threads to use (at most one per row); 1 runs in the calling thread.
        :param integer: as in :meth:`run`: the rows of :attr:`int_inputs` in, of :attr:`int_outputs` out.
        :raises SimulatorError: wrong input count, dtype or shape, or a row failed (the error names the first
            failing row as ``.row``).
        :raises ConfigError: ``threads`` is not a positive integer.
        """
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ConfigError(f"Simulator.run_batch threads must be a positive integer, got {threads!r}", {},
                              "pass threads=os.cpu_count() or a smaller number", option="threads", value=threads,
                              valid="int >= 1")
        specs = self.int_inputs if integer else self.inputs
        out_specs = self.int_outputs if integer else self.outputs
        arrays, rows = self._batch_inputs(specs, inputs)
        outputs = [np.empty((rows * s.shape[0], *s.shape[1:]) if s.shape else (rows,), dtype=s.dtype)
                   for s in out_specs]
        in_ops, out_ops, skip = [-1] * len(specs), [-1] * len(out_specs), ffi.NULL
        if integer:  # the quantize ops' outputs are written where they would run, the dequantize inputs read there
            quants, dequants = self._boundary()
            at_quant = {spec.index: op for op, spec in quants.items()}
            at_dequant = {spec.index: op for op, spec in dequants.items()}
            in_ops = [at_quant.get(s.index, -1) for s in specs]
            out_ops = [at_dequant.get(s.index, -1) for s in out_specs]
            skip = ffi.new("uint8_t[]", [int(i in quants or i in dequants) for i in range(len(self.op_names))] or [0])
        ins = ffi.new("lnn_sim_binding[]", max(len(specs), 1))
        outs = ffi.new("lnn_sim_binding[]", max(len(out_specs), 1))
        keep = []
        for binding, spec, op, arr in [*zip(ins, specs, in_ops, arrays), *zip(outs, out_specs, out_ops, outputs)]:
            buf = ffi.from_buffer(arr)
            keep.append(buf)
            binding.tensor, binding.op, binding.data = spec.index, op, ffi.cast("uint8_t *", buf)
        failed = ffi.new("int64_t *")
        status = lib.lnn_sim_run_batch(self._model, rows, int(threads), len(specs), ins, len(out_specs), outs, skip,
                                       failed, self._msg, lib.LNN_SIM_MAX_MSG)
        try:
            self._check(status, None)
        except SimulatorError as exc:
            if int(failed[0]) < 0:
                raise
            raise self._row_error(int(failed[0]), exc) from exc
        return outputs

    def profile(self, inputs: Sequence[np.ndarray], *, repeat: int = 10) -> list[OpTime]:
        """Time every op of the model on one input, for finding what a forward spends its time on.

        The model runs ``repeat`` times on ``inputs`` (as :meth:`run` takes them), all ops inside C, each op timed
        with the monotonic clock around its kernel; the result has one entry per op in run order, each with the
        mean time of that op over the runs. The outputs are the ones :meth:`run` gives (the kernels are the same).

        :raises ConfigError: ``repeat`` is not a positive integer.
        :raises SimulatorError: as :meth:`run`.
        """
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ConfigError(f"Simulator.profile repeat must be a positive integer, got {repeat!r}", {},
                              "pass repeat=10", option="repeat", value=repeat, valid="int >= 1")
        arrays = self._check_inputs(self.inputs, inputs, "")
        ns = ffi.new("uint64_t[]", max(len(self.op_names), 1))
        for _ in range(int(repeat)):  # the inputs again each time: the memory plan may reuse their bytes
            for spec, arr in zip(self.inputs, arrays):
                lib.lnn_sim_set_tensor(self._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
            self._check(lib.lnn_sim_invoke_timed(self._model, ns, self._msg, lib.LNN_SIM_MAX_MSG), None)
        kinds = {getattr(lib, n): n[len("LNN_SIM_OP_"):] for n in dir(lib) if n.startswith("LNN_SIM_OP_")}
        macs = self.op_macs
        return [OpTime(name, self._externals[i].op_type if i in self._externals else kinds.get(code, str(code)),
                       macs[name], ns[i] / 1e3 / repeat)
                for i, (name, code) in enumerate(zip(self.op_names, self.op_types))]

    def _batch_inputs(self, specs: Sequence[TensorSpec], inputs: Sequence[np.ndarray]
                      ) -> tuple[list[np.ndarray], int]:
        if len(inputs) != len(specs):
            raise SimulatorError(f"the model{self._where()} takes {len(specs)} inputs, got {len(inputs)}",
                                 {"inputs": ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in specs)},
                                 "pass one batch array per graph input", status=lib.LNN_SIM_E_INPUT, op_name=None)
        arrays, counts = [], []
        for spec, value in zip(specs, inputs):
            arr = np.asarray(value)
            b = spec.shape[0] if spec.shape else 1
            ok = (arr.ndim == max(len(spec.shape), 1) and tuple(arr.shape[1:]) == tuple(spec.shape[1:]) and b > 0
                  and arr.shape[0] % b == 0)
            if not ok:
                rest = ", ".join(str(d) for d in spec.shape[1:])
                raise SimulatorError(
                    f"batch input {spec.name!r} of the model{self._where()} does not match",
                    {"expected": f"{spec.dtype} (N * {b}{', ' + rest if rest else ''}) for N rows of {spec.shape}",
                     "actual": f"{arr.dtype} {arr.shape}"},
                    f"stack the rows along the first axis: np.concatenate(rows).astype(np.{spec.dtype.name})",
                    status=lib.LNN_SIM_E_INPUT, op_name=None)
            # dtype as run() takes it (token ids: any integer dtype whose values fit), on the whole batch at once
            arrays.append(self._coerce(dataclasses.replace(spec, shape=tuple(arr.shape)), arr, "batch "))
            counts.append(arr.shape[0] // b)
        if len(set(counts)) > 1:
            raise SimulatorError(f"the batch inputs of the model{self._where()} have different row counts",
                                 {"rows": ", ".join(f"{s.name}: {c}" for s, c in zip(specs, counts))},
                                 "give every graph input the same number of rows", status=lib.LNN_SIM_E_INPUT,
                                 op_name=None)
        return arrays, counts[0] if counts else 0

    def _row_error(self, row: int, exc: SimulatorError) -> SimulatorError:
        return SimulatorError(f"row {row} of the batch failed on the model{self._where()}", {"cause": exc.headline},
                              "run that row alone with Simulator.run(..., dump=True) to see its tensors",
                              status=getattr(exc, "status", None), op_name=getattr(exc, "op_name", None), row=row)

    def _run_integer(self, inputs: Sequence[np.ndarray], dump: bool
                     ) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, np.ndarray]]:
        quants, dequants = self._boundary()
        int_inputs = self.int_inputs
        arrays = dict(zip((s.index for s in int_inputs), self._check_inputs(int_inputs, inputs, "integer ")))
        captured: dict[int, np.ndarray] = {}
        dumped: dict[str, np.ndarray] = {}
        for spec in self.inputs:  # integer inputs (token ids) are read as they are
            if spec.index in arrays:
                arr = arrays[spec.index]
                lib.lnn_sim_set_tensor(self._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
        for i, name in enumerate(self.op_names):
            if i in quants:  # the quantize op's output is written now, where its lifetime starts
                spec = quants[i]
                arr = arrays[spec.index]
                lib.lnn_sim_set_tensor(self._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
            elif i in dequants:  # read before a later op reuses the dequantize input's bytes
                captured[self._op_outputs[i][0]] = self._read(dequants[i])
            else:
                self._check(lib.lnn_sim_invoke_op(self._model, i, self._msg, lib.LNN_SIM_MAX_MSG), name)
            if dump:
                for t in self._op_outputs[i]:
                    if i not in dequants:
                        dumped[self.tensors[t].name] = self._read(self.tensors[t])
        outputs = [captured[s.index] if s.index in captured else self._read(s) for s in self.outputs]
        return (outputs, dumped) if dump else outputs

    # -- recurrent state ---------------------------------------------------------------------------
    @property
    def state_pairs(self) -> dict[str, str]:
        """The model's recurrent state: graph input -> graph output, one pair per initial state of a GRU/LSTM op
        (h0 -> h_n, c0 -> c_n) whose initial state is a graph input (raw integers, or quantized by one quantize op)
        and whose final state is a graph output (raw, or through one dequantize op). Empty for a model without."""
        graph_in = {s.index: s.name for s in self.inputs}
        graph_out = {s.index: s.name for s in self.outputs}
        pairs: dict[str, str] = {}
        for op, code in enumerate(self.op_types):
            for k_in, k_out in _STATE_IO.get(code, ()):
                ins, outs = self._op_inputs[op], self._op_outputs[op]
                if k_in >= len(ins) or k_out >= len(outs):
                    continue
                src, dst = ins[k_in], outs[k_out]
                if src not in graph_in:  # through one quantize op
                    q = [i for i, o in enumerate(self._op_outputs) if src in o]
                    src = self._op_inputs[q[0]][0] if q and self.op_types[q[0]] == lib.LNN_SIM_OP_QUANT else -1
                if dst not in graph_out:  # through one dequantize op
                    d = [i for i in self._consumers(dst) if self.op_types[i] == lib.LNN_SIM_OP_DEQUANT]
                    dst = self._op_outputs[d[0]][0] if d else -1
                if src in graph_in and dst in graph_out:
                    pairs[graph_in[src]] = graph_out[dst]
        return pairs

    def stream(self, state: Mapping[str, np.ndarray] | None = None) -> StatefulRun:
        """A run that carries the model's recurrent state from call to call (:class:`StatefulRun`), from ``state``
        (graph input name -> array, as :attr:`StatefulRun.state` gives it) or zeros.

        :raises SimulatorError: the model has no recurrent state (:attr:`state_pairs` is empty), or ``state`` names
            other inputs."""
        return StatefulRun(self, state)

    def _check(self, status: int, op_name: str | None) -> None:
        pending, self._pending = self._pending, None
        if status != lib.LNN_SIM_OK:
            text = ffi.string(self._msg).decode("utf-8", "replace")
            if isinstance(pending, SimulatorError) or (pending is not None and not isinstance(pending, Exception)):
                raise pending  # the kernel's own SimulatorError, or KeyboardInterrupt / SystemExit
            if op_name is None:  # a whole run: the executor's message names the failing op first
                named = re.match(r"op '([^']*)'", text)
                op_name = named.group(1) if named and named.group(1) in self.op_names else None
            err = self._error(status, f"the simulator failed on the model{self._where()}: {text}", op_name)
            if pending is not None:
                raise err from pending
            raise err


class StatefulRun:
    """A model run chunk by chunk with its recurrent state carried: what a device does frame by frame.

    Built by :meth:`Simulator.stream`. Each :meth:`run` takes the model's other inputs (:attr:`inputs`, in graph
    order), feeds the current :attr:`state` to the state inputs, runs once and keeps the state outputs as the next
    state. Chunks of any length the model was packed for, fed one after another, give the integers of the whole
    sequence at once (the state is the chip's raw state: h int8 at the output exponent, an LSTM's c int16 Q7, or
    their float values through the model's quantize / dequantize ops, which carry them exactly).

    :ivar state: graph input name -> array (the state inputs' dtype and shape); assign to restore a saved state.
    :ivar inputs: the :class:`TensorSpec` of the inputs :meth:`run` takes.
    """

    def __init__(self, sim: Simulator, state: Mapping[str, np.ndarray] | None = None) -> None:
        pairs = sim.state_pairs
        if not pairs:
            raise SimulatorError(
                f"the model{sim._where()} has no recurrent state to carry",
                {"rule": "a GRU/LSTM op whose initial state (h0, c0) is a graph input and whose final state (h_n, "
                         "c_n) is a graph output",
                 "inputs": ", ".join(s.name for s in sim.inputs)},
                "export the recurrent layer with its state as input and output (h0 -> h_n), then pack again",
                status=lib.LNN_SIM_E_INPUT, op_name=None)
        self.sim = sim
        names = [s.name for s in sim.inputs]
        out_names = [s.name for s in sim.outputs]
        self._pairs = [(names.index(i), out_names.index(o)) for i, o in pairs.items()]
        self._state_specs = {i: sim.inputs[names.index(i)] for i in pairs}
        self.inputs = [s for s in sim.inputs if s.name not in pairs]
        self.state: dict[str, np.ndarray] = {}
        self.reset()
        if state is not None:
            unknown = sorted(set(state) ^ set(pairs))
            if unknown:
                raise SimulatorError(
                    f"the state for the model{sim._where()} does not name its state inputs",
                    {"state inputs": ", ".join(f"{n} {s.dtype} {s.shape}" for n, s in self._state_specs.items()),
                     "given": ", ".join(sorted(state)) or "nothing"},
                    "pass the state a StatefulRun gave (its .state, or lnn run --state-out)",
                    status=lib.LNN_SIM_E_INPUT, op_name=None)
            self.state = {k: np.asarray(v) for k, v in state.items()}

    def reset(self) -> None:
        """Back to the zero state."""
        self.state = {n: np.zeros(s.shape, s.dtype) for n, s in self._state_specs.items()}

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one chunk: ``inputs`` one array per :attr:`inputs` entry; returns every graph output (the state
        outputs included) and keeps the new state.

        :raises SimulatorError: as :meth:`Simulator.run` (a state of the wrong shape or dtype names its input)."""
        if len(inputs) != len(self.inputs):
            raise SimulatorError(f"the stream takes {len(self.inputs)} inputs (the state is carried), got "
                                 f"{len(inputs)}", {"inputs": ", ".join(f"{s.name} {s.dtype} {s.shape}"
                                                                         for s in self.inputs)},
                                 "pass one array per input that is not recurrent state", status=lib.LNN_SIM_E_INPUT,
                                 op_name=None)
        sim = self.sim  # the per-call path is lean: a frame of a stream costs microseconds beyond the kernels
        for spec, value in zip(self.inputs, inputs):
            arr = sim._coerce(spec, value, "")
            lib.lnn_sim_set_tensor(sim._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
        names = list(self._state_specs)
        for name in names:
            spec = self._state_specs[name]
            arr = sim._coerce(spec, self.state[name], "state ")
            lib.lnn_sim_set_tensor(sim._model, spec.index, ffi.from_buffer(arr), arr.nbytes)
        sim._check(lib.lnn_sim_invoke(sim._model, sim._msg, lib.LNN_SIM_MAX_MSG), None)
        outputs = [sim._read(spec) for spec in sim.outputs]
        self.state = {name: outputs[o] for (_, o), name in zip(self._pairs, names)}
        return outputs
