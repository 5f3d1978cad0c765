"""Python face of the C int8 simulator (``lnn_backend_csk60xx._sim``, built by ``_sim_build.py``).

:class:`Simulator` loads a model.bin image (the C loader validates it completely first), checks
inputs against the model (count, shape, dtype) before calling C, and turns C status codes into
exceptions: damaged or inconsistent files raise :class:`~lnn_core.errors.ModelFileError`, run-time
failures :class:`~lnn_core.errors.SimulatorError`, both carrying the C message and ``.status``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lnn_core.errors import ModelFileError, SimulatorError

from ._sim import ffi, lib

__all__ = ["Simulator", "TensorSpec", "STATUS_NAMES"]

log = logging.getLogger("lnn.backend.simulator")

_DTYPES = {lib.LNN_SIM_DT_FLOAT32: np.dtype("<f4"), lib.LNN_SIM_DT_INT8: np.dtype("i1"),
           lib.LNN_SIM_DT_UINT8: np.dtype("u1"), lib.LNN_SIM_DT_INT16: np.dtype("<i2"),
           lib.LNN_SIM_DT_INT32: np.dtype("<i4"), lib.LNN_SIM_DT_INT64: np.dtype("<i8")}
_REGIONS = {lib.LNN_SIM_REGION_FLASH: "flash", lib.LNN_SIM_REGION_PSRAM: "psram",
            lib.LNN_SIM_REGION_SHARE: "share_mem"}

#: status code -> name (``LNN_SIM_E_<REASON>``)
STATUS_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("LNN_SIM_E_") or n == "LNN_SIM_OK"}
_FILE_ERRORS = {lib.LNN_SIM_E_TRUNCATED, lib.LNN_SIM_E_MAGIC, lib.LNN_SIM_E_VERSION, lib.LNN_SIM_E_TARGET,
                lib.LNN_SIM_E_CRC, lib.LNN_SIM_E_SECTION, lib.LNN_SIM_E_STRING, lib.LNN_SIM_E_TENSOR,
                lib.LNN_SIM_E_OP, lib.LNN_SIM_E_ATTR, lib.LNN_SIM_E_SHAPE, lib.LNN_SIM_E_PLAN, lib.LNN_SIM_E_LIMIT}


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


class Simulator:
    """The C int8 simulator on one model.bin image.

    :param model: the model.bin bytes (copied by the loader).
    :param path: file name used in error messages.
    :raises ModelFileError: the image is damaged or inconsistent (``.status`` holds the C code).
    """

    def __init__(self, model: bytes | bytearray | memoryview, *, path: str | None = None) -> None:
        self.path = path
        data = bytes(model)
        out = ffi.new("lnn_sim_model **")
        msg = ffi.new("char[]", lib.LNN_SIM_MAX_MSG)
        status = lib.lnn_sim_load(data, len(data), out, msg, lib.LNN_SIM_MAX_MSG)
        if status != lib.LNN_SIM_OK:
            text = ffi.string(msg).decode("utf-8", "replace")
            raise self._error(status, f"cannot load packed model{self._where()}: {text}", None)
        self._model = ffi.gc(out[0], lib.lnn_sim_free)
        self._msg = msg
        self.tensors = [self._spec(t) for t in range(lib.lnn_sim_num_tensors(self._model))]
        self.inputs = [self.tensors[lib.lnn_sim_input_index(self._model, i)]
                       for i in range(lib.lnn_sim_num_inputs(self._model))]
        self.outputs = [self.tensors[lib.lnn_sim_output_index(self._model, i)]
                        for i in range(lib.lnn_sim_num_outputs(self._model))]
        self.op_names = [ffi.string(lib.lnn_sim_op_name(self._model, i)).decode("utf-8", "replace")
                         for i in range(lib.lnn_sim_num_ops(self._model))]
        self._op_outputs = []
        idx = ffi.new("int32_t[8]")
        count = ffi.new("int32_t *")
        for i in range(len(self.op_names)):
            lib.lnn_sim_op_outputs(self._model, i, idx, 8, count)
            self._op_outputs.append([idx[k] for k in range(min(count[0], 8))])
        log.debug("loaded %d ops, %d tensors", len(self.op_names), len(self.tensors))

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

    def run(self, inputs: Sequence[np.ndarray], *, dump: bool = False
            ) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Run the model once.

        :param inputs: one array per graph input, with exactly the model's shape and dtype.
        :param dump: also return ``{tensor name: array}`` of the graph inputs and of every op output,
            captured right after the op ran (integers as int8/16/32 arrays, float tensors as float32).
        :returns: the outputs, or ``(outputs, dump)`` with ``dump=True``.
        :raises SimulatorError: wrong input count, shape or dtype, or an op failed.
        """
        if len(inputs) != len(self.inputs):
            raise SimulatorError(f"the model{self._where()} takes {len(self.inputs)} inputs, got {len(inputs)}",
                                 {"inputs": ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in self.inputs)},
                                 "pass one array per graph input", status=lib.LNN_SIM_E_INPUT, op_name=None)
        for spec, value in zip(self.inputs, inputs):
            arr = np.asarray(value)
            if arr.shape != spec.shape or arr.dtype != spec.dtype:
                raise SimulatorError(
                    f"input {spec.name!r} of the model{self._where()} does not match",
                    {"expected": f"{spec.dtype} {spec.shape}", "actual": f"{arr.dtype} {arr.shape}"},
                    f"convert with np.asarray(x, dtype=np.{spec.dtype.name}).reshape{spec.shape}",
                    status=lib.LNN_SIM_E_INPUT, op_name=None)
            arr = np.ascontiguousarray(arr)
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

    def _check(self, status: int, op_name: str | None) -> None:
        if status != lib.LNN_SIM_OK:
            text = ffi.string(self._msg).decode("utf-8", "replace")
            raise self._error(status, f"the simulator failed on the model{self._where()}: {text}", op_name)
