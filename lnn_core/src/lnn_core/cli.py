"""The ``lnn`` command. Subcommands come from plugins through ``lnn_register_commands``.

Exit codes: 0 success, 1 the command ran and found a problem (violations, mismatches; ``lnn plugins``: a
plugin was skipped), 2 usage or input error (bad arguments, unreadable files, broken plugins when asked
to be strict) or a crash of the command (one line on stderr; ``-v`` adds the traceback).

``--json``: the result is the only thing on stdout. A command writes its result to ``result_stream(args)``; while
a command with ``--json`` runs, everything else written to stdout (``print`` in user code, torch's graph dumps and
C-level messages on file descriptor 1) goes to stderr, and the result follows on stdout when the command ends (a
command that writes nothing there gets what it printed, as before).
The schemas are in docs/cli-json.md.

A plugin that fails (import, hook, garbage result, a command whose arguments cannot be set up) is skipped with a
warning naming it; ``lnn plugins`` always runs and lists it.

Start-up cost: the host imports every plugin module (cheap by convention) and fills only the
registries a command uses; ``lnn --help``, ``lnn plugins``, ``lnn pack``, ``lnn run`` and ``lnn check
FILE.onnx`` import no torch (``benchmarks/bench_cli.py`` measures them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from .errors import LnnError
from .plugins import PluginHost

__all__ = ["main", "build_parser", "result_stream", "progress_bar"]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A tqdm bar on stderr over ``total`` named stages; yields ``step(stage_name)``. Shown only when stderr is a
    terminal (tqdm's ``disable=None``) and never with ``quiet``."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=True if quiet else None, leave=False)

    def step(stage: str) -> None:
        bar.set_postfix_str(stage)
        bar.update(1)

    try:
        yield step
    finally:
        bar.close()


def result_stream(args: argparse.Namespace) -> TextIO:
    """Where a command writes its result (``args.stdout``; ``sys.stdout`` when the command is called directly)."""
    return getattr(args, "stdout", None) or sys.stdout


@contextlib.contextmanager
def _stdout_for_results(args: argparse.Namespace) -> Iterator[None]:
    """With ``--json``: the command's result (written to ``args.stdout``) is all that reaches stdout.

    ``sys.stdout`` points to stderr while the command runs, and so does file descriptor 1 (torch's C++ side prints
    there); the result, gathered in a buffer, is written once both are restored.
    """
    if not getattr(args, "json", False):
        args.stdout = sys.stdout
        yield
        return
    out, buffer = sys.stdout, io.StringIO()
    args.stdout = buffer
    saved = None
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        out.flush()
        sys.stderr.flush()
        saved = (1, os.dup(1))  # file descriptor 1 itself: C code writes there whatever sys.stdout is
        os.dup2(2, 1)
    echo = _Echo(sys.stderr)
    sys.stdout = echo
    try:
        yield
    finally:
        sys.stdout = out
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved[1], saved[0])
            os.close(saved[1])
        # a command that prints its result instead of writing it to args.stdout (a plugin's older command) still
        # gets it on stdout, as before, with whatever else was printed
        out.write(buffer.getvalue() or echo.copy.getvalue())
        out.flush()


class _Echo(io.TextIOBase):
    """``sys.stdout`` during a ``--json`` command: writes go to stderr, and a copy is kept."""

    def __init__(self, target: TextIO) -> None:
        self.target, self.copy = target, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def writable(self) -> bool:
        return True


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
        with _stdout_for_results(args):
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
    """One line naming the command, the plugin that provides it and the exception; the traceback with ``-v``."""
    import traceback

    command = getattr(args, "command", None) or "?"
    try:
        source = host.commands.source_of(command)
    except (KeyError, LnnError):
        source = "an unknown plugin"
    plugin = source.split(" ", 1)[0].strip("'") if source else "?"
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    cause = " ".join(str(exc).split()) or "(no message)"
    print(f"lnn {command}: internal error in plugin {source}: {type(exc).__name__}: {cause[:300]} (a defect of the "
          f"command, not of your input; hint: run again with -v for the traceback and report it; "
          f"LNN_DISABLE_PLUGINS={plugin} runs without the plugin)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
