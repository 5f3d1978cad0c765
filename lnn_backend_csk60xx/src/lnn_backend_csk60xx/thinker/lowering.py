"""How one IR op becomes a thinker operator record: :class:`ThinkerLowering` (``OpDef.lowerings["thinker"]``).

Each op family declares its own lowering next to its model.bin one (one op, one place); this module holds the
dataclass and the shared pieces: the attribute structs of spec 3.4 and the weight re-layouts of spec 6 with
their inverses (the decoder uses those to read a package back into lnn's IR).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node

__all__ = ["ThinkerLowering", "Problem", "DecodedOp", "QUANT_LUNA", "conv2d_attrs", "conv1d_attrs", "deconv_attrs",
           "pool_attrs", "relayout_conv", "restore_conv", "relayout_deconv", "restore_deconv", "relayout_linear",
           "restore_linear", "read_conv2d_attrs", "read_conv1d_attrs", "read_deconv_attrs", "read_pool_attrs",
           "LAYOUT_NCHW", "LAYOUT_NCWH", "LAYOUT_NHWC8", "LAYOUT_NHWC16", "LAYOUT_WHCN"]

QUANT_LUNA = 4  # linger's "luna_quant" (no VENUS kernel reads it)
LAYOUT_NCHW, LAYOUT_NCWH, LAYOUT_NHWC8, LAYOUT_NHWC16, LAYOUT_WHCN = 0, 2, 3, 5, 6

#: a constant the lowering adds (clip bounds, normalised slice parameters): array and its exponent
NewConst = np.ndarray


@dataclass(frozen=True)
class Problem:
    """One way a node breaks the runtime's contract: the rule id, what is wrong, the limit, the value, a hint."""

    rule: str
    what: str
    limit: Any
    actual: Any
    hint: str


@dataclass
class DecodedOp:
    """What an op's ``read`` hook gets from the decoder: the record's attribute bytes and the decoded input and
    output tensors (:class:`~.package.Tensor`, constants in stored form). It returns the IR attributes and the
    IR form of constant inputs (input index -> array) where the stored form differs."""

    attrs: bytes
    inputs: list[Any]
    outputs: list[Any]


@dataclass(frozen=True)
class ThinkerLowering:
    """How an op is written into a thinker package (spec 3) and read back.

    :param name: the runtime's op type name (case-sensitive, spec 3.1).
    :param attrs: ``attrs(node, graph) -> bytes``: the attribute struct (None: none, 0 bytes).
    :param inputs: ``inputs(node, graph) -> [name or array]``: the record's inputs in the runtime's order; an array
        is a constant the lowering adds (None: the node's inputs as they are).
    :param relayout: input index -> ``relayout(array, node, graph) -> (stored array, layout code)`` (spec 6).
    :param dma: the kernel takes its constants through the DMA prefetch pipeline (``getWeightData``, spec 4.4).
    :param workspace: ``workspace(node, graph) -> bytes`` of share-memory scratch the kernel needs with every
        activation in share-memory (0: the record lists none); None: the runtime forbids one (CHECK_EQ).
    :param check: ``check(node, graph) -> [Problem]``: the runtime's contract for this op beyond lnn's own rules.
    :param read: ``read(DecodedOp) -> (ir attrs, {input index: IR-form constant})`` for the decoder; None: no
        attributes, constants as stored.
    :param n_inputs: how many of the record's inputs the IR node takes (None: all).
    :param max_rank: the kernel reads only this many trailing axes of input 0 and output 0: the format's rewrite
        merges the leading ones into one with reshapes (no data moves), e.g. rank 3 for LinearInt and LayerNormInt.
    :param workspace_repeats: the record lists its workspace id this many more times after the workspace, for a
        wrapper that reads temps it never uses (the VENUS GRU wrapper reads four descriptors after its workspace).
    :param dma_last: the DMA transfer carries only the record's last this many inputs (the LSTM: its weights and
        biases; lengths and initial state before them are read in place); None: every constant input.
    :param ir_order: ``ir_order(n) -> record input positions in the IR node's input order`` for a record of ``n``
        inputs, for the decoder (None: the same order).
    """

    name: str
    attrs: Callable[[Node, Graph], bytes] | None = None
    inputs: Callable[[Node, Graph], Sequence[str | NewConst]] | None = None
    relayout: Mapping[int, Callable[[np.ndarray, Node, Graph], tuple[np.ndarray, int]]] = field(default_factory=dict)
    dma: bool = False
    workspace: Callable[[Node, Graph], int] | None = None
    check: Callable[[Node, Graph], list[Problem]] | None = None
    read: Callable[[DecodedOp], tuple[dict[str, Any], dict[int, np.ndarray]]] | None = None
    n_inputs: int | None = None
    max_rank: int | None = None
    workspace_repeats: int = 0
    dma_last: int | None = None
    ir_order: Callable[[int], Sequence[int]] | None = None


