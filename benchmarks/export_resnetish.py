"""Export the models of ``bench_qat.py`` (ResNet-ish, digits CNN) for the simulator-against-onnxruntime benchmark.

    python benchmarks/export_resnetish.py OUTDIR
    python lnn_backend_csk60xx/benchmarks/bench_vs_ort.py --csk OUTDIR/resnetish.onnx \\
        --qdq OUTDIR/resnetish.qdq.onnx --float OUTDIR/resnetish.float.onnx

Each model (ResNet-ish: 0.73 M parameters, 3x32x32 input; digits: 1x8x8 input; batch 1) is quantized with
``lnn.init``, calibrated by a few training-mode forwards on seeded random data, and exported with its frozen
exponents: the CSK60xx dialect (what ``lnn pack`` and the simulator read) and standard QDQ. The float model itself
(its BatchNorm statistics set by the same forwards) is exported too, as ``NAME.float.onnx``: onnxruntime runs it in
float and ``bench_vs_ort.py`` quantizes it with onnxruntime's own ``quantize_static`` (its fastest int8 path).
Untrained weights time the same as trained ones.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_qat  # the models and the plugin host set-up live there

import lnn_core as lnn

MODELS = {"resnetish": (bench_qat.ResNetish, (3, 32, 32)), "digits": (bench_qat.DigitsCNN, (1, 8, 8))}


def export(name: str, out: Path, host: object) -> None:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    model.train()
    with torch.no_grad():  # BatchNorm statistics of the float model: the same kind of data as the calibration
        for _ in range(4):
            model(torch.randn(8, *shape))
    model.eval()
    qmodel = lnn.init(copy.deepcopy(model), target="csk60xx", host=host)
    qmodel.train()
    with torch.no_grad():
        for _ in range(4):
            qmodel(torch.randn(8, *shape))
    qmodel.eval()
    x = torch.randn(1, *shape)
    lnn.export(qmodel, x, out / f"{name}.onnx", host=host)
    lnn.export(qmodel, x, out / f"{name}.qdq.onnx", dialect="qdq", host=host)
    torch.onnx.export(model, (x,), str(out / f"{name}.float.onnx"), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"])
    print(f"wrote {out / name}.onnx, {name}.qdq.onnx and {name}.float.onnx")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    host = bench_qat.isolated_host([bench_qat.lnn_ops_builtin.plugin, bench_qat.lnn_backend_csk60xx.plugin])
    for name in MODELS:
        export(name, out, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
