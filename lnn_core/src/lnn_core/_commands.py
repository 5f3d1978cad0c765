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
    # building the host imported every plugin (import failures are in host.failed); these registries are cheap
    targets, recipes = list(host.targets), list(host.recipes)
    if args.all:
        host.load_all()
    infos = host.plugin_infos()
    if args.json:
        print(json.dumps([{"name": i.name, "distribution": i.dist, "version": i.version,
                           "entry_point": i.entry_point, "hooks": list(i.hooks),
                           "error": str(i.error) if i.error else None} for i in infos], indent=2))
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
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _verify_run(args: argparse.Namespace, host: Any) -> int:
    import lnn_core as lnn

    from ._model_args import build_quantized

    model, inputs = build_quantized(args, host)
    report = lnn.verify(model, inputs, target=args.target, host=host, allow_uncalibrated=args.allow_uncalibrated)
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def register(registry: Any) -> None:
    registry.add("export", "export a quantized model (package.module:factory + checkpoint) to ONNX",
                 _export_configure, _export_run)
    registry.add("verify", "export, pack and simulate a model and compare every tensor with the training side",
                 _verify_configure, _verify_run)
    registry.add("plugins", "list installed plugins, their versions and the hooks each implements",
                 _plugins_configure, _plugins_run)
    registry.add("rules", "list the supported ops and the hardware rules of every target (--markdown: as Markdown)",
                 _rules_configure, _rules_run)
