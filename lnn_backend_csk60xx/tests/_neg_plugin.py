"""A test-local plugin adding the op ``TestNeg`` (y = SAT8(-x + bias)) to the CSK60xx backend end to end.

It uses only the public registration API: one ``OpDef`` (dialect schema, shape rule, Python simulator
kernel) through ``lnn_register_target_ops``, the hook the backend registers its own op families with.
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


def neg_op() -> Any:
    from lnn_backend_csk60xx.ops import AttrSpec, OpDef

    return OpDef("TestNeg", DOMAIN, (1, 1), infer_neg, attrs={"bias": AttrSpec("int", default=0)},
                 scales={"scale_x": ("in", 0), "scale_o": ("out", 0)}, kernel=neg_kernel)


@hookimpl
def lnn_register_target_ops(registry: Any) -> None:
    registry.add("csk60xx", neg_op())
