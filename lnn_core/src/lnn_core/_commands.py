"""Commands the core contributes itself: ``lnn plugins`` and ``lnn rules``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _plugins_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _plugins_run(args: argparse.Namespace, host: Any) -> int:
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
    print(f"op families: {len(host.ops)}; targets: {', '.join(host.targets) or '-'}; "
          f"recipes: {', '.join(host.recipes)}")
    return 1 if host.failed else 0


def _rules_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="only this target (default: all)")
    p.add_argument("--markdown", action="store_true", help="write the supported-ops document")


def _rules_run(args: argparse.Namespace, host: Any) -> int:
    from .rules_doc import rules_markdown

    text = rules_markdown(host, args.target)
    print(text, end="")
    return 0


def register(registry: Any) -> None:
    registry.add("plugins", "list installed plugins, their versions and the hooks each implements",
                 _plugins_configure, _plugins_run)
    registry.add("rules", "list the hardware rules of every target (--markdown: docs/SUPPORTED_OPS.md)",
                 _rules_configure, _rules_run)
