"""Distributed data-parallel QAT keeps every rank's quantization state identical (DESIGN.md, "Scale").

Two CPU processes (gloo) wrap the same quantized CNN (conv-bn-relu with BN folded, residual add, cat,
average pool, linear) in DistributedDataParallel and train a few steps on different data, at different
scales, so each rank alone would observe different activation ranges. Each rank then writes its
state_dict (parameters, folded BatchNorm statistics, every quantizer's running statistic, exponent and
batch count) and its eval-mode output on a fixed input; the test process requires all of it to be
bitwise equal across ranks. ``broadcast_buffers=False`` is the strict case: nothing but lnn's own
all-reduce keeps the statistics in step; ``True`` is DDP's default.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn

pytestmark = pytest.mark.ddp

WORLD_SIZE = 2
STEPS = 5
BATCH = 8
DEADLINE_S = 50.0  # the whole spawn, both configurations
COLLECTIVE_TIMEOUT_S = 20.0  # a rank waiting on a dead peer fails instead of hanging


def _host() -> Any:
    """A plugin host with the built-in ops and the csk60xx target (the backend from the checkout if needed)."""
    try:
        import lnn_backend_csk60xx.plugin as backend_plugin
    except ImportError:  # not installed yet: use the checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lnn_backend_csk60xx" / "src"))
        import lnn_backend_csk60xx.plugin as backend_plugin
    import lnn_ops_builtin.plugin as ops_plugin
    from lnn_core.testing import isolated_host

    return isolated_host([ops_plugin, backend_plugin])


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        s = F.relu(a + self.bn2(self.conv2(a)))
        c = F.relu(self.bn3(self.conv3(s)))
        z = self.pool(torch.cat([s, c], 1))
        return self.fc(torch.flatten(z, 1))


def _quantized_model() -> nn.Module:
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return lnn.init(model, target="csk60xx", host=_host())


def _train(rank: int, broadcast_buffers: bool) -> dict[str, Any]:
    model = _quantized_model()
    start = model.conv1.weight.detach().clone()
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # different data on every rank ...
    ddp.train()
    for step in range(STEPS):
        x = torch.randn(BATCH, 3, 8, 8, generator=data) * (1.0 + rank + 0.5 * step)  # ... and different ranges
        y = torch.randint(0, 10, (BATCH,), generator=data)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    model.eval()
    probe = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(probe)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "eval": out,
            "trained": not torch.equal(start, model.conv1.weight)}


def _worker(rank: int, port: int, outdir: str) -> None:
    """One rank: train under both DDP buffer settings, write the results to ``outdir/rank<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        results = {bb: _train(rank, bb) for bb in (False, True)}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(outdir: Path) -> None:
    """Run the ranks; fail with the child's traceback if one raises, and kill them all at the deadline."""
    ctx = mp.start_processes(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD_SIZE, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                alive = [i for i, p in enumerate(ctx.processes) if p.is_alive()]
                pytest.fail(f"DDP ranks {alive} still running after {DEADLINE_S:.0f} s (a collective hang?)")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:  # which rank failed, and why
        pytest.fail(f"a DDP rank failed:\n{exc}", pytrace=False)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)


def _differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    out = [f"{k}: only on one rank" for k in sorted(a.keys() ^ b.keys())]
    for k in sorted(a.keys() & b.keys()):
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
            out.append(f"{k}: rank0={a[k].flatten()[:4].tolist()} rank1={b[k].flatten()[:4].tolist()}")
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[bool, dict[str, Any]]]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    outdir = tmp_path_factory.mktemp("ddp")
    _spawn(outdir)
    missing = [r for r in range(WORLD_SIZE) if not (outdir / f"rank{r}.pt").exists()]
    assert not missing, f"DDP ranks {missing} exited without writing their results"
    return [torch.load(outdir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("broadcast_buffers", [False, True], ids=["own-sync", "ddp-broadcast"])
def test_ranks_hold_identical_state(ranks: list[dict[bool, dict[str, Any]]], broadcast_buffers: bool) -> None:
    r0, r1 = (r[broadcast_buffers] for r in ranks)
    diffs = _differences(r0["state"], r1["state"])
    if diffs:
        pytest.fail("state differs across DDP ranks:\n  " + "\n  ".join(diffs), pytrace=False)
    state = r0["state"]
    quantizers = sorted(k[: -len(".exponent")] for k in state if k.endswith(".exponent"))
    assert len(quantizers) >= 6  # input stub, three convs, add, cat, linear
    for q in quantizers:  # every observer ran once per step and holds a real statistic
        assert int(state[f"{q}.num_batches"]) == STEPS, q
        assert float(state[f"{q}.running"]) > 0.0, q
    assert r0["trained"] and r1["trained"]


@pytest.mark.parametrize("broadcast_buffers", [False, True], ids=["own-sync", "ddp-broadcast"])
def test_ranks_eval_bitwise_identical(ranks: list[dict[bool, dict[str, Any]]], broadcast_buffers: bool) -> None:
    e0, e1 = (r[broadcast_buffers]["eval"] for r in ranks)
    assert e0.dtype == e1.dtype and e0.shape == e1.shape
    if not torch.equal(e0, e1):
        pytest.fail(f"eval outputs differ across ranks: max |diff| {float((e0 - e1).abs().max())}", pytrace=False)
    assert torch.isfinite(e0).all()
