"""Export the ResNet-ish model of ``bench_qat.py`` in both dialects, for the simulator-against-onnxruntime benchmark.

    python benchmarks/export_resnetish.py OUTDIR
    python lnn_backend_csk60xx/benchmarks/bench_vs_ort.py --csk OUTDIR/resnetish.onnx --qdq OUTDIR/resnetish.qdq.onnx

The model (0.73 M parameters, 3x32x32 input, batch 1) is quantized with ``lnn.init``, calibrated by a few
training-mode forwards on seeded random data, and exported with its frozen exponents: the CSK60xx dialect
(what ``lnn pack`` and the simulator read) and standard QDQ (what onnxruntime runs with its int8 kernels).
Untrained weights time the same as trained ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_qat  # the model and the plugin host set-up live there

import lnn_core as lnn


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    host = bench_qat.isolated_host([bench_qat.lnn_ops_builtin.plugin, bench_qat.lnn_backend_csk60xx.plugin])
    qmodel = lnn.init(bench_qat.ResNetish(), target="csk60xx", host=host)
    qmodel.train()
    with torch.no_grad():
        for _ in range(4):
            qmodel(torch.randn(8, 3, 32, 32))
    qmodel.eval()
    x = torch.randn(1, 3, 32, 32)
    lnn.export(qmodel, x, out / "resnetish.onnx", host=host)
    lnn.export(qmodel, x, out / "resnetish.qdq.onnx", dialect="qdq", host=host)
    print(f"wrote {out / 'resnetish.onnx'} and {out / 'resnetish.qdq.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
