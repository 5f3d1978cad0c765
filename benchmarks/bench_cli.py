"""Start-up cost of the ``lnn`` command: ``python benchmarks/bench_cli.py [--repeat N] [--json]``.

Runs, as a user does (a new process each time, through the installed ``lnn`` script):

- ``lnn --help``;
- ``lnn pack`` of the linger ResNet-18 (``../shared/data/linger-demo/resnet18-12-regular.onnx``);
- ``lnn run`` of the packed model on the first row of ``resnet18_inputs.npy``;

each beside ``python -c "import numpy, onnx"`` (the floor every command that reads ONNX pays) and
``python -c pass`` (the interpreter alone), timed in the same run: one baseline, then one command, in
turn, so both see the same machine state. Reported per command: the median wall time of ``--repeat``
runs (default 7, after one untimed warm-up run of each), the baseline's median, ``ratio`` (command
median / baseline median) and ``pairs`` (median of the per-pair ratios, which a loaded machine
disturbs less).

Targets, for an idle 2-core machine: ``lnn --help`` <= 0.35 s, ``lnn pack`` <= 0.8 s, ``lnn run``
<= 0.6 s. The exit code is 1 when a median misses its target. ``--own-plugins`` disables every
installed ``lnn`` plugin that is not one of this repository's distributions (what the ``full`` tox
env installs): a third-party plugin whose hooks import torch adds torch's import time to the
commands that call those hooks.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "linger-demo"
OWN_DISTRIBUTIONS = {"lnn-core", "lnn-ops-builtin", "lnn-backend-csk60xx"}
TARGETS = {"lnn --help": 0.35, "lnn pack": 0.8, "lnn run": 0.6}
BASELINE = "import numpy, onnx"


def _lnn_command() -> list[str]:
    """The installed ``lnn`` script beside this interpreter (else on PATH; else ``python -m lnn_core.cli``)."""
    script = Path(sys.executable).with_name("lnn")
    if script.is_file():
        return [str(script)]
    found = shutil.which("lnn")
    return [found] if found else [sys.executable, "-m", "lnn_core.cli"]


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
    return dt


def _pairs(cmd: list[str], base: list[str], repeat: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    _wall(base, env), _wall(cmd, env)  # warm-up: page cache, .pyc files
    times, bases = [], []
    for _ in range(repeat):
        bases.append(_wall(base, env))
        times.append(_wall(cmd, env))
    return times, bases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each command (default 7)")
    ap.add_argument("--data", type=Path, default=DATA, help=f"the linger-demo folder (default {DATA})")
    ap.add_argument("--own-plugins", action="store_true",
                    help="disable the installed lnn plugins that are not this repository's")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args(argv)
    model = args.data / "resnet18-12-regular.onnx"
    if not model.is_file():
        print(f"bench_cli: {model} is absent; pass --data", file=sys.stderr)
        return 2

    env = dict(os.environ)
    env.pop("LNN_PLUGIN_AUTOLOAD", None)
    plugins = {ep.name: (ep.dist.metadata["Name"] if ep.dist else None) for ep in md.entry_points(group="lnn")}
    disabled = sorted(n for n, d in plugins.items() if d not in OWN_DISTRIBUTIONS) if args.own_plugins else []
    env["LNN_DISABLE_PLUGINS"] = ",".join(disabled)

    import numpy as np

    lnn = _lnn_command()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        x, blob = Path(tmp) / "x.npy", Path(tmp) / "model.bin"
        np.save(x, np.load(args.data / "resnet18_inputs.npy")[:1])
        floor, _ = _pairs([sys.executable, "-c", "pass"], [sys.executable, "-c", "pass"], args.repeat, env)
        commands = {
            "lnn --help": [*lnn, "--help"],
            "lnn pack": [*lnn, "pack", str(model), "-o", str(blob)],
            "lnn run": [*lnn, "run", str(blob), str(x), "-o", str(Path(tmp) / "y.npy")],
        }
        for name, cmd in commands.items():
            times, bases = _pairs(cmd, [sys.executable, "-c", BASELINE], args.repeat, env)
            med, base = statistics.median(times), statistics.median(bases)
            rows.append({"command": name, "median_s": round(med, 3), "baseline_s": round(base, 3),
                         "ratio": round(med / base, 2),
                         "pairs": round(statistics.median(t / b for t, b in zip(times, bases)), 2),
                         "min_s": round(min(times), 3), "target_s": TARGETS[name], "met": med <= TARGETS[name]})

    info = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "load": _load(), "repeat": args.repeat,
            "lnn": " ".join(lnn), "plugins": {n: d for n, d in sorted(plugins.items()) if n not in disabled},
            "disabled": disabled, "python_c_pass_s": round(statistics.median(floor), 3), "rows": rows}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"python {info['python']}, {info['cpus']} CPUs, load average {info['load']}, median of "
              f"{args.repeat} runs; `python -c pass` takes {info['python_c_pass_s']:.3f} s")
        print("plugins: " + ", ".join(f"{n} ({d})" for n, d in info["plugins"].items())
              + (f"; disabled: {', '.join(disabled)}" if disabled else ""))
        print(f"baseline: python -c \"{BASELINE}\"\n")
        print(f"{'command':<12} {'median s':>9} {'baseline s':>11} {'ratio':>6} {'pairs':>6} {'min s':>7} "
              f"{'target s':>9}  met")
        for r in rows:
            print(f"{r['command']:<12} {r['median_s']:>9.3f} {r['baseline_s']:>11.3f} {r['ratio']:>6.2f} "
                  f"{r['pairs']:>6.2f} {r['min_s']:>7.3f} {r['target_s']:>9.2f}  {'yes' if r['met'] else 'NO'}")
        print("\ntargets are for an idle 2-core machine; on a busy one compare `ratio`/`pairs` between runs")
    return 0 if all(r["met"] for r in rows) else 1


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not on this platform
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
