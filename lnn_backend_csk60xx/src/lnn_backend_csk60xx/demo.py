"""``lnn demo``: the whole flow on scikit-learn's bundled handwritten digits (no download).

``lnn demo kws`` runs the keyword-spotting demo instead (:mod:`lnn_backend_csk60xx.kws.demo`).

float training -> stage 1 (lnn.constrain) -> stage 2 (lnn.init, QAT) -> export (CSK60xx dialect
and QDQ) -> pack (memory plan, model.bin) -> the C int8 simulator on every test image ->
``lnn.verify`` (every intermediate tensor). Needs the ``demo`` extra (torch, scikit-learn,
lnn-ops-builtin).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["build_model", "load_digits_split", "run_demo", "configure", "run"]


def _torch() -> Any:
    import torch

    return torch


def build_model() -> Any:
    """A small residual CNN for 1x8x8 digits: conv-bn-relu, a residual block, pooling, linear."""
    torch = _torch()
    from torch import nn

    class DigitsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, padding=1)
            self.bn0 = nn.BatchNorm2d(16)
            self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
            self.bn3 = nn.BatchNorm2d(32)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.bn0(self.stem(x)))
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            x = torch.relu(x + y)
            x = self.pool(torch.cat([x, y], dim=1))
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.fc(self.gap(x).flatten(1))

    return DigitsNet()


def load_digits_split(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """The digits data as float tensors in [0, 1], shape (N, 1, 8, 8); stratified 75/25 split."""
    torch = _torch()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[:, None]
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.25, random_state=seed, stratify=data.target)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def _train(model: Any, x: Any, y: Any, epochs: int, lr: float, seed: int, desc: str, progress: bool) -> None:
    torch = _torch()
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()


def accuracy(model: Any, x: Any, y: Any) -> float:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100.0


def run_demo(*, epochs: int = 30, qat_epochs: int = 8, seed: int = 0, progress: bool = True,
             host: Any = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the flow and return the figures (accuracies in percent, seconds).

    :param out_dir: where the ONNX files, model.bin and the checkpoint are written (None: not kept).
    """
    torch = _torch()
    import lnn_core as lnn

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_digits_split(seed)
    host = host or lnn.PluginHost()

    float_model = build_model()
    _train(float_model, xtr, ytr, epochs, 3e-3, seed, "float training", progress)
    float_acc = accuracy(float_model, xte, yte)

    stage1 = lnn.constrain(build_model(), host=host)
    stage1.load_state_dict(_with_float_weights(stage1, float_model), strict=True)
    _train(stage1, xtr, ytr, max(1, epochs // 4), 1e-3, seed + 1, "stage 1: constrain", progress)
    constrained_acc = accuracy(stage1, xte, yte)

    qmodel = lnn.init(build_model(), host=host)
    qmodel.load_state_dict(stage1.state_dict(), strict=True)
    _train(qmodel, xtr, ytr, qat_epochs, 3e-4, seed + 2, "stage 2: QAT", progress)
    int8_acc = accuracy(qmodel, xte, yte)
    deploy = _deploy(qmodel, xte, yte, host, out_dir, progress)
    return {
        "dataset": f"sklearn digits: {len(xtr)} train / {len(xte)} test images, 1x8x8",
        "float_accuracy": round(float_acc, 2),
        "constrained_accuracy": round(constrained_acc, 2),
        "int8_accuracy": round(int8_acc, 2),
        "int8_minus_float": round(int8_acc - float_acc, 2),
        "quantized_ops": len(qmodel.lnn.ops),
        **deploy,
        "seconds": round(time.perf_counter() - t0, 1),
        "model": qmodel,
    }


def _deploy(qmodel: Any, xte: Any, yte: Any, host: Any, out_dir: str | Path | None, progress: bool) -> dict[str, Any]:
    """Export, pack, run every test image through the simulator and verify every tensor."""
    import tempfile

    import numpy as np
    import torch
    from tqdm import tqdm

    import lnn_core as lnn

    from .dialect import read_onnx
    from .pipeline import pack_graph
    from .simulator import Simulator

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        onnx_path = out / "digits.onnx"
        lnn.export(qmodel, xte[:1], onnx_path, host=host)
        lnn.export(qmodel, xte[:1], out / "digits.qdq.onnx", dialect="qdq", dynamic_batch=True, host=host)
        packed = pack_graph(read_onnx(onnx_path))
        (out / "digits.bin").write_bytes(packed.blob)
        torch.save(qmodel.state_dict(), out / "digits_qat.pt")
    sim = Simulator(packed.blob)
    qmodel.eval()
    with torch.no_grad():
        eval_out = qmodel(xte).numpy()
    sim_out = np.stack([sim.run([xte[i:i + 1].numpy()])[0][0]
                        for i in tqdm(range(len(xte)), desc="simulator", disable=not progress, leave=False)])
    report = lnn.verify(qmodel, xte[:1], host=host)
    regions = {name: {"used": r.size, "limit": r.limit} for name, r in packed.plan.regions.items()}
    return {
        "simulator_accuracy": round(float((sim_out.argmax(1) == yte.numpy()).mean()) * 100.0, 2),
        "simulator_outputs_equal_eval": bool(np.array_equal(sim_out, eval_out)),
        "bit_exact": report.ok,
        "tensors_verified": len(report.tensors),
        "memory": {**regions, "model_bin_bytes": len(packed.blob)},
        "files": str(out) if out_dir is not None else None,
    }


def _with_float_weights(prepared: Any, float_model: Any) -> dict[str, Any]:
    """The prepared model's state_dict with every float parameter/buffer taken from ``float_model``."""
    sd = prepared.state_dict()
    for key, value in float_model.state_dict().items():
        if key in sd:
            sd[key] = value
    return sd


KWS_ONLY = ("quick", "clips", "cache_dir", "workers")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", nargs="?", choices=("digits", "kws"), default="digits", metavar="DEMO",
                   help="digits (the default): scikit-learn's handwritten digits; kws: keyword spotting on "
                   "synthesized speech (lnn_backend_csk60xx.kws)")
    p.add_argument("--epochs", type=int, default=None,
                   help="float training epochs (default: digits 30; kws 30 for the DS-CNN, 16 for the CRNN; a given "
                   "number is used for both)")
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="quantization-aware training epochs (default: digits 8; kws 4 for the DS-CNN, 16 for the "
                   "CRNN; a given number is used for both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="where to write the ONNX files, model.bin and the "
                   "checkpoint (default ./lnn-demo, kws ./lnn-demo-kws)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    g = p.add_argument_group("keyword spotting (lnn demo kws)")
    g.add_argument("--quick", action="store_true", help="360 clips, a few epochs (a smoke test of the flow)")
    g.add_argument("--clips", type=int, default=None, help="clips to synthesize (default 4000; --quick 360)")
    g.add_argument("--cache-dir", default=None,
                   help="where the synthesized clips are cached (default $XDG_CACHE_HOME/lnn/kws)")
    g.add_argument("--workers", type=int, default=None, help="speech synthesis processes (default: every CPU)")


def run(args: argparse.Namespace, host: Any) -> int:
    if args.which == "kws":
        from .kws.demo import run_cli

        return run_cli(args, host)
    given = [name for name in KWS_ONLY if getattr(args, name) not in (None, False)]
    if given:
        from lnn_core.errors import ConfigError

        option = "--" + given[0].replace("_", "-")
        raise ConfigError(f"lnn demo: option {option} belongs to the keyword demo",
                          {"rule": f"{', '.join('--' + g.replace('_', '-') for g in KWS_ONLY)} apply to "
                           "lnn demo kws only"},
                          f"run lnn demo kws {option} ...", option=given[0], value=getattr(args, given[0]),
                          valid=None)
    epochs = 30 if args.epochs is None else args.epochs
    qat_epochs = 8 if args.qat_epochs is None else args.qat_epochs
    res = run_demo(epochs=epochs, qat_epochs=qat_epochs, seed=args.seed, progress=not args.json, host=host,
                   out_dir=args.out_dir or "lnn-demo")
    res.pop("model")
    if args.json:
        from lnn_core.cli import result_stream

        print(json.dumps(res, indent=2), file=result_stream(args))
        return 0
    print(f"lnn demo: {res['dataset']}")
    print(f"  float accuracy            {res['float_accuracy']:6.2f} %")
    print(f"  stage 1 (constrained)     {res['constrained_accuracy']:6.2f} %")
    print(f"  int8 accuracy (eval, QAT) {res['int8_accuracy']:6.2f} %   ({res['int8_minus_float']:+.2f} points)")
    print(f"  simulator accuracy        {res['simulator_accuracy']:6.2f} %   (C int8 simulator, every test image)")
    print(f"  bit-exact                 {'yes' if res['bit_exact'] else 'NO'}"
          f"       ({res['tensors_verified']} tensors verified; simulator outputs "
          f"{'equal' if res['simulator_outputs_equal_eval'] else 'DIFFER from'} eval mode on all test images)")
    mem = res["memory"]
    regions = ", ".join(f"{k} {v['used']:,} of {v['limit']:,} B" for k, v in mem.items() if isinstance(v, dict))
    print(f"  memory                    {regions}; model.bin {mem['model_bin_bytes']:,} B")
    print(f"  quantized ops: {res['quantized_ops']}; files in {res['files']}; time {res['seconds']} s")
    return 0 if res["bit_exact"] and res["simulator_outputs_equal_eval"] else 1
