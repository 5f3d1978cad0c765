"""``PReluInt`` on the CSK60xx backend: its op definition (dialect schema, shape rule, simulator kernel).

The IR writer (:func:`lnn_ops_example.prelu.write_ir`) emits ``PReluInt(x, slope) -> y``. This module
teaches the backend the rest, through the same registry the backend's own op families use
(``lnn_register_target_ops``):

- :func:`op_def`: the :class:`~lnn_backend_csk60xx.ops.OpDef` of ``PReluInt`` (domain ``thinker``, two
  inputs, ``scale_x``/``scale_w``/``scale_o`` from the exponents of ``x``, ``slope`` and ``y``, the
  bit-width attributes and ``platform_quant``, :func:`infer` and :func:`kernel`); with it
  ``write_onnx``/``read_onnx`` accept the op and the packer writes it as an external op.
- :func:`infer`: its shape rule. ``x`` int8 of rank >= 1, ``slope`` an int8 initializer with 1 value
  or one per channel (axis 1; 1 for a rank-1 input); ``y`` has the shape and exponent of ``x``. A file
  whose ``scale_o`` differs from ``scale_x`` is refused when it is packed.
- :func:`kernel`: the simulator kernel, :func:`prelu_int` on the op's tensors (numpy, int64).

Only :func:`op_def` imports the backend; the plugin registers it when the backend is installed
(:func:`backend_installed`). The op's hardware rules come through this package's ``lnn_op_rules``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError

from . import IR_OP

__all__ = ["OP_TYPE", "TARGET", "backend_installed", "op_def", "infer", "prelu_int", "kernel"]

OP_TYPE = IR_OP
TARGET = "csk60xx"
_DOMAIN = "thinker"


def backend_installed() -> bool:
    """Whether ``lnn_backend_csk60xx`` can be imported (its ``OpDef`` type is needed to register)."""
    return importlib.util.find_spec("lnn_backend_csk60xx") is not None


def op_def() -> Any:
    """The CSK60xx ``OpDef`` of ``PReluInt``: schema, :func:`infer` as its shape rule, :func:`kernel`."""
    from lnn_backend_csk60xx.ops import AttrSpec, OpDef
    from lnn_backend_csk60xx.ops.base import PLATFORM

    attrs = {
        "data_bits": AttrSpec("int", default=8, choices=(8,)),
        "parameter_bits": AttrSpec("int", default=8, choices=tuple(range(2, 9))),
        "o_bits": AttrSpec("int", default=8, choices=(8,)),
        **PLATFORM,
    }
    scales = {"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)}
    return OpDef(OP_TYPE, _DOMAIN, (2, 2), infer, attrs=attrs, scales=scales, kernel=kernel)


def infer(c: Any) -> list[Any]:
    """Shape rule of ``PReluInt`` (``c``: the backend's ``InferContext`` bound to the node)."""
    x = c.info(0)
    c.dtype(x, ["int8"], "input")
    if len(x.shape) < 1:
        raise c.fail(f"input {x.name!r} is a scalar", {"rule": "PReluInt input rank must be at least 1"})
    slope = c.info(1)
    c.dtype(slope, ["int8"], "slope")
    values = c.const(1)
    channels = x.shape[1] if len(x.shape) >= 2 else 1
    if values.ndim != 1 or values.size not in (1, channels):
        raise c.fail(f"slope {slope.name!r} has shape {tuple(values.shape)} for an input with {channels} channels",
                     {"rule": "1 slope, or one per channel (axis 1 of the input), as a 1-D initializer",
                      "input shape": x.shape})
    out = c.graph.tensors.get(c.node.outputs[0])
    if out is not None and out.exponent is not None and out.exponent != x.exponent:
        raise c.fail(f"scale_o 2**{out.exponent} differs from scale_x 2**{x.exponent}",
                     {"rule": "PReluInt keeps the scale of its input (scale_o == scale_x)"})
    return [c.out("int8", x.shape, x.exponent)]


def prelu_int(x: np.ndarray, slope: np.ndarray, n_a: int, bits: int = 8) -> np.ndarray:
    """``x`` where ``x >= 0``, else ``SAT_bits(SHR(x * slope[c], n_a))``, channel axis 1, as int64.

    ``SHR`` rounds half up (``(v + 2**(n_a-1)) >> n_a``); ``n_a <= 0`` shifts left, exactly.
    """
    x64 = np.asarray(x).astype(np.int64)
    a = np.asarray(slope).astype(np.int64).reshape(-1)
    a = a.reshape(()) if a.size == 1 else a.reshape((1, a.size) + (1,) * (x64.ndim - 2))
    prod = x64 * a
    neg = (prod + (1 << (n_a - 1))) >> n_a if n_a > 0 else prod << -n_a
    neg = np.clip(neg, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return np.where(x64 >= 0, x64, neg)


def kernel(call: Any) -> np.ndarray:
    """Simulator kernel of ``PReluInt`` (``call``: the backend's ``KernelCall``); returns ``call.output``'s tensor.

    :raises ModelFileError: the packed op's exponents break the op's contract (no slope exponent, or
        an output exponent other than the input's).
    """
    x_spec, a_spec = call.input_specs[0], call.input_specs[1]
    out = call.output
    if a_spec.exponent is None or out.exponent != x_spec.exponent:
        raise ModelFileError(
            f"op {call.op_name!r} ({OP_TYPE}) has inconsistent exponents",
            {"input": x_spec.exponent, "slope": a_spec.exponent, "output": out.exponent,
             "rule": "the slope is quantized and the output keeps the input's exponent"},
            "re-export the model with lnn export", path=None, node=call.op_name)
    bits = 8 * np.dtype(out.dtype).itemsize
    return prelu_int(call.inputs[0], call.inputs[1], a_spec.exponent, bits).astype(out.dtype)

