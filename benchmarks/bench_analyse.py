"""Cost of ``lnn.analyse`` on the digits demo model: ``python benchmarks/bench_analyse.py [--epochs N] [--json]``.

Trains the digits CNN as ``lnn demo`` does (float, stage 1, QAT; fewer epochs by default), then times
``analyse.weights``, ``analyse.layers`` and ``analyse.sensitivity`` (with and without labels) on the 450 test
images, each beside the baseline measured in the same process: one eval forward of the int8 model over the same
images (``ratio``: analysis time / baseline). Sensitivity runs one forward per quantized layer plus two (mostly
float forwards, cheaper than the exact int8 one); the issue's bound is one minute on 2 cores (``--limit``; exit 1
when missed). Prints the top-1 figures so a reader sees what was analysed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import lnn_core as lnn
from lnn_backend_csk60xx.demo import _train, _with_float_weights, accuracy, build_model, load_digits_split
from lnn_core import analyse


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="float epochs (QAT: a quarter; the demo: 30 and 8)")
    p.add_argument("--limit", type=float, default=60.0, help="seconds sensitivity may take (default 60)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits_split(0)
    fmodel = build_model()
    _train(fmodel, xtr, ytr, args.epochs, 3e-3, 0, "float", False)
    model = lnn.init(build_model())
    model.load_state_dict(_with_float_weights(model, fmodel), strict=True)
    _train(model, xtr, ytr, max(1, args.epochs // 4), 3e-4, 1, "qat", False)
    model.eval()
    with torch.no_grad():
        model(xte)
        _, base = _timed(lambda: model(xte))
    res = {"images": len(xte), "float_top1": accuracy(fmodel, xte, yte), "int8_top1": accuracy(model, xte, yte),
           "baseline_eval_s": base}
    for name, fn in (("weights", lambda: analyse.weights(model)),
                     ("layers", lambda: analyse.layers(model, xte, yte)),
                     ("sensitivity", lambda: analyse.sensitivity(model, xte, yte)),
                     ("sensitivity_unlabelled", lambda: analyse.sensitivity(model, xte))):
        report, seconds = _timed(fn)
        res[name] = {"seconds": round(seconds, 4), "ratio": round(seconds / base, 1)}
        if name == "sensitivity":
            res[name]["most_harmful"] = report.rows[0]["layer"]
            res[name]["layers"] = len(report.rows)
    ok = res["sensitivity"]["seconds"] <= args.limit
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"digits: {res['images']} test images; top-1 float {res['float_top1']:.2f} %, int8 "
              f"{res['int8_top1']:.2f} %; one eval forward {base * 1000:.1f} ms")
        for name in ("weights", "layers", "sensitivity", "sensitivity_unlabelled"):
            print(f"  {name:<24} {res[name]['seconds']:8.3f} s  ({res[name]['ratio']:6.1f} x one eval forward)")
        print(f"sensitivity within {args.limit:g} s: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
