"""QAT-step cost against the float step: ``python benchmarks/bench_qat.py [--threads N] [--json]``.

For each model the float model and its ``lnn.init`` copy are trained in the same process, one
step of each in turn (float, QAT, float, QAT, ...), so both see the same machine state. A step is
forward + cross-entropy loss + backward + SGD step (momentum 0.9) on a fixed random batch. After a
warm-up the median of ``--steps`` timed steps per model is reported, as ms per step and as the
ratio QAT / float of the medians (``ratio``); ``pairs`` is the median of the per-pair ratios, which
a loaded machine disturbs less; ``page faults/step`` is the mean of each side's minor page faults per step (glibc's
heap handing memory back to the system and taking it again: see benchmarks/README.md, "Page faults"). The exit
code is 1 when a ratio misses its target.

Models:

- ``digits``: the 8x8 digits CNN (1x8x8 input, conv8-bn-relu, conv16-bn-relu, max-pool, linear 10),
  batch 64;
- ``resnet``: a ResNet-ish CIFAR-size model (3x32x32 input, BasicBlocks of conv-bn-relu with the
  residual add, global average pool, linear 10, about 0.7 M parameters), batch 32;
- ``encoder``: issue 9's 2-block transformer encoder (49x40 features, Linear 40->64, ``nn.TransformerEncoder`` of
  two ``nn.TransformerEncoderLayer``, d_model 64, 4 heads, ReLU feed-forward 128, a linear head on the flattened
  sequence), batch 16. For this model the C simulator's time per forward (one 49x40 input, single thread, median
  of ``--sim-runs``) is printed too (``sim ms``; target <= 5 ms).
- ``crnn``: issue 10's keyword CRNN (1x49x40 input, conv16-bn-relu, conv16/2-bn-relu, ``nn.GRU`` 320->64 over 25
  steps, linear 12 on the last step), batch 32. The float step runs torch's fused GRU; the QAT step runs the chip's
  integer recurrence (lnn_ops_builtin/rnn.py).

Targets (issue 15 / issue 9 / issue 10 acceptance, see benchmarks/README.md): ratio <= 1.30 on ``digits``, <= 1.10
on ``resnet``, <= 1.50 on ``encoder``, <= 3.0 on ``crnn``, with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import lnn_backend_csk60xx
except ImportError:  # a checkout where the backend is not installed yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lnn_backend_csk60xx" / "src"))

import lnn_backend_csk60xx.plugin
import lnn_core as lnn
import lnn_ops_builtin.plugin
from lnn_core.testing import isolated_host

TARGETS = {"digits": 1.30, "resnet": 1.10, "encoder": 1.50, "crnn": 3.0}
SIM_TARGET_MS = 5.0


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            # kernel = stride: the chip needs kernel >= stride (a 1x1 stride-2 conv is not allowed)
            self.short = nn.Sequential(nn.Conv2d(cin, cout, stride, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s)


class ResNetish(nn.Module):
    """Stem conv, three stages of two BasicBlocks (widths 32/64/128, strides 1/2/2), pool, linear: 0.73 M params."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.pool(self.blocks(x))
        return self.fc(torch.flatten(x, 1))


class Encoder2(nn.Module):
    """Two transformer encoder blocks on 49x40 features (the acceptance model of issue 9)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(49 * 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.enc(self.fc(x)), 1))


class CRNN(nn.Module):
    """Issue 10's keyword CRNN on 49x40 features: 2 conv + BN + ReLU (the second with stride 2: 25 steps), a GRU of
    64 units over time (``batch_first``), a linear 12 on the last step."""

    def __init__(self, classes: int = 12, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gru = nn.GRU(channels * 20, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        y, _ = self.gru(x.permute(0, 2, 1, 3).flatten(2))
        return self.fc(y[:, -1])


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "digits": (DigitsCNN, (1, 8, 8), 64),
    "resnet": (ResNetish, (3, 32, 32), 32),
    "encoder": (Encoder2, (49, 40), 16),
    "crnn": (CRNN, (1, 49, 40), 32),
}


def sim_ms(qat_model: nn.Module, shape: tuple[int, ...], host: object, runs: int) -> float:
    """The C simulator's median ms per forward of ``qat_model`` (eval) on one input of ``shape``, one thread."""
    import numpy as np

    from lnn_backend_csk60xx.pipeline import pack_graph
    from lnn_backend_csk60xx.simulator import Simulator
    from lnn_core.exporter import to_ir

    qat_model.eval()
    x = torch.randn(1, *shape)
    sim = Simulator(pack_graph(to_ir(qat_model, x, host=host)).blob)
    arr = np.ascontiguousarray(x.numpy())
    for _ in range(3):
        sim.run([arr])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sim.run([arr])
        times.append(time.perf_counter() - t0)
    qat_model.train()
    return statistics.median(times) * 1e3


