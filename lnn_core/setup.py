"""Only here to hand the cffi build script to setuptools, and to make that build optional; all metadata lives in
pyproject.toml.

The C fake-quantization kernels (``lnn_core.quant._kernels``) speed up the training step; without a C compiler the
build is skipped with a warning and lnn_core trains through its torch path (``lnn_core.quant.kernels.ISA`` is None).
"""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C kernels cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, no Python headers: the package still works without the kernels
            self.warn(f"lnn_core: C fake-quant kernels not built ({e}); training uses the torch path")

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            self.warn(f"lnn_core: C fake-quant kernels not built ({e}); training uses the torch path")


setup(cffi_modules=["src/lnn_core/quant/_kernels_build.py:ffibuilder"], cmdclass={"build_ext": OptionalBuildExt})
