"""A test-local plugin adding the op ``TestNeg`` (y = SAT8(-x + bias)) to the CSK60xx backend end to end.

It uses only the public registration API: the dialect schema (with its shape rule) through
``lnn_register_exporters`` and the simulator kernel through ``lnn_register_sim_kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnn_core import hookimpl

DOMAIN = "lnn.test"


def infer_neg(c: Any) -> list[Any]:
    x = c.info(0)
    c.dtype(x, ["int8"], "input")
    return [c.out("int8", x.shape, x.exponent)]


def neg_kernel(call: Any) -> np.ndarray:
    bias = int(call.attrs.get("bias", 0))
    return np.clip(-call.inputs[0].astype(np.int32) + bias, -128, 127).astype(call.output.dtype)


@hookimpl
def lnn_register_exporters(registry: Any) -> None:
    from lnn_backend_csk60xx.dialect import AttrSpec, OpSchema

    registry.add_node_writer("csk60xx", "TestNeg", OpSchema(
        DOMAIN, (1, 1), {"bias": AttrSpec("int", default=0)}, {"scale_x": ("in", 0), "scale_o": ("out", 0)},
        infer=infer_neg))


@hookimpl
def lnn_register_sim_kernels(registry: Any) -> None:
    registry.add("TestNeg", neg_kernel)