def _faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing: not on Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


#: glibc's malloc settings that the environment can give (read once at process start; see benchmarks/README.md)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], tuple[float, int]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> tuple[float, int]:
        """(seconds, minor page faults) of one step."""
        f0 = _faults()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        return t1 - t0, _faults() - f0

    return step


def bench(name: str, *, steps: int, warmup: int, seed: int = 0, sim_runs: int = 50) -> dict[str, float]:
    factory, shape, batch = MODELS[name]
    torch.manual_seed(seed)
    float_model = factory()
    host = isolated_host([lnn_ops_builtin.plugin, lnn_backend_csk60xx.plugin])
    qat_model = lnn.init(float_model, target="csk60xx", host=host)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    step_f, step_q = _stepper(float_model, x, y), _stepper(qat_model, x, y)
    for _ in range(warmup):
        step_f()
        step_q()
    tf, tq, ff, fq = [], [], [], []
    for _ in range(steps):
        for times, faults, step in ((tf, ff, step_f), (tq, fq, step_q)):
            t, n = step()
            times.append(t)
            faults.append(n)
    mf, mq = statistics.median(tf), statistics.median(tq)
    out = {"model": name, "batch": batch, "params": sum(p.numel() for p in float_model.parameters()),
           "float_ms": mf * 1e3, "qat_ms": mq * 1e3, "ratio": mq / mf,
           "pair_ratio": statistics.median(q / f for f, q in zip(tf, tq)), "target": TARGETS[name],
           "steps": steps, "threads": torch.get_num_threads(),
           "float_faults": statistics.mean(ff), "qat_faults": statistics.mean(fq)}
    if name == "encoder":  # the simulator is single-threaded C: torch's thread count does not reach it
        out["sim_ms"] = sim_ms(qat_model, shape, host, sim_runs)
        out["sim_target_ms"] = SIM_TARGET_MS
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=_cores(), help="torch threads (default: all cores, %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and kind (>= 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--models", default="digits,resnet,encoder",
                   help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--sim-runs", type=int, default=50, help="timed simulator forwards of the encoder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = p.parse_args(argv)
    if a.steps < 20:
        p.error("--steps must be at least 20 (the median of fewer steps is too noisy)")
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(a.threads)
    results = [bench(n, steps=a.steps, warmup=a.warmup, sim_runs=a.sim_runs) for n in names]
    ok = all(r["ratio"] <= r["target"] and r.get("sim_ms", 0.0) <= r.get("sim_target_ms", 0.0) for r in results)
    malloc = " ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV if os.environ.get(k))
    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": a.threads, "allocator": malloc, "results": results,
                          "ok": ok}, indent=2))
    else:
        print(f"torch {torch.__version__}, {a.threads} thread(s), median of {a.steps} steps after {a.warmup} warm-up")
        print(f"allocator: {malloc or 'the C library defaults'}")
        print(f"{'model':8} {'batch':>5} {'params':>8} {'float ms':>9} {'QAT ms':>9} {'ratio':>6} {'pairs':>6} "
              f"{'target':>6} {'page faults/step':>17}")
        for r in results:
            mark = "ok" if r["ratio"] <= r["target"] else "OVER"
            faults = f"{r['float_faults']:.0f} / {r['qat_faults']:.0f}"
            print(f"{r['model']:8} {r['batch']:5d} {r['params']:8d} {r['float_ms']:9.2f} {r['qat_ms']:9.2f} "
                  f"{r['ratio']:6.2f} {r['pair_ratio']:6.2f} {r['target']:6.2f} {faults:>17} {mark}")
            if "sim_ms" in r:
                sim_mark = "ok" if r["sim_ms"] <= r["sim_target_ms"] else "OVER"
                print(f"{'':8} C simulator, one 1x49x40 forward, 1 thread: {r['sim_ms']:.2f} ms "
                      f"(target {r['sim_target_ms']:.1f}) {sim_mark}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