def _a(n: int, k: int) -> int:
    return (n + k - 1) // k * k


# -- attribute structs (spec 3.4) ----------------------------------------------------------------------------------

def conv2d_attrs(node: Node) -> bytes:
    k, s = node.attrs["kernel_shape"], node.attrs.get("strides", [1, 1])
    p, d = node.attrs.get("pads", [0, 0, 0, 0]), node.attrs.get("dilations", [1, 1])
    return struct.pack("<3Bx3H6B3BxhhBB", d[0], d[1], 0, k[0], k[1], 0, p[0], p[1], p[2], p[3], 0, 0,
                       s[0], s[1], 0, node.attrs.get("group", 1), 0, QUANT_LUNA, int(node.attrs.get("act_type", 0)))


def read_conv2d_attrs(raw: bytes) -> dict[str, Any]:
    d0, d1, _, k0, k1, _, p0, p1, p2, p3, _, _, s0, s1, _, group, _, _, act = struct.unpack_from("<3Bx3H6B3BxhhBB", raw)
    out = {"kernel_shape": [k0, k1], "strides": [s0, s1], "pads": [p0, p1, p2, p3], "dilations": [d0, d1],
           "group": group}
    if act:
        out["act_type"] = act
    return out


def conv1d_attrs(node: Node) -> bytes:
    p = node.attrs.get("pads", [0, 0])
    return struct.pack("<H2BBxhhBB", node.attrs["kernel_shape"][0], p[0], p[1], node.attrs.get("strides", [1])[0],
                       node.attrs.get("group", 1), 0, QUANT_LUNA, int(node.attrs.get("act_type", 0)))


def read_conv1d_attrs(raw: bytes) -> dict[str, Any]:
    k, p0, p1, s, group, _, _, act = struct.unpack_from("<H2BBxhhBB", raw)
    out = {"kernel_shape": [k], "strides": [s], "pads": [p0, p1], "dilations": [1], "group": group}
    if act:
        out["act_type"] = act
    return out


def deconv_attrs(node: Node) -> bytes:
    k, s = node.attrs["kernel_shape"], node.attrs.get("strides", [1, 1])
    p, d = node.attrs.get("pads", [0, 0, 0, 0]), node.attrs.get("dilations", [1, 1])
    op = node.attrs.get("output_padding", [0, 0])
    return struct.pack("<3Bx3H6B6B3BxhhBB", d[0], d[1], 0, k[0], k[1], 0, p[0], p[1], p[2], p[3], 0, 0,
                       op[0], op[1], 0, 0, 0, 0, s[0], s[1], 0, node.attrs.get("group", 1), 0, QUANT_LUNA,
                       int(node.attrs.get("act_type", 0)))


def read_deconv_attrs(raw: bytes) -> dict[str, Any]:
    (d0, d1, _, k0, k1, _, p0, p1, p2, p3, _, _, o0, o1, _, _, _, _, s0, s1, _, group, _, _,
     act) = struct.unpack_from("<3Bx3H6B6B3BxhhBB", raw)
    out = {"kernel_shape": [k0, k1], "strides": [s0, s1], "pads": [p0, p1, p2, p3], "dilations": [d0, d1],
           "group": group, "output_padding": [o0, o1]}
    if act:
        out["act_type"] = act
    return out


def pool_attrs(node: Node, quant_type: int = 0) -> bytes:
    k, s = node.attrs["kernel_shape"], node.attrs.get("strides", [1, 1])
    p = node.attrs.get("pads", [0, 0, 0, 0])
    return struct.pack("<B2B2B4BxHBx", int(node.attrs.get("ceil_mode", 0)), k[0], k[1], s[0], s[1], *p, 0, quant_type)


