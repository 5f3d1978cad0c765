"""The ``lnn`` commands that need no torch do not import it, although torch is installed here.

Each command runs in a fresh interpreter, as a user runs it: a ``-c`` wrapper calls the CLI's
``main`` and then reports which of the heavy modules are in ``sys.modules``. Not timed (wall times
are ``benchmarks/bench_cli.py``'s business).

The plugins are those of this repository's distributions (what the ``full`` tox env installs): a
third-party plugin whose hooks import torch brings it back for the commands that call those hooks.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LINGER_DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "linger-demo"
OWN_DISTRIBUTIONS = {"lnn-core", "lnn-ops-builtin", "lnn-backend-csk60xx"}

# modules a command must leave out: the C simulator's builder (``_sim_build``, cffi's compiler front) never
# runs at all; the compiled ``_sim`` is an ordinary extension module, imported once per process
NEVER = ("torch", "lnn_backend_csk60xx._sim_build", "cffi")
_WRAPPER = """
import sys
from lnn_core.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
mods = ("torch", "numpy", "onnx", "lnn_backend_csk60xx._sim_build", "cffi")
print("LNN-MODULES", rc, ",".join(m for m in mods if m in sys.modules))
"""


def _lnn(*args: str | Path, own_plugins_only: bool = True) -> tuple[int, set[str], str]:
    """Run ``lnn ARGS`` in a subprocess; return its exit code, the heavy modules it imported, and its output."""
    env = dict(os.environ)
    env.pop("LNN_PLUGIN_AUTOLOAD", None)
    env["LNN_DISABLE_PLUGINS"] = ""
    if own_plugins_only:
        others = {ep.name for ep in md.entry_points(group="lnn")
                  if ep.dist is None or ep.dist.metadata["Name"] not in OWN_DISTRIBUTIONS}
        env["LNN_DISABLE_PLUGINS"] = ",".join(sorted(others))
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("LNN-MODULES "), f"lnn {args} did not finish:\n{proc.stdout}\n{proc.stderr}"
    _, rc, mods = (last.split(" ", 2) + [""])[:3]
    return int(rc), set(filter(None, mods.split(","))), proc.stdout + proc.stderr


def test_torch_is_installed_here():
    assert importlib.util.find_spec("torch") is not None  # else the tests below would prove nothing


@pytest.mark.parametrize("own_plugins_only", [True, False], ids=["own-plugins", "every-installed-plugin"])
@pytest.mark.parametrize("args", [["--help"], ["plugins"]], ids=" ".join)
def test_help_and_plugins_import_neither_torch_nor_numpy_nor_onnx(args, own_plugins_only):
    rc, mods, out = _lnn(*args, own_plugins_only=own_plugins_only)
    assert rc == 0 or (args[0] == "plugins" and rc == 1), out  # plugins: 1 when a plugin failed to load
    assert ("pack" if args == ["--help"] else "csk60xx") in out  # the backend's commands / the backend is listed
    assert mods.isdisjoint({"torch", "numpy", "onnx", *NEVER}), f"lnn {' '.join(args)} imported {sorted(mods)}"


@pytest.mark.skipif(not LINGER_DEMO.is_dir(), reason=f"shared data folder {LINGER_DEMO} is absent")
def test_pack_run_and_check_of_an_onnx_file_import_no_torch(tmp_path):
    onnx_file = LINGER_DEMO / "resnet18-12-regular.onnx"
    x = tmp_path / "x.npy"
    np.save(x, np.load(LINGER_DEMO / "resnet18_inputs.npy")[:1])
    want = np.load(LINGER_DEMO / "resnet18_outputs.npy")[:1]

    rc, mods, out = _lnn("pack", onnx_file, "-o", tmp_path / "model.bin")
    assert rc == 0 and (tmp_path / "model.bin").stat().st_size > 0, out
    assert mods.isdisjoint(NEVER), f"lnn pack imported {sorted(mods & set(NEVER))}"

    rc, mods, out = _lnn("run", tmp_path / "model.bin", x, "-o", tmp_path / "y.npy")
    assert rc == 0, out
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)  # the real work was done
    assert mods.isdisjoint({"onnx", *NEVER}), f"lnn run imported {sorted(mods)}"  # model.bin needs no onnx

    rc, mods, out = _lnn("check", onnx_file)
    assert rc == 0 and "Conv2dInt" in out, out
    assert mods.isdisjoint(NEVER), f"lnn check imported {sorted(mods & set(NEVER))}"
