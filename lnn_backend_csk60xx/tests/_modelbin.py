"""A model.bin writer for simulator tests, independent of the packer: records are written with ``struct`` exactly as
the README's "model.bin format" section describes, so a test can build what the packer never writes (several
outputs, unknown op codes, hand-made schedules) and the loader's checks can be reached directly.

    t = ModelBin()
    x = t.tensor("x", "float32", (1, 8), flags=INPUT)
    q = t.tensor("q", "int8", (1, 8), exponent=4)
    t.op(1, "quant", [x], [q])            # op code, name, input / output tensor indices, attributes
    blob = t.build(inputs=[x], outputs=[q])

Activations are placed one after another in share-memory unless an offset is given; ``op`` attributes that are
``str`` become string references (as an external op's op type and JSON attributes). :meth:`ModelBin.read` takes a
packed image apart (tensor offsets, plan and strings as they are), so that a test can edit its schedule and
write it again.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

HEADER_BYTES = 64
INPUT, OUTPUT, CONST = 1, 2, 4
FLASH, PSRAM, SHARE = 0, 1, 2
NO_EXPONENT = -(2 ** 31)
DTYPES = {"float32": (1, 4), "int8": (2, 1), "uint8": (3, 1), "int16": (4, 2), "int32": (5, 4), "int64": (6, 8)}


def refix(blob: bytes | bytearray) -> bytes:
    """The image with its payload size and CRC32 recomputed (so that the structural checks are reached)."""
    out = bytearray(blob)
    struct.pack_into("<I", out, 16, len(out) - HEADER_BYTES)
    struct.pack_into("<I", out, 20, zlib.crc32(bytes(out[HEADER_BYTES:])))
    return bytes(out)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class ModelBin:
    tensors: list[tuple] = field(default_factory=list)
    ops: list[tuple] = field(default_factory=list)
    weights: bytearray = field(default_factory=bytearray)
    plan: list[tuple[int, int, int]] | None = None  # (region, arena bytes, peak); None: share-memory as placed
    inputs: list[int] = field(default_factory=list)  # graph inputs / outputs of a read image
    outputs: list[int] = field(default_factory=list)
    _strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    _refs: dict[str, int] = field(default_factory=dict)
    _arena: int = 0

    @classmethod
    def read(cls, blob: bytes) -> ModelBin:
        """A packed image as records: tensors keep their offsets, ops their attributes (string references stay
        valid: strings are only ever appended)."""
        table = {k: (c, o, n) for k, c, o, n in struct.iter_unpack("<IIII", blob[HEADER_BYTES:HEADER_BYTES + 112])}
        part = {k: blob[o:o + n] for k, (c, o, n) in table.items()}
        out = cls(weights=bytearray(part[5]), _strings=bytearray(part[1]))
        strings = part[1]

        def text(ref: int) -> str:
            return strings[ref:strings.index(b"\0", ref)].decode()

        for rec in struct.iter_unpack("<IBBBBiII6i4x", part[2]):
            name, code, rank, region, flags, exponent, offset, size, *dims = rec
            out.tensors.append((text(name), code, tuple(dims[:rank]), region, flags, exponent, offset, size))
        io = list(struct.unpack(f"<{table[4][0]}i", part[4]))
        for code, name, n_in, n_out, start, n_attrs, *rest in struct.iter_unpack("<iIIIII16i8x", part[3]):
            out.ops.append((code, text(name), io[start:start + n_in], io[start + n_in:start + n_in + n_out],
                            list(rest[:n_attrs])))
        out.plan = [(r, size, peak) for r, size, peak, _ in struct.iter_unpack("<IIII", part[6])]
        n_in, n_out = struct.unpack_from("<II", part[7])
        graph = struct.unpack_from(f"<{n_in + n_out}i", part[7], 8)
        out.inputs, out.outputs = list(graph[:n_in]), list(graph[n_in:])
        return out

    def string(self, text: str) -> int:
        if text not in self._refs:
            self._refs[text] = len(self._strings)
            self._strings += text.encode() + b"\0"
        return self._refs[text]

    def tensor(self, name: str, dtype: str, shape: tuple[int, ...], exponent: int | None = None, *, flags: int = 0,
               offset: int | None = None, data: np.ndarray | None = None) -> int:
        """Add a tensor record; returns its index. ``data`` makes it a constant in flash."""
        code, esize = DTYPES[dtype]
        size = int(np.prod(shape, dtype=np.int64)) * esize
        if exponent is None:
            exponent = NO_EXPONENT if dtype in ("float32", "int64") else 0
        if data is not None:
            region, flags, offset = FLASH, flags | CONST, len(self.weights)
            self.weights += np.ascontiguousarray(data, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
            self.weights += bytes(_align(len(self.weights), 64) - len(self.weights))
        else:
            region = SHARE
            if offset is None:
                offset = self._arena
            self._arena = max(self._arena, _align(offset + size, 64))
        self.tensors.append((name, code, tuple(shape), region, flags, exponent, offset, size))
        return len(self.tensors) - 1

    def op(self, code: int, name: str, inputs: list[int], outputs: list[int], attrs: list[int | str] = ()) -> int:
        self.ops.append((code, name, list(inputs), list(outputs), list(attrs)))
        return len(self.ops) - 1

    def build(self, inputs: list[int] | None = None, outputs: list[int] | None = None) -> bytes:
        inputs = self.inputs if inputs is None else inputs
        outputs = self.outputs if outputs is None else outputs
        tensor_recs = bytearray()
        for name, code, shape, region, flags, exponent, offset, size in self.tensors:
            dims = list(shape) + [0] * (6 - len(shape))
            tensor_recs += struct.pack("<IBBBBiII6i4x", self.string(name), code, len(shape), region, flags, exponent,
                                       offset, size, *dims)
        op_recs, io = bytearray(), []
        for code, name, ins, outs, attrs in self.ops:
            values = [self.string(a) if isinstance(a, str) else a for a in attrs]
            op_recs += struct.pack("<iIIIII16i8x", code, self.string(name), len(ins), len(outs), len(io), len(values),
                                   *(values + [0] * (16 - len(values))))
            io += ins + outs
        io_bytes = struct.pack(f"<{len(io)}i", *io)
        plan_recs = self.plan if self.plan is not None else [(SHARE, max(self._arena, 64), self._arena)]
        plan = b"".join(struct.pack("<IIII", region, size, peak, 0) for region, size, peak in plan_recs)
        graph = struct.pack(f"<II{len(inputs) + len(outputs)}i", len(inputs), len(outputs), *inputs, *outputs)
        sections = [(1, 0, bytes(self._strings)), (2, len(self.tensors), bytes(tensor_recs)),
                    (3, len(self.ops), bytes(op_recs)), (4, len(io), io_bytes), (6, len(plan_recs), plan),
                    (7, len(inputs) + len(outputs), graph), (5, 0, bytes(self.weights))]
        body, table = bytearray(), bytearray()
        pos = HEADER_BYTES + 16 * len(sections)
        for kind, count, data in sections:
            start = _align(pos + len(body), 64 if kind == 5 else 16)
            body += bytes(start - pos - len(body))
            table += struct.pack("<IIII", kind, count, start, len(data))
            body += data
        payload = bytes(table + body)
        header = struct.pack("<8sHHIIIII32x", b"LNNMODEL", 1, HEADER_BYTES, 0x6000, len(payload),
                             zlib.crc32(payload), len(sections), 0)
        return header + payload
