"""The thinker 3.0.4 VENUS package ("model.pkg") as data: :class:`Package`, its byte writer and its reader.

The layout is the vendor runtime's (spec/thinker-package.md sections 1 and 2): an 80-byte header, then the
memory, tensor, operator, I/O, parameter, shape-inference (empty), debug-name and DMA sections, each at a
16-byte boundary, all little-endian; a CRC-24 of bytes [80, EOF) in the header. This module knows nothing of
lnn's IR: :mod:`.build` turns a graph and its plan into a :class:`Package`, :func:`decode` turns bytes back
into one (``lnn inspect``, and the simulator's decoder in :mod:`.graph`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError

__all__ = ["Tensor", "Op", "Dma", "Package", "serialize", "decode", "crc24", "is_thinker", "a16", "LABEL",
           "MEM_FLASH", "MEM_PSRAM", "MEM_SHARE", "DTYPE_CODES", "CODE_DTYPES", "MAX_DMA", "MAX_IDS", "MEM_NAMES"]

LABEL = b"thinker10"
HEADER = 72
PLATFORM_VENUS = 0
MEM_FLASH, MEM_PSRAM, MEM_SHARE = 0, 1, 2
MEM_NAMES = {MEM_FLASH: "flash", MEM_PSRAM: "psram", MEM_SHARE: "share_mem"}
#: dtype name -> thinker dtype code (kind letter in the high byte, element size in the low byte)
DTYPE_CODES = {"float32": 0x6604, "float16": 0x6602, "int8": 0x6901, "int16": 0x6902, "int32": 0x6904,
               "int64": 0x6908, "uint8": 0x7501, "uint16": 0x7502, "bool": 0x6201}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
MAX_DMA = 320  # the executor's fixed tDMA table
MAX_IDS = 512  # tensor ids of one op (tForward's local_tensor)
NAME_BYTES = 64


def a16(n: int) -> int:
    return (n + 15) & ~15


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xC60001 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc24(data: bytes) -> int:
    """The runtime's CRC-24 (reflected polynomial 0x800063, initial 0, no final XOR), spec 1.3."""
    crc = 0
    for b in data:
        crc ^= b
        crc = (crc >> 8) ^ _CRC_TABLE[crc & 0xFF]
    return crc & 0xFFFFFF


@dataclass
class Tensor:
    """One tensor record (spec 2.2). ``data`` is set for constants (``mem_id`` 0), in stored (re-laid-out) form."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    mem_type: int
    mem_id: int
    scale: float
    offset: int = 0
    layout: int = 0
    data: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def constant(self) -> bool:
        return self.mem_id == 0


@dataclass
class Op:
    """One operator record (spec 2.3): ids are inputs, then outputs, then temps (workspace first, DMA buffer last)."""

    type: str
    attrs: bytes
    inputs: list[int]
    outputs: list[int]
    temps: list[int] = field(default_factory=list)
    name: str = ""


@dataclass
class Dma:
    """One DMA transfer (spec 2.8): ``size`` bytes from constant ``src`` onwards into buffer ``dst``."""

    src: int
    dst: int
    size: int
    src_type: int = MEM_PSRAM


@dataclass
class Package:
    """Everything a thinker package holds. ``arenas``: memory type -> activation arena bytes (file order)."""

    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    arenas: dict[int, int]
    dma: list[Dma] = field(default_factory=list)
    param_type: int = MEM_PSRAM
    crc: int | None = None
    io_names: list[str] | None = None

    def param_bytes(self) -> int:
        return sum(a16(t.nbytes) for t in self.tensors if t.constant)

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain data (``lnn inspect --json``)."""
        return {
            "platform": "venus", "crc24": self.crc,
            "memory": [{"role": "parameters", "type": MEM_NAMES.get(self.param_type, self.param_type),
                        "bytes": self.param_bytes()}]
            + [{"role": "arena", "type": MEM_NAMES.get(k, k), "bytes": v} for k, v in self.arenas.items()],
            "tensors": [{"id": i, "name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                         "memory": MEM_NAMES.get(t.mem_type, t.mem_type), "constant": t.constant,
                         "exponent": None if t.scale == -1.0 else t.scale, "offset": t.offset, "bytes": t.nbytes,
                         "layout": t.layout} for i, t in enumerate(self.tensors)],
            "ops": [{"index": k, "type": op.type, "attrs": op.attrs.hex(" "), "inputs": op.inputs,
                     "outputs": op.outputs, "temps": op.temps} for k, op in enumerate(self.ops)],
            "io": {"inputs": [{"id": i, "name": n} for i, n in zip(self.inputs, self._io_names()[:len(self.inputs)])],
                   "outputs": [{"id": i, "name": n} for i, n in zip(self.outputs,
                                                                    self._io_names()[len(self.inputs):])]},
            "dma": [{"src": d.src, "dst": d.dst, "bytes": d.size, "from": MEM_NAMES.get(d.src_type, d.src_type)}
                    for d in self.dma],
        }

    def _io_names(self) -> list[str]:
        return self.io_names or [self.tensors[i].name for i in [*self.inputs, *self.outputs]]


