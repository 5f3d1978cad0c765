"""Commands the core contributes itself: ``lnn plugins`` and ``lnn rules``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _plugins_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help="also run every plugin's op-family and exporter registration (imports torch): "
                        "counts the op families and reports plugins that fail there")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _plugins_run(args: argparse.Namespace, host: Any) -> int:
    from .cli import result_stream

    # building the host imported every plugin (import failures are in host.failed); these registries are cheap
    targets, recipes = list(host.targets), list(host.recipes)
    if args.all:
        host.load_all()
    infos = host.plugin_infos()
    if args.json:
        print(json.dumps([{"name": i.name, "distribution": i.dist, "version": i.version,
                           "entry_point": i.entry_point, "hooks": list(i.hooks),
                           "error": str(i.error) if i.error else None} for i in infos], indent=2),
              file=result_stream(args))
        return 1 if host.failed else 0
    for i in infos:
        where = f"{i.dist} {i.version}" if i.dist else "(registered directly)"
        if i.error:
            print(f"{i.name:<12} {where}  FAILED TO LOAD")
            print("    " + str(i.error).replace("\n", "\n    "))
            continue
        print(f"{i.name:<12} {where}")
        print(f"    hooks: {', '.join(i.hooks) if i.hooks else '-'}")
    families = str(len(host.ops)) if args.all else "not loaded (they import torch; --all loads them)"
    print(f"op families: {families}; targets: {', '.join(targets) or '-'}; recipes: {', '.join(recipes)}")
    return 1 if host.failed else 0


def _rules_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="only this target (default: all)")
    p.add_argument("--markdown", action="store_true",
                   help="print the supported-ops document as Markdown (docs/SUPPORTED_OPS.md) instead of plain text")


def _rules_run(args: argparse.Namespace, host: Any) -> int:
    from .rules_doc import rules_markdown, rules_text

    text = (rules_markdown if args.markdown else rules_text)(host, args.target)  # unknown target: RegistryError
    print(text, end="")
    return 0


def _export_configure(p: argparse.ArgumentParser) -> None:
    from ._model_args import add_model_args

    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    p.add_argument("--dialect", default="csk60xx", help="csk60xx (chip toolchain) or qdq (standard ONNX)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the first axis symbolic")
    p.add_argument("--strict", action="store_true", help="refuse float islands")


def _export_run(args: argparse.Namespace, host: Any) -> int:
    import lnn_core as lnn

    from ._model_args import build_quantized

    model, inputs = build_quantized(args, host)
    lnn.export(model, inputs, args.output, dialect=args.dialect, dynamic_batch=args.dynamic_batch,
               strict=args.strict, host=host, allow_uncalibrated=args.allow_uncalibrated)
    print(f"wrote {args.output} ({args.dialect} dialect)")
    return 0


def _verify_configure(p: argparse.ArgumentParser) -> None:
    from ._model_args import add_model_args

    add_model_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout (docs/cli-json.md)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")


def _verify_run(args: argparse.Namespace, host: Any) -> int:
    import lnn_core as lnn

    from ._model_args import build_quantized
    from .cli import progress_bar, result_stream

    with progress_bar(5, f"lnn verify {args.model}", quiet=args.quiet) as step:
        step("build")
        model, inputs = build_quantized(args, host)
        report = lnn.verify(model, inputs, target=args.target, host=host, progress=step,
                            allow_uncalibrated=args.allow_uncalibrated)
    print(report.to_json() if args.json else report.table(), file=result_stream(args))
    return 0 if report.ok else 1


def _analyse_configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    helps = {"weights": "per layer: weight/bias range and std, shares clipped by the int8 grid and the stage-1 "
                        "clamps, outliers",
             "layers": "per layer: float vs int8 output agreement (SQNR dB, cosine, max error in LSBs) on DATA",
             "sensitivity": "per quantized layer: the metric with only that layer int8, ranked"}
    for what, text in helps.items():
        q = sub.add_parser(what, help=text, description=text)
        q.add_argument("model", help="the float model as package.module:factory (imported from the current folder "
                                     "first)")
        if what != "weights":
            q.add_argument("data", metavar="DATA", help="sample inputs: .npy (N, ...) or .npz with x (or x0, x1, "
                                                        "... for several inputs) and optional labels y")
        q.add_argument("--checkpoint", help="a state_dict of the lnn.init model (stage 2) or lnn.constrain")
        q.add_argument("--target", default="csk60xx", help="target id (default csk60xx)")
        q.add_argument("--out-dir", default="lnn-analyse", metavar="DIR",
                       help=f"where {what}.json and {what}.png are written (default lnn-analyse)")
        q.add_argument("--json", action="store_true", help="machine-readable output on stdout (docs/cli-json.md)")
        if what == "weights":
            q.add_argument("-k", type=float, default=4.0, help="outliers: |w - mean| > k * std (default 4)")
        if what == "layers":
            q.add_argument("--threshold-db", type=float, default=20.0,
                           help="a layer below this SQNR is where agreement drops (default 20)")


def _analyse_data(path: str) -> tuple[tuple[Any, ...], Any]:
    """The inputs and optional labels of an .npy/.npz file, as tensors."""
    import numpy as np
    import torch

    from .errors import ModelFileError

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read data '{path}': {exc}", {"expected": ".npy or .npz written by numpy"},
                             "save the sample inputs with numpy.save or numpy.savez(x=..., y=...)", path=path,
                             node=None) from exc
    if isinstance(loaded, np.ndarray):
        xs, y = [loaded], None
    else:
        with loaded:
            keys = list(loaded.keys())
            names = ["x"] if "x" in keys else sorted((k for k in keys if k[:1] == "x" and k[1:].isdigit()),
                                                     key=lambda k: int(k[1:]))
            if not names:
                raise ModelFileError(f"data '{path}' has no inputs", {"arrays": ", ".join(keys) or "none",
                                                                      "expected": "x, or x0, x1, ..."},
                                     "save with numpy.savez(path, x=inputs, y=labels)", path=path, node=None)
            xs = [loaded[k] for k in names]
            y = loaded["y"] if "y" in keys else (loaded["labels"] if "labels" in keys else None)
    n = {len(a) for a in xs} | ({len(y)} if y is not None else set())
    if len(n) != 1 or 0 in n:
        raise ModelFileError(f"data '{path}': inputs and labels differ in length (or are empty)",
                             {"lengths": ", ".join(str(len(a)) for a in xs) + (f"; labels {len(y)}" if y is not None
                                                                              else "")},
                             "give every input and the labels the same first dimension N", path=path, node=None)
    inputs = tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in xs)
    labels = torch.from_numpy(np.asarray(y).astype(np.int64)) if y is not None else None
    return inputs, labels


def _analyse_run(args: argparse.Namespace, host: Any) -> int:
    import logging
    from pathlib import Path

    import lnn_core as lnn

    from . import analyse
    from ._model_args import build_float, load_checkpoint
    from .cli import result_stream
    from .errors import ConfigError

    inputs, labels = _analyse_data(args.data) if args.what != "weights" else ((), None)
    model = lnn.init(build_float(args.model), target=args.target, host=host)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, args.model)
    if args.what == "weights":
        report = analyse.weights(model, k=args.k)
    elif args.what == "layers":
        report = analyse.layers(model, inputs, labels, threshold_db=args.threshold_db)
    else:
        report = analyse.sensitivity(model, inputs, labels)
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = [out / f"{args.what}.json"]
        files[0].write_text(report.to_json() + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"option --out-dir: cannot write '{out}': {exc.strerror}", {"path": exc.filename},
                          "choose a folder you can write to", option="--out-dir", value=str(out),
                          valid="a writable folder") from exc
    try:
        files.append(report.plot(out / f"{args.what}.png"))
    except ModuleNotFoundError:
        logging.getLogger("lnn.analyse").warning("matplotlib is not installed: %s.png not written "
                                                 "(pip install matplotlib)", args.what)
    stream = result_stream(args)
    if args.json:
        print(json.dumps({"analysis": args.what, "model": args.model, **report.to_dict(),
                          "files": [str(f) for f in files]}, indent=2), file=stream)
        return 0
    print(report.table(), file=stream)
    for f in files:
        print(f"wrote {f}", file=stream)
    return 0


def register(registry: Any) -> None:
    registry.add("export", "export a quantized model (package.module:factory + checkpoint) to ONNX",
                 _export_configure, _export_run)
    registry.add("verify", "export, pack and simulate a model and compare every tensor with the training side",
                 _verify_configure, _verify_run)
    registry.add("analyse", "where quantization costs accuracy: weights, layers (float vs int8 per layer) and "
                 "sensitivity (one layer int8 at a time)", _analyse_configure, _analyse_run)
    registry.add("plugins", "list installed plugins, their versions and the hooks each implements",
                 _plugins_configure, _plugins_run)
    registry.add("rules", "list the supported ops and the hardware rules of every target (--markdown: as Markdown)",
                 _rules_configure, _rules_run)
