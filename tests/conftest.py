"""Shared fixtures of the arithmetic tests: a plugin host with exactly the built-in ops and the CSK60xx backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    import lnn_backend_csk60xx  # noqa: F401
except ImportError:  # the backend is not installed: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lnn_backend_csk60xx" / "src"))

import lnn_backend_csk60xx.plugin as backend_plugin
import lnn_ops_builtin.plugin as ops_plugin
from lnn_core.testing import isolated_host


@pytest.fixture(scope="session")
def host():
    """A host that loads the built-in op families and the csk60xx target, and no installed entry point."""
    return isolated_host([ops_plugin, backend_plugin])


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch random state."""
    torch.manual_seed(0)
    yield


# -- int64 references (numpy, written independently of lnn_core.quant.functional) ---------------------------

@pytest.fixture(scope="session")
def ref():
    """The int64 reference functions above, for tests (and hypothesis tests) that want them."""
    import int_reference

    return int_reference
