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

CDEF = """
#define LNN_Q_ISA_PORTABLE ...
#define LNN_Q_ISA_AVX2 ...
int32_t lnn_q_isa_available(void);
void lnn_q_bounds_f32(const float *x, int64_t n, float *out, int32_t isa);
void lnn_q_round_f32(const float *x, float *out, float *q, int64_t n, float scale, float inv, float lo, float hi,
                     int32_t clamp, int32_t isa);
void lnn_q_round_exact_f32(const float *x, float *out, float *q, int64_t n, double scale, float inv, float lo,
                           float hi, int32_t clamp, int32_t isa);
void lnn_q_fold_f32(const float *w, const float *b, const float *mean, const float *var, float eps,
                    const float *gamma, const float *beta, int64_t C, int64_t K, float *wf, float *bf, float *aux,
                    float *bounds);
void lnn_q_fold_backward_f32(const float *gwf, const float *gbf, const float *w, const float *aux, int64_t C,
                             int64_t K, float *gw, float *gb, float *ggamma, float *gbeta);
#define LNN_Q_MAX_CHANNELS ...
void lnn_q_ste_f32(const float *g, const float *q, float *out, int64_t outer, int64_t C, int64_t inner, float lo,
                   float hi, float *sums, int32_t isa);
void lnn_q_sum_bounds_f32(const float *x, const float *y, int64_t n, int32_t sign, float *bounds, int32_t isa);
void lnn_q_sum_round_f32(const float *x, const float *y, float *out, float *t, int64_t n, float scale, float inv,
                         int32_t sign, float lo, float hi, int32_t isa);
"""


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
