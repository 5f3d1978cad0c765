"""Whole QAT steps with lnn_core's C fake-quant kernels (LNN_QAT_KERNELS auto and portable) against the torch path
(LNN_QAT_KERNELS=torch), each in its own process (the choice is read at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
from lnn_core.quant import kernels

pytestmark = pytest.mark.skipif(kernels.ISA is None, reason="the C kernels are not built here (or switched off)")

_STEP = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    import torch.nn.functional as F
    import lnn_core
    from lnn_core.quant import kernels
    from lnn_core.testing import isolated_host
    import lnn_ops_builtin.plugin
    import lnn_backend_csk60xx.plugin
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1); m.running_var.uniform_(0.5, 2)
    q = lnn_core.init(model, host=isolated_host([lnn_ops_builtin.plugin, lnn_backend_csk60xx.plugin]))
    opt = torch.optim.SGD(q.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(q(x), y).backward()
        opt.step()
    q.eval()
    out = q(x)
    state = {k: v.tolist() for k, v in q.state_dict().items() if v.dtype in (torch.int64,)}
    json.dump({"isa": kernels.ISA, "out": out.double().flatten().tolist(), "state": state,
               "params": [p.double().flatten().tolist() for p in q.parameters()]}, sys.stdout)
""")


def _run_step(mode: str) -> dict:
    env = dict(os.environ, LNN_QAT_KERNELS=mode)
    r = subprocess.run([sys.executable, "-c", _STEP], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_training_with_and_without_the_kernels():
    """Five QAT steps of a conv-BN-ReLU net with the kernels (auto), their portable loops and the torch path: the
    same exponents in every quantizer, and eval outputs and trained parameters equal up to the float rounding of
    the gradients (the fold's gradient sums in another order)."""
    runs = {mode: _run_step(mode) for mode in ("auto", "portable", "torch")}
    assert runs["torch"]["isa"] is None and runs["portable"]["isa"] == "portable" and runs["auto"]["isa"] == kernels.ISA
    ref = runs["torch"]
    for mode in ("auto", "portable"):
        assert runs[mode]["state"] == ref["state"]
        np.testing.assert_allclose(runs[mode]["out"], ref["out"], rtol=0, atol=0.05)
        for a, b in zip(runs[mode]["params"], ref["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert runs["auto"]["out"] == runs["portable"]["out"]  # the two instruction sets: every bit


