"""Fixtures for lnn-ops-example's tests: hosts with exactly the plugins named, never what is installed.

From a checkout where the backend (or this package) is not pip-installed yet, their ``src`` folders
are put on ``sys.path`` so the unit tests still run; the entry-point test needs the installed
distribution and says so when it is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _package, _src in (("lnn_backend_csk60xx", _HERE.parents[1] / "lnn_backend_csk60xx" / "src"),
                       ("lnn_ops_example", _HERE.parent / "src")):
    if importlib.util.find_spec(_package) is None and _src.is_dir():
        sys.path.insert(0, str(_src))

import lnn_backend_csk60xx.plugin  # noqa: E402
import lnn_ops_builtin.plugin  # noqa: E402
import lnn_ops_example.plugin  # noqa: E402
from lnn_core.testing import isolated_host  # noqa: E402


@pytest.fixture(scope="session")
def host():
    """Built-in ops, the CSK60xx backend and this package, registered explicitly."""
    return isolated_host([lnn_ops_builtin.plugin, lnn_backend_csk60xx.plugin, lnn_ops_example.plugin])


@pytest.fixture(scope="session")
def host_without_example():
    return isolated_host([lnn_ops_builtin.plugin, lnn_backend_csk60xx.plugin])
