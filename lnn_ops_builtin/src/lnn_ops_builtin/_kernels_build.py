"""cffi build script of lnn_ops_builtin's training kernels (out-of-line API mode): ``lnn_ops_builtin._kernels``.

setuptools runs it through ``cffi_modules`` in ``setup.py``, where the build is optional: without a C compiler the
ops train through their torch/numpy path (see :mod:`lnn_ops_builtin.kernels`). For an in-place development build
run it directly::

    python src/lnn_ops_builtin/_kernels_build.py

The C sources are in ``csrc/``, compiled with ``-O3 -ffp-contract=off`` (GCC/Clang).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_CSRC = _HERE.parent.parent / "csrc"

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


CDEF = _cdef(_CSRC / "layernorm.h")


def _builder(build_dir: Path) -> FFI:
    """The FFI builder with C paths relative to ``build_dir`` (setuptools refuses absolute source paths)."""
    csrc = Path(os.path.relpath(_CSRC, build_dir))
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "lnn_ops_builtin._kernels",
        '#include "layernorm.h"',
        sources=[str(csrc / "layernorm.c")],
        include_dirs=[str(csrc)],
        extra_compile_args=["/O2", "/fp:precise"] if sys.platform == "win32" else
        ["-std=c99", "-O3", "-ffp-contract=off"],
        libraries=[] if sys.platform == "win32" else ["m"],
    )
    return ffi


# setuptools runs the build from the project root (the folder of setup.py)
ffibuilder = _builder(Path.cwd())

if __name__ == "__main__":
    # in-place development build: the extension lands next to this file
    _builder(_HERE.parent).compile(tmpdir=str(_HERE.parent), verbose=False)
