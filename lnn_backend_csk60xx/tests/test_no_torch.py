"""The pack/run/check path imports no torch (a build server has onnx, numpy and cffi only)."""

from __future__ import annotations

import subprocess
import sys

MODULES = ["check", "commands", "dialect", "formats", "inference", "packer", "pipeline", "planner", "plugin", "report",
           "rewrites", "rules", "simulator", "sizes", "target", "ops", "ops.opset",
           *(f"ops.{family}" for family in ("quant", "conv", "linear", "norm", "pool", "eltwise", "shape"))]


def test_backend_modules_do_not_import_torch():
    code = ("import sys\n"
            + "".join(f"import lnn_backend_csk60xx.{m}\n" for m in MODULES)
            + "from lnn_core.testing import isolated_host\n"
            + "import lnn_backend_csk60xx.plugin as p\n"
            + "isolated_host([p])\n"
            + "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
