"""cffi build script of lnn_core's fake-quantization kernels (out-of-line API mode): ``lnn_core.quant._kernels``.

setuptools runs it through ``cffi_modules`` in ``setup.py``, where the build is optional: without a C compiler
lnn_core still installs and trains through its torch path (see :mod:`lnn_core.quant.kernels`). For an in-place
development build run it directly::

    python src/lnn_core/quant/_kernels_build.py

The C source is ``csrc/fakequant.c``, compiled with ``-O3 -ffp-contract=off`` (GCC/Clang); its AVX2 versions come
from function-level ``target`` attributes, so one binary runs on any x86-64 CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_CSRC = _HERE.parent.parent.parent / "csrc"

def _cdef(header: Path) -> str:
    """The header's declarations as cffi reads them: the include guard and includes dropped, each ``#define NAME
    value`` as ``#define NAME ...`` (the compiler supplies the value). One source for the prototypes: the header."""
    lines = []
    for line in header.read_text().splitlines():
        words = line.split()
        if line.startswith(("#ifndef", "#endif", "#include")) or (line.startswith("#define") and len(words) < 3):
            continue
        lines.append(f"#define {words[1]} ..." if line.startswith("#define") else line)
    return "\n".join(lines)


CDEF = _cdef(_CSRC / "fakequant.h")


def _builder(build_dir: Path) -> FFI:
    """The FFI builder with C paths relative to ``build_dir`` (setuptools refuses absolute source paths)."""
    csrc = Path(os.path.relpath(_CSRC, build_dir))
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "lnn_core.quant._kernels",
        '#include "fakequant.h"',
        sources=[str(csrc / "fakequant.c")],
        include_dirs=[str(csrc)],
        extra_compile_args=["/O2", "/fp:precise"] if sys.platform == "win32" else
        ["-std=c99", "-O3", "-ffp-contract=off"],
        libraries=[] if sys.platform == "win32" else ["m"],
    )
    return ffi


# setuptools runs the build from the project root (the folder of setup.py)
ffibuilder = _builder(Path.cwd())

if __name__ == "__main__":
    # in-place development build: cffi compiles inside src/, and the extension lands next to this file's package
    _builder(_HERE.parent.parent).compile(tmpdir=str(_HERE.parent.parent), verbose=False)
