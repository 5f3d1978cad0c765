"""Packed sequences through the tracer: ``pack_padded_sequence`` / ``pad_packed_sequence`` as one graph node each.

torch's helpers build a :class:`~torch.nn.utils.rnn.PackedSequence` with operations fx cannot trace (a namedtuple of
tensors checked in Python control flow). ``lnn.init`` keeps each call whole, whatever the spelling
(``torch.nn.utils.rnn.pack_padded_sequence``, ``nn.utils.rnn....``, ``from torch.nn.utils.rnn import ...``, an
alias module), without patching torch: the tracer recognises that an operation is being recorded while one of
the helpers runs (its code object is on the Python stack), records one node calling :func:`pack_padded` /
:func:`pad_packed` with the helper's arguments instead, and answers the helper's own operations with that node:
they add nothing to the graph, and its internal checks (``if batch_sizes.device.type != "cpu"``, ``total_length <
max length``) are answered False, as on real data. A PackedSequence of such proxies entering a module call is
passed as the packing node itself.

The graph then reads ``rnn(pack_padded(x, lengths, batch_first=..., enforce_sorted=...), hx)`` and
``pad_packed(rnn_out[0], batch_first=..., padding_value=..., total_length=...)``; run as a float GraphModule,
the two functions are torch's, so the float model computes what the user wrote.
"""

from __future__ import annotations

import dis
import operator
import sys
from types import FrameType
from typing import Any

import torch
import torch.fx as fx
from torch.nn.utils import rnn as _rnn_utils

__all__ = ["pack_padded", "pad_packed", "PACK_FUNCTIONS", "ARGUMENTS", "call_arguments", "helper_frame",
           "PackedCalls", "HelperProxy"]


def pack_padded(x: torch.Tensor, lengths: Any, batch_first: bool = False,
                enforce_sorted: bool = True) -> _rnn_utils.PackedSequence:
    """``torch.nn.utils.rnn.pack_padded_sequence`` as one graph node (lengths moved to the CPU, as torch wants)."""
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.cpu()
    return _rnn_utils.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)


def pad_packed(sequence: _rnn_utils.PackedSequence, batch_first: bool = False, padding_value: float = 0.0,
               total_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.utils.rnn.pad_packed_sequence`` as one graph node."""
    return _rnn_utils.pad_packed_sequence(sequence, batch_first=batch_first, padding_value=padding_value,
                                          total_length=total_length)


#: the graph functions standing for the helpers
PACK_FUNCTIONS = (pack_padded, pad_packed)

#: the helpers' arguments in order (the graph functions take the same)
ARGUMENTS = {pack_padded: ("input", "lengths", "batch_first", "enforce_sorted"),
             pad_packed: ("sequence", "batch_first", "padding_value", "total_length")}

# the helpers' code objects -> (graph function, the helper's arguments in order)
_HELPERS = {
    _rnn_utils.pack_padded_sequence.__code__: (pack_padded, ARGUMENTS[pack_padded]),
    _rnn_utils.pad_packed_sequence.__code__: (pad_packed, ARGUMENTS[pad_packed]),
}


def call_arguments(node: fx.Node) -> dict[str, Any]:
    """The arguments of a :func:`pack_padded` / :func:`pad_packed` graph node by name."""
    return dict(zip(ARGUMENTS[node.target], node.args)) | dict(node.kwargs)


def helper_frame() -> FrameType | None:
    """The outermost frame of a packed-sequence helper on the current Python stack, else None."""
    found = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _HELPERS:
            found = frame
        frame = frame.f_back
    return found


def _isinstance_call(code: Any) -> tuple[int, int]:
    """The bytecode offsets from loading ``isinstance`` to its call, the first in ``code`` (the interpreter may
    run the call at any instruction in between once it has specialised them); ``(-1, -1)``: none."""
    start = -1
    for ins in dis.get_instructions(code):
        if start < 0 and ins.opname == "LOAD_GLOBAL" and ins.argval == "isinstance":
            start = ins.offset
        if start >= 0 and ins.opname in ("CALL", "CALL_FUNCTION"):
            return start, ins.offset
    return -1, -1


_PACK_CODE = _rnn_utils.pack_padded_sequence.__code__
_PACK_ISINSTANCE = _isinstance_call(_PACK_CODE)


class HelperProxy(fx.Proxy):
    """The tracer's proxy, which two spots of torch's packing helpers see differently from everybody else:

    - ``pack_padded_sequence``'s ``isinstance(lengths, torch.Tensor)`` is told True, so that the helper goes on
      with ``lengths.to(...)`` (an operation the tracer records) rather than ``torch.as_tensor(lengths)``,
      which cannot take a proxy;
    - a proxy standing for an int in a helper (``total_length=x.size(1)``) converts to an int (0) when the helper
      hands it to one of torch's C functions: that call is recorded as the helper's node, never run.
    """

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        frame = sys._getframe(1)
        if frame.f_code is _PACK_CODE and _PACK_ISINSTANCE[0] <= frame.f_lasti <= _PACK_ISINSTANCE[1]:
            return torch.Tensor
        return type(self)

    def __index__(self) -> int:
        if sys._getframe(1).f_code in _HELPERS:
            return 0
        raise TypeError(f"{self.node.name!r} is traced: its value is not known while tracing")


class PackedCalls:
    """The packing calls met while tracing (one per helper frame): what the tracer records for the helpers' own
    operations. ``record`` makes the node on the first operation of a call (the helper's arguments are still
    those it was called with: torch's helpers read them before they reassign any); later operations of the same
    call get that node's proxy (for ``pad_packed``, ``value[i]`` gets the node's output ``i``)."""

    def __init__(self) -> None:
        self._calls: dict[FrameType, fx.Proxy] = {}
        self._items: dict[tuple[FrameType, int], fx.Proxy] = {}
        self._owned: dict[int, fx.Proxy] = {}  # id -> proxy (kept alive, so an id is never reused)

    def record(self, frame: FrameType, make: Any, kind: str, target: Any, args: tuple[Any, ...]) -> fx.Proxy:
        """The proxy for an operation recorded while the helper of ``frame`` runs; ``make(fn, args, kwargs)``
        creates a real node."""
        fn, names = _HELPERS[frame.f_code]
        call = self._calls.get(frame)
        if call is None:
            values = [frame.f_locals.get(n) for n in names]
            n_args = 2 if fn is pack_padded else 1
            if fn is pack_padded and not isinstance(values[1], fx.Proxy):
                from ..errors import TraceError
                raise TraceError(
                    "pack_padded_sequence: the lengths are a constant of the model, not a tensor it is given",
                    {"rule": "the lengths of a packed sequence are data: a tensor computed from forward()'s inputs",
                     "actual": type(values[1]).__name__},
                    "pass the lengths to forward() as an integer tensor and give that to pack_padded_sequence",
                    actual=type(values[1]).__name__)
            call = make(fn, tuple(values[:n_args]), dict(zip(names[n_args:], values[n_args:])))
            self._calls[frame] = call
            self._owned[id(call)] = call
            return call
        if fn is pad_packed and kind == "call_function" and len(args) == 2 and args[0] is call \
                and isinstance(args[1], int):
            item = self._items.get((frame, args[1]))
            if item is None:
                item = self._items[(frame, args[1])] = make(operator.getitem, (call, args[1]), {})
                self._owned[id(item)] = item
            return item
        if args and self.owns(args[0]):
            return args[0]
        return call

    def owns(self, value: Any) -> bool:
        """Whether ``value`` is a proxy this object handed out (a packing node or an output of one)."""
        return self._owned.get(id(value)) is value