def read_pool_attrs(raw: bytes) -> dict[str, Any]:
    ceil, k0, k1, s0, s1, p0, p1, p2, p3, _, _ = struct.unpack_from("<B2B2B4BxHBx", raw)
    out = {"kernel_shape": [k0, k1], "strides": [s0, s1], "pads": [p0, p1, p2, p3]}
    if ceil:
        out["ceil_mode"] = ceil
    return out


# -- weight re-layouts (spec 6) ------------------------------------------------------------------------------------

def _pack_oi(w: np.ndarray) -> np.ndarray:
    """[O, I, K] -> (A2(O)/2, K, A8(I)/8, 2, 8), zero-padded."""
    o, i, k = w.shape
    p = np.zeros((_a(o, 2), _a(i, 8), k), dtype=w.dtype)
    p[:o, :i] = w
    return np.ascontiguousarray(p.reshape(_a(o, 2) // 2, 2, _a(i, 8) // 8, 8, k).transpose(0, 4, 2, 1, 3))


def _unpack_oi(stored: np.ndarray, o: int, i: int) -> np.ndarray:
    o2, k, ib, _, _ = stored.shape
    full = stored.transpose(0, 3, 2, 4, 1).reshape(o2 * 2, ib * 8, k)
    return np.ascontiguousarray(full[:o, :i])


def _pack_dw(w: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """[C, 1, kh, kw] -> (A16(C)/16, kh, kw, 16), zero-padded."""
    c = w.shape[0]
    p = np.zeros((_a(c, 16), kh, kw), dtype=w.dtype)
    p[:c] = w.reshape(c, kh, kw)
    return np.ascontiguousarray(p.reshape(_a(c, 16) // 16, 16, kh, kw).transpose(0, 2, 3, 1))


def _depthwise(node: Node, w: np.ndarray) -> bool:
    g = node.attrs.get("group", 1)
    return g > 1 and g == w.shape[0] and w.shape[1] == 1


def relayout_conv(w: np.ndarray, node: Node, graph: Graph) -> tuple[np.ndarray, int]:
    """2-D / 1-D conv weight [O, I, kh(, kw)] in the engine's order (spec 6)."""
    kh, kw = (w.shape[2], w.shape[3]) if w.ndim == 4 else (1, w.shape[2])
    if _depthwise(node, w):
        return _pack_dw(w, kh, kw), LAYOUT_NHWC16
    return _pack_oi(w.reshape(w.shape[0], w.shape[1], kh * kw)), LAYOUT_NHWC8


def restore_conv(stored: np.ndarray, channels: int, in_channels: int, kernel: Sequence[int], group: int) -> np.ndarray:
    """The inverse of :func:`relayout_conv`: the IR weight [O, I/group, *kernel]."""
    if group > 1 and stored.ndim == 4:
        kh, kw = stored.shape[1], stored.shape[2]
        full = stored.transpose(0, 3, 1, 2).reshape(-1, kh, kw)[:channels]
        return np.ascontiguousarray(full.reshape(channels, 1, *kernel))
    return _unpack_oi(stored, channels, in_channels // group).reshape(channels, in_channels // group, *kernel)


def relayout_deconv(w: np.ndarray, node: Node, graph: Graph) -> tuple[np.ndarray, int]:
    """Transposed conv weight [I, O, kh, kw]: to [O, I], kernel flipped, then the conv packing, 6-D."""
    i, o, kh, kw = w.shape
    conv = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]).reshape(o, i, kh * kw)
    packed = _pack_oi(conv)
    return packed.reshape(packed.shape[0], kh, kw, *packed.shape[2:]), LAYOUT_NHWC8


def restore_deconv(stored: np.ndarray, in_channels: int, out_channels: int) -> np.ndarray:
    o2, kh, kw, ib, _, _ = stored.shape
    conv = _unpack_oi(stored.reshape(o2, kh * kw, ib, 2, 8), out_channels, in_channels).reshape(
        out_channels, in_channels, kh, kw)
    return np.ascontiguousarray(conv[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def relayout_linear(w: np.ndarray, node: Node, graph: Graph) -> tuple[np.ndarray, int]:
    """Linear weight [O, I] -> [I, O] (no padding)."""
    return np.ascontiguousarray(w.T), LAYOUT_NCWH


def restore_linear(stored: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(stored.T)