def _debug_name(name: str) -> bytes:
    if len(name) > 60:
        name = name.rsplit("/", 1)[-1][-60:]
    raw = name.encode("utf-8")[:NAME_BYTES - 1]
    return raw + b"\0" * (NAME_BYTES - len(raw))


def _pad(buf: bytearray) -> None:
    buf += b"\0" * (a16(len(buf)) - len(buf))


def serialize(pkg: Package) -> bytes:
    """The package's bytes, CRC included (section order and padding as tpacker writes them, spec 1.2)."""
    # memory section
    param_size = pkg.param_bytes()
    mem = bytearray(struct.pack("<HHIII", 1, 1 + len(pkg.arenas), 16, 16, 16))
    mem += struct.pack("<IBB2xQ", a16(param_size), pkg.param_type, 0, 0)
    for mtype, size in pkg.arenas.items():
        mem += struct.pack("<IBB2xQ", a16(size), mtype, 0, 0)
    # tensor section; constants get their blob offsets here, in tensor-id order
    ten = bytearray(struct.pack("<IIII", len(pkg.tensors), 64, 16, 16))
    blob = bytearray()
    for t in pkg.tensors:
        offset = t.offset
        if t.constant:
            offset = len(blob)
            raw = np.array(t.data, order="C").astype(np.dtype(t.dtype).newbyteorder("<"), copy=False).tobytes()
            if len(raw) != t.nbytes:
                raise ValueError(f"constant {t.name!r}: {len(raw)} data bytes for shape {t.shape} {t.dtype}")
            blob += raw
            _pad(blob)
        dims = list(t.shape) + [0] * (7 - len(t.shape))
        code = DTYPE_CODES[t.dtype]
        ten += struct.pack("<BBHifiI7IQB3xI", t.mem_type, 0, code, t.mem_id, float(t.scale), 0, len(t.shape), *dims,
                           offset, t.layout, 0)
    # operator section
    types: list[str] = []
    for op in pkg.ops:
        if op.type not in types:
            types.append(op.type)
    tlen = a16(max((len(s) for s in types), default=0) + 1)
    records = bytearray()
    for op in pkg.ops:
        ids = [*op.inputs, *op.outputs, *op.temps]
        toff = a16(16 + len(op.attrs))
        total = a16(toff + 4 * len(ids))
        rec = bytearray(struct.pack("<HHHHHHHBB", types.index(op.type), 16, toff, total, total, len(op.inputs),
                                    len(op.outputs), len(op.temps), 1))
        rec += op.attrs + b"\0" * (toff - 16 - len(op.attrs))
        rec += struct.pack(f"<{len(ids)}i", *ids)
        rec += b"\0" * (total - len(rec))
        records += rec
    opsec = bytearray(struct.pack("<HHBBHII", len(pkg.ops), len(types), tlen, 16, 16, 16 + tlen * len(types),
                                  len(records)))
    for s in types:
        opsec += s.encode("ascii") + b"\0" * (tlen - len(s))
    opsec += records
    # I/O section
    names = pkg._io_names()
    nlen = a16(max((len(n.encode("utf-8")) for n in names), default=0) + 1)
    ids = [*pkg.inputs, *pkg.outputs]
    io = bytearray(struct.pack("<HHHHII", len(pkg.inputs), len(pkg.outputs), 0, nlen, 16, 16 + 4 * len(ids)))
    io += struct.pack(f"<{len(ids)}i", *ids)
    for n in names:
        raw = n.encode("utf-8")
        io += raw + b"\0" * (nlen - len(raw))
    # parameter section
    par = bytearray(struct.pack("<IIII", 1, 16, 16, 16))
    par += struct.pack("<BBHIQ", pkg.param_type, 0, 0, 16, len(blob)) + blob
    # debug names
    dbg = bytearray(struct.pack("<I4xQI4x", len(pkg.tensors), 0, 24))
    for t in pkg.tensors:
        dbg += _debug_name(t.name)
    # DMA section
    dma = bytearray(struct.pack("<IIII", len(pkg.dma), 16, 16, 16))
    for d in pkg.dma:
        dma += struct.pack("<BBBBHHQ", d.src_type, 0, MEM_SHARE, 0, d.src, d.dst, d.size)

    out = bytearray(b"\0" * 80)
    offsets = {}
    for key, data in (("memory", mem), ("tensor", ten), ("op", opsec), ("io", io), ("param", par), ("shape", b""),
                      ("debug", dbg), ("dma", dma)):
        offsets[key] = len(out)
        out += data
        _pad(out)
    total = len(out)
    header = struct.pack("<16sIIIIIIIIIIIIQ", LABEL, 0, offsets["memory"], offsets["tensor"], 0, offsets["op"],
                         offsets["io"], 0, offsets["debug"], offsets["shape"], offsets["param"], offsets["dma"],
                         PLATFORM_VENUS, total)
    out[:HEADER] = header
    crc = crc24(bytes(out[80:]))
    out[16:20] = struct.pack("<I", crc)
    return bytes(out)


