"""Only here to hand the cffi build script to setuptools; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/lnn_backend_csk60xx/_sim_build.py:ffibuilder"])
