import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest


@pytest.fixture(scope="module")
def host():
    """A host with the backend and the test-local plugin op ``TestNeg`` only (test modules may define their own)."""
    import _neg_plugin

    import lnn_backend_csk60xx.plugin as backend_plugin
    from lnn_core.testing import isolated_host

    return isolated_host([backend_plugin, _neg_plugin])


@pytest.fixture(scope="module")
def ops(host):
    """The ops (built-in and plugin) of ``host``."""
    from lnn_backend_csk60xx.ops import OpSet

    return OpSet.from_host(host)
