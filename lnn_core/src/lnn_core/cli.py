"""The ``lnn`` command. Subcommands come from plugins through ``lnn_register_commands``.

Exit codes: 0 success, 1 the command ran and found a problem (violations, mismatches; ``lnn plugins``: a
plugin was skipped), 2 usage or input error (bad arguments, unreadable files, broken plugins when asked
to be strict). A plugin that fails (import, hook, garbage result, a command whose arguments cannot be set
up) is skipped with a warning naming it; ``lnn plugins`` always runs and lists it.

Start-up cost: the host imports every plugin module (cheap by convention) and fills only the
registries a command uses; ``lnn --help``, ``lnn plugins``, ``lnn pack``, ``lnn run`` and ``lnn check
FILE.onnx`` import no torch (``benchmarks/bench_cli.py`` measures them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import LnnError
from .plugins import PluginHost

__all__ = ["main", "build_parser"]


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    """The ``lnn`` parser with every registered command.

    A command whose ``configure(parser)`` raises (a plugin's bug, two arguments with one name) is tried on a
    scratch parser first: its plugin is skipped like any plugin that fails in a hook, and the other commands stay.
    """
    while not _configure_all_on_scratch(host):  # each failed round skips one plugin
        pass
    parser = argparse.ArgumentParser(
        prog="lnn", description="Quantization-aware training and deployment for ListenAI CSK60xx chips.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in sorted(host.commands.items()):
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _configure_all_on_scratch(host: PluginHost) -> bool:
    commands = host.commands
    for name, cmd in commands.items():
        try:
            cmd.configure(argparse.ArgumentParser(prog=f"lnn {name}"))
        except Exception as exc:  # third-party code: its plugin is skipped (on_error="raise": raised)
            host._skip(commands.owner_of(name), "lnn_register_commands", exc,
                       headline=f"plugin {commands.owner_of(name)!r} registers command {name!r}, whose arguments "
                                "cannot be set up, so it was skipped")
            return False
    return True


def main(argv: Sequence[str] | None = None, *, host: PluginHost | None = None) -> int:
    """Run the ``lnn`` command line on ``argv``; ``host`` defaults to one with the installed plugins."""
    try:
        host = host if host is not None else PluginHost()
        parser = build_parser(host)  # fills the command registry: a duplicate command name fails here
    except LnnError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args, host) or 0)
    except LnnError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a defect in the command's code, not in the user's input: no traceback by default
        return _internal_error(args, host, exc)


def _internal_error(args: argparse.Namespace, host: PluginHost, exc: Exception) -> int:
    """One message naming the command and the plugin that provides it; the traceback with ``-v``."""
    import traceback

    from .errors import format_message

    command = getattr(args, "command", None) or "?"
    try:
        source = host.commands.source_of(command)
    except (KeyError, LnnError):
        source = "an unknown plugin"
    plugin = source.split(" ", 1)[0].strip("'") if source else "?"
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(format_message(f"lnn {command}: internal error in plugin {source}",
                         {"cause": f"{type(exc).__name__}: {exc}"},
                         f"this is a defect of the command, not of your input: run again with -v for the traceback "
                         f"and report it; to run without the plugin set LNN_DISABLE_PLUGINS={plugin}"), file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