def is_thinker(blob: bytes) -> bool:
    """Whether ``blob`` starts like a thinker package (the label the vendor packer writes)."""
    return blob[:16].rstrip(b"\0") == LABEL


def _fail(path: str | None, what: str, details: dict[str, Any] | None = None) -> ModelFileError:
    where = f" '{path}'" if path else ""
    return ModelFileError(f"thinker package{where} is malformed: {what}", details or {},
                          "re-create it with lnn pack --format thinker (or the vendor packer)", path=path, node=None)


def decode(blob: bytes, *, path: str | None = None, check_crc: bool = True) -> Package:
    """Read a VENUS thinker package back into a :class:`Package` (constants in stored form).

    :raises ModelFileError: not a thinker package, another platform, a size, offset or CRC that disagrees.
    """
    if len(blob) < 80 or not is_thinker(blob):
        raise _fail(path, "it does not start with the label 'thinker10'", {"bytes": len(blob)})
    (_, crc, o_mem, o_ten, _, o_op, o_io, _, o_dbg, _, o_par, o_dma, platform,
     total) = struct.unpack_from("<16sIIIIIIIIIIIIQ", blob, 0)
    if total > len(blob):
        raise _fail(path, f"the header says {total} bytes, the file has {len(blob)}")
    if platform != PLATFORM_VENUS:
        raise _fail(path, f"platform {platform} is not VENUS (0)")
    if check_crc and crc and crc24(blob[80:]) != crc:
        raise _fail(path, "the CRC-24 does not match", {"header": hex(crc), "computed": hex(crc24(blob[80:]))})
    for name, off in (("memory", o_mem), ("tensor", o_ten), ("operator", o_op), ("io", o_io), ("param", o_par),
                      ("debug", o_dbg), ("dma", o_dma)):
        if not 80 <= off <= total - 16:
            raise _fail(path, f"the {name} section offset {off} lies outside the file")
    try:
        return _decode(blob, crc, o_mem, o_ten, o_op, o_io, o_dbg, o_par, o_dma)
    except (struct.error, KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise _fail(path, f"a section cannot be read ({type(exc).__name__}: {exc})") from exc


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8")


def _decode(blob: bytes, crc: int, o_mem: int, o_ten: int, o_op: int, o_io: int, o_dbg: int, o_par: int,
            o_dma: int) -> Package:
    shared, total_mem = struct.unpack_from("<HH", blob, o_mem)
    mems = [struct.unpack_from("<IB", blob, o_mem + 16 + 16 * i) for i in range(total_mem)]
    param_type = mems[0][1]
    arenas = {t: s for s, t in mems[shared:]}
    count = struct.unpack_from("<I", blob, o_ten)[0]
    dcount = struct.unpack_from("<I", blob, o_dbg)[0]
    names = [_cstr(blob[o_dbg + 24 + NAME_BYTES * i:o_dbg + 24 + NAME_BYTES * (i + 1)]) if i < dcount else f"t{i}"
             for i in range(count)]
    data0 = o_par + 32
    tensors = []
    for i in range(count):
        mtype, _, code, mem_id, scale, _, ndim, *rest = struct.unpack_from("<BBHifiI7IQB3xI", blob,
                                                                             o_ten + 16 + 64 * i)
        dims, offset, layout = rest[:7], rest[7], rest[8]
        dtype = CODE_DTYPES[code]
        t = Tensor(names[i], dtype, tuple(dims[:ndim]), mtype, mem_id, scale, offset, layout)
        if mem_id < shared:
            start = data0 + offset
            t.data = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=int(np.prod(t.shape)),
                                   offset=start).astype(dtype).reshape(t.shape)
        tensors.append(t)
    n_ops, n_types, tlen, _, toff, ooff, _ = struct.unpack_from("<HHBBHII", blob, o_op)
    types = [_cstr(blob[o_op + toff + tlen * k:o_op + toff + tlen * (k + 1)]) for k in range(n_types)]
    ops = []
    pos = o_op + ooff
    for _ in range(n_ops):
        tid, aoff, teoff, _, size, n_in, n_out, n_tmp, _ = struct.unpack_from("<HHHHHHHBB", blob, pos)
        ids = list(struct.unpack_from(f"<{n_in + n_out + n_tmp}i", blob, pos + teoff))
        for i in ids:
            if not 0 <= i < count:
                raise ValueError(f"op {len(ops)} refers to tensor {i} of {count}")
        ops.append(Op(types[tid], bytes(blob[pos + aoff:pos + teoff]), ids[:n_in], ids[n_in:n_in + n_out],
                      ids[n_in + n_out:]))
        pos += size
    n_in, n_out, _, nlen, ten_off, name_off = struct.unpack_from("<HHHHII", blob, o_io)
    ids = list(struct.unpack_from(f"<{n_in + n_out}i", blob, o_io + ten_off))
    io_names = [_cstr(blob[o_io + name_off + nlen * k:o_io + name_off + nlen * (k + 1)]) for k in range(n_in + n_out)]
    dcount = struct.unpack_from("<I", blob, o_dma)[0]
    dma = []
    for k in range(dcount):
        st, _, _, _, src, dst, size = struct.unpack_from("<BBBBHHQ", blob, o_dma + 16 + 16 * k)
        dma.append(Dma(src, dst, size, st))
    # attrs were read up to the tensor ids, i.e. with the zero padding: keep them so, callers read what they need
    return Package(tensors, ops, ids[:n_in], ids[n_in:], arenas, dma, param_type, crc, io_names)
