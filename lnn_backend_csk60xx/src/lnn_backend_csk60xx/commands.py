"""The backend's ``lnn`` subcommands: ``pack``, ``run`` and ``check`` (registered in :mod:`.plugin`).

Exit codes (``lnn_core.cli``): 0 success; 1 the command ran and found a problem (rule violations, a
model that does not fit the memory); 2 bad arguments or unreadable files (raised as
:class:`~lnn_core.errors.LnnError` and printed by the ``lnn`` command).

Plugin ops work everywhere: each command builds the run's :class:`~.ops.OpSet` from the host, so the
dialect reader accepts the plugins' op types, rules include the plugins' rules, ``lnn pack --format``
chooses among the registered package formats, and ``lnn run`` runs the plugins' simulator kernels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lnn_core._model_args import add_fill_arg
from lnn_core.cli import result_stream
from lnn_core.errors import ConfigError, HardwareLimitError, ModelFileError, SimulatorError
from lnn_core.rules import RuleReport

from .target import TARGET_ID

if TYPE_CHECKING:  # numpy is imported by the commands that use it: `lnn --help` imports none of it
    import numpy as np

__all__ = ["configure_pack", "run_pack", "configure_run", "run_run", "configure_check", "run_check", "parse_bytes",
           "parse_input_shapes", "configure_inspect", "run_inspect"]

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2, "MIB": 1024 ** 2}


def parse_bytes(text: str, *, option: str = "--share-mem") -> int:
    """``655360``, ``640K``, ``8M`` (K/M are 1024-based) -> bytes; raises ConfigError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS or int(m.group(1)) <= 0:
        raise ConfigError(f"option {option} has an invalid size {text!r}", {"expected": "a positive byte count, "
                          "optionally with K or M (1024-based)"}, f"write e.g. {option} 655360 or {option} 640K",
                          option=option, value=text, valid="bytes")
    return int(m.group(1)) * _UNITS[unit]


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,32,32", ...]`` -> ``{"x": (1, 3, 32, 32)}``; raises ConfigError on a malformed item."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise ConfigError(f"option --input-shape has an invalid value {item!r}",
                              {"expected": "NAME=D1,D2,... with positive integers"},
                              "write e.g. --input-shape input=1,3,32,32", option="--input-shape", value=item,
                              valid="NAME=D1,D2,...")
        out[name] = shape
    return out


def _common(p: argparse.ArgumentParser, *, sizes: bool = True) -> None:
    if sizes:
        p.add_argument("--share-mem", metavar="BYTES", help="share-memory size (default 655360; K/M suffixes allowed)")
        p.add_argument("--psram", metavar="BYTES", help="PSRAM size (default 8388608)")
        p.add_argument("--input-shape", action="append", metavar="NAME=D1,D2,...",
                       help="fix the shape of a graph input whose shape is symbolic in the file (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout (docs/cli-json.md)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none when stderr is not "
                                                                 "a terminal)")


@contextmanager
def _progress(total: int, desc: str, args: argparse.Namespace | None = None) -> Iterator[Any]:
    """A tqdm bar on stderr: shown when stderr is a terminal, never with ``--quiet``."""
    from tqdm import tqdm

    quiet = bool(getattr(args, "quiet", False))
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=True if quiet else None, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _plugin_ops(host: Any) -> Any:
    from .ops.opset import OpSet

    return OpSet.from_host(host)


def _rules_for(host: Any) -> Any:
    return lambda op_type: host.rules_for(op_type, TARGET_ID)


def _read(path: str, host: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[Any, Any]:
    from .dialect import read_onnx

    ops = _plugin_ops(host)
    return read_onnx(path, input_shapes=shapes, ops=ops), ops


def _sizes(args: argparse.Namespace) -> tuple[int | None, int | None]:
    share = parse_bytes(args.share_mem, option="--share-mem") if args.share_mem else None
    psram = parse_bytes(args.psram, option="--psram") if getattr(args, "psram", None) else None
    return share, psram


# -- lnn pack ----------------------------------------------------------------------------------------


def configure_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="CSK60xx-dialect ONNX file (lnn export or linger 1.x)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL_BIN", help="model.bin to write")
    p.add_argument("--report-dir", metavar="DIR", help="write memory.txt, memory.json and memory.png here")
    p.add_argument("--format", default="lnn", metavar="NAME",
                   help="package format (default 'lnn': lnn's model.bin; plugins may register others)")
    _common(p)


def _pack_summary(**values: Any) -> dict[str, Any]:
    """``lnn pack --json``: one schema for success and refusal (docs/cli-json.md)."""
    out: dict[str, Any] = {"ok": True, "model": None, "format": None, "bytes": None, "memory": None, "spills": [],
                           "splits": [], "fused_relu": 0, "warnings": [], "reports": [], "error": None,
                           "rule_id": None, "limit": None, "actual": None, "offenders": [], "violations": []}
    out.update(values)
    return out


def run_pack(args: argparse.Namespace, host: Any) -> int:
    from .pipeline import pack_graph
    from .report import memory_dict, memory_table, spill_advice, spill_warning, write_reports

    share, psram = _sizes(args)
    shapes = parse_input_shapes(args.input_shape)
    stages = ["read", "rules", "passes", "plan", "pack", "write"]
    with _progress(len(stages), f"lnn pack {Path(args.model).name}", args) as bar:
        def step(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        step("read")
        graph, ops = _read(args.model, host, shapes)
        try:
            res = pack_graph(graph, share_mem=share, psram=psram, ops=ops, rules_for=_rules_for(host), progress=step,
                             package_format=args.format)
        except HardwareLimitError as exc:
            bar.close()
            return _refuse(args, exc)
        step("write")
        out = Path(args.output)
        try:
            out.write_bytes(res.blob)
            reports = ([str(f) for f in write_reports(res.plan, args.report_dir, passes=res.passes, graph=res.graph,
                                                      title=Path(args.model).name)] if args.report_dir else [])
        except OSError as exc:
            raise ConfigError(f"cannot write the packed model or its reports: {exc.strerror}",
                              {"path": exc.filename}, "check the output folder exists and is writable",
                              option="-o", value=str(exc.filename), valid="a writable path") from exc
    warnings = [v for v in (res.rules.violations if res.rules else []) if v.severity != "error"]
    share_rp, psram_rp = res.plan.regions["share_mem"], res.plan.regions["psram"]
    spills = spill_advice(res.plan, res.graph)
    stream = result_stream(args)
    if args.json:
        summary = _pack_summary(model=str(out), format=res.format, bytes=len(res.blob),
                                memory=memory_dict(res.plan, res.passes)["regions"], spills=spills,
                                splits=[s.to_dict() for s in res.passes.splits], fused_relu=len(res.passes.fused),
                                warnings=[v.to_dict() for v in warnings], reports=reports)
        print(json.dumps(summary, indent=2, default=str), file=stream)
        return 0
    print(f"wrote {out} ({len(res.blob)} bytes, {len(res.graph.nodes)} ops)", file=stream)
    print(f"share-memory: {share_rp.size} of {share_rp.limit} bytes (lower bound {share_rp.lower_bound}); "
          f"PSRAM: {psram_rp.size} of {psram_rp.limit} bytes", file=stream)
    spill_line = spill_warning(spills)
    if spill_line:
        print(spill_line, file=sys.stderr)
    if res.plan.package:
        from .report import package_line

        print(package_line(res.plan), file=stream)
    for s in res.passes.splits:
        print(f"split: {s.node} ({s.op_type}) along {s.axis} into {len(s.parts)} parts: {s.reason}", file=stream)
    if res.passes.fused:
        print(f"fused {len(res.passes.fused)} ReLU ops into convolutions", file=stream)
    for v in warnings:
        print(f"warning: {v.op_name} ({v.op_type}): {v.rule_id}: {v.actual}; hint: {v.hint}", file=stream)
    for f in reports:
        print(f"report: {f}", file=stream)
    if not reports:
        print("\n".join(memory_table(res.plan).splitlines()[:3]), file=stream)
    return 0


def _refuse(args: argparse.Namespace, exc: HardwareLimitError) -> int:
    """Packing refused (rules or memory): the reasons, and the report folder's files when one was asked for."""
    from .report import write_failure_reports

    violations = list(getattr(exc, "violations", []) or [])
    reports: list[str] = []
    if args.report_dir:
        try:
            reports = [str(f) for f in write_failure_reports(exc, args.report_dir)]
        except OSError as err:
            raise ConfigError(f"cannot write the reports: {err.strerror}", {"path": err.filename},
                              "check the report folder is writable", option="--report-dir",
                              value=str(err.filename), valid="a writable folder") from err
    stream = result_stream(args)
    if args.json:
        print(json.dumps(_pack_summary(ok=False, format=args.format, error=exc.headline, reports=reports,
                                       rule_id=getattr(exc, "rule_id", None), limit=getattr(exc, "limit", None),
                                       actual=getattr(exc, "actual", None),
                                       offenders=list(getattr(exc, "offenders", None) or []),
                                       violations=[v.to_dict() for v in violations]), indent=2, default=str),
              file=stream)
    else:
        if violations:
            print(RuleReport(TARGET_ID, violations).table(), file=stream)
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        for f in reports:
            print(f"report: {f}", file=stream)
    return 1


# -- lnn run -----------------------------------------------------------------------------------------


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model.bin written by lnn pack")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="one .npy or raw .bin file per graph input: one row of the input's shape (b, ...), or a "
                        "batch of N rows stacked along the first axis (N*b, ...), which gives N rows of output")
    p.add_argument("-o", "--output", action="append", required=True, metavar="OUTPUT",
                   help="output file (.npy or raw .bin); once per graph output, or once for all (name_<i>)")
    p.add_argument("--int", action="store_true", dest="integer",
                   help="feed and return the integer tensors (skip the input quantize and output dequantize ops); "
                        "prints each tensor's exponent (value = integer * 2^-exponent); a float input file is "
                        "quantized with its input's exponent exactly as the model's quantize op would")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="threads for a batch of rows (each row bit-identical to a single run; default 1)")
    p.add_argument("--dump", metavar="DIR", help="write every tensor as DIR/<name>.npy (index.json lists them)")
    p.add_argument("--profile", type=int, metavar="N",
                   help="also time every op over N runs of the (one-row, float) input and print the mean per op, "
                        "the slowest first, and per op kind (with --json: a 'profile' list)")
    p.add_argument("--share-mem", metavar="BYTES",
                   help="share-memory of the board; refused when the model's plan needs more")
    p.add_argument("--max-macs", metavar="MACS",
                   help="refuse a model that needs more work (default 40G, about 10x a ResNet-50; 0: no limit)")
    p.add_argument("--state-in", metavar="NPZ",
                   help="recurrent state to start from (a .npz written by --state-out; state input name -> array); "
                        "the positional inputs are then the model's other inputs")
    p.add_argument("--state-out", metavar="NPZ",
                   help="write the recurrent state after this run (.npz, state input name -> array), to continue "
                        "the sequence with --state-in; without --state-in the run starts from the zero state")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _status(name: str) -> int:
    from ._sim import lib

    return int(getattr(lib, name))


def _apply_exponent(arr: np.ndarray, spec: Any, path: str) -> np.ndarray:
    """--int with a float input file: quantize it with the integer input's exponent, exactly as the model's
    quantize op would (SAT_8(floorf(2^n * x + 0.5f)), NaN -> 0)."""
    import numpy as np

    from ._sim import ffi, lib

    if not np.issubdtype(arr.dtype, np.floating) or spec.dtype != np.int8 or spec.exponent is None:
        return arr
    x = np.ascontiguousarray(arr, dtype=np.float32)
    q = np.empty(x.shape, np.int8)
    lib.lnn_sim_quant_s8(spec.exponent, x.size, ffi.cast("float *", ffi.from_buffer(x)),
                         ffi.cast("int8_t *", ffi.from_buffer(q)))
    print(f"--int: float input '{path}' quantized for {spec.name!r} at exponent {spec.exponent} "
          f"(int8 = saturate(floor(x * 2^{spec.exponent} + 0.5)))", file=sys.stderr)
    return q


def _load_input(path: str, spec: Any) -> np.ndarray:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"cannot read input '{path}': it does not exist", {}, "check the path", path=path,
                             node=None)
    if p.suffix.lower() == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ModelFileError(f"cannot read input '{path}': it is not a .npy array", {"cause": str(exc)},
                                 "write inputs with numpy.save", path=path, node=None) from exc
    if p.suffix.lower() == ".bin":
        data = p.read_bytes()
        want = int(np.prod(spec.shape)) * spec.dtype.itemsize
        if want == 0 or len(data) == 0 or len(data) % want != 0:
            raise SimulatorError(f"raw input '{path}' has {len(data)} bytes; input {spec.name!r} needs {want} "
                                 "per row", {"expected": f"{spec.dtype} {spec.shape} per row, little-endian, C order",
                                             "actual": f"{len(data)} bytes"},
                                 "write it with array.astype('<f4' or the dtype above).tofile(path)",
                                 status=_status("LNN_SIM_E_INPUT"), op_name=None)
        rows = len(data) // want
        shape = (rows * spec.shape[0], *spec.shape[1:]) if spec.shape else (rows,)
        arr = np.frombuffer(data, dtype=spec.dtype.newbyteorder("<")).astype(spec.dtype)
        return arr.reshape(spec.shape if rows == 1 else shape)
    raise ConfigError(f"input '{path}' is neither .npy nor .bin", {"expected": ".npy or raw .bin"},
                      "save the input with numpy.save, or as raw little-endian bytes with a .bin suffix",
                      option="INPUT", value=path, valid=".npy, .bin")


def _load_state(path: str) -> dict[str, np.ndarray]:
    """A recurrent state written by --state-out: an .npz of state input name -> array."""
    import numpy as np

    if not Path(path).is_file():
        raise ModelFileError(f"cannot read the recurrent state '{path}': it does not exist", {},
                             "pass a file written by lnn run --state-out (leave --state-in out to start from zeros)",
                             path=path, node=None)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"cannot read the recurrent state '{path}': it is not an .npz of arrays",
                             {"cause": str(exc)}, "pass a file written by lnn run --state-out", path=path,
                             node=None) from exc


def _save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    import numpy as np

    try:
        with path.open("wb") as f:
            np.savez(f, **state)
    except OSError as exc:
        raise _unwritable(path, "--state-out", exc.strerror or type(exc).__name__) from exc


def _output_paths(outputs: list[str], count: int) -> list[Path]:
    if len(outputs) == count:
        paths = [Path(o) for o in outputs]
    elif len(outputs) == 1:
        base = Path(outputs[0])
        paths = [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(count)]
    else:
        raise ConfigError(f"{len(outputs)} output files for {count} model outputs", {"outputs": ", ".join(outputs)},
                          "give -o once per model output, or once to number them", option="-o", value=outputs,
                          valid=f"1 or {count} files")
    for path in paths:
        if path.suffix.lower() not in (".npy", ".bin"):
            raise ConfigError(f"output '{path}' is neither .npy nor .bin", {}, "name the output file *.npy or *.bin",
                              option="-o", value=str(path), valid=".npy, .bin")
        _writable_file(path, "-o")
    return paths


def _unwritable(path: Path, option: str, why: str, *, cause: str | None = None) -> ConfigError:
    return ConfigError(f"option {option}: cannot write '{path}': {why}", {"cause": cause},
                       "choose a path in an existing folder you can write to", option=option, value=str(path),
                       valid="a writable path")


def _writable_file(path: Path, option: str) -> None:
    """Refuse, before the model runs, an output path that cannot be a file: a folder, or in no folder."""
    parent = path.parent
    if path.is_dir():
        raise _unwritable(path, option, "it is a folder")
    if not parent.exists():
        raise _unwritable(path, option, f"the folder '{parent}' does not exist")
    if not parent.is_dir():
        raise _unwritable(path, option, f"'{parent}' is a file, not a folder")


def _save(path: Path, arr: np.ndarray, option: str = "-o") -> None:
    import numpy as np

    try:
        if path.suffix.lower() == ".bin":
            path.write_bytes(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
        else:
            with path.open("wb") as f:  # np.save(path) would append .npy to a dump file named otherwise
                np.save(f, arr)
    except OSError as exc:
        raise _unwritable(path, option, exc.strerror or type(exc).__name__) from exc


_STEM_MAX = 100  # characters of a tensor name kept in its dump file name (file systems allow 255 bytes)


def _dump_folder(folder: Path) -> None:
    """Create the ``--dump`` folder before the model runs; refuse a file or a place that cannot hold one."""
    if folder.exists() and not folder.is_dir():
        raise _unwritable(folder, "--dump", "it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, "--dump",
                          f"the folder cannot be created ({exc.strerror or type(exc).__name__})") from exc


def _dump_stem(name: str) -> str:
    """A file name stem for a tensor name: safe characters; a long name is cut and keeps a hash of the whole."""
    import zlib

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "tensor"
    if len(stem) > _STEM_MAX:
        stem = f"{stem[:_STEM_MAX - 9]}~{zlib.crc32(name.encode('utf-8')):08x}"
    return stem


def _dump(folder: Path, tensors: dict[str, np.ndarray], specs: dict[str, Any]) -> int:
    index: dict[str, Any] = {}
    used: set[str] = set()
    for name, arr in tensors.items():
        stem = _dump_stem(name)
        file, k = f"{stem}.npy", 1
        while file in used:
            file, k = f"{stem}~{k}.npy", k + 1
        used.add(file)
        _save(folder / file, arr, "--dump")
        spec = specs.get(name)
        index[file] = {"tensor": name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                       "exponent": spec.exponent if spec is not None else None}
    try:
        (folder / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    except OSError as exc:
        raise _unwritable(folder / "index.json", "--dump", exc.strerror or type(exc).__name__) from exc
    return len(index)


def _print_profile(profile: list[Any], runs: int, isa: str, stream: Any, top: int = 15) -> None:
    total = sum(t.us for t in profile) or 1.0
    print(f"profile: {total:.1f} us per run (mean of {runs}, {isa} kernels), the {min(top, len(profile))} slowest ops:",
          file=stream)
    for t in sorted(profile, key=lambda t: -t.us)[:top]:
        print(f"  {t.us:9.1f} us {100 * t.us / total:5.1f} %  {t.kind:<10} {t.name}  ({t.macs} MACs)", file=stream)
    kinds: dict[str, float] = {}
    for t in profile:
        kinds[t.kind] = kinds.get(t.kind, 0.0) + t.us
    print("  by kind: " + ", ".join(f"{k} {v:.1f} us" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])),
          file=stream)


def run_run(args: argparse.Namespace, host: Any) -> int:
    from .limits import parse_macs
    from .simulator import Simulator

    max_macs = parse_macs(args.max_macs) if args.max_macs is not None else None
    path = Path(args.model)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read packed model '{path}': {exc.strerror}", {}, "check the path",
                             path=str(path), node=None) from exc
    sim = Simulator(blob, path=str(path), kernels=_plugin_ops(host).kernels, max_macs=max_macs)
    if sim.missing_kernels:
        raise SimulatorError(f"packed model '{path}' uses plugin ops that no installed plugin runs",
                             {"ops": ", ".join(sim.missing_kernels),
                              "kernels": ", ".join(sorted(sim.kernels)) or "none"},
                             "install the plugin that provides these ops (`lnn plugins` lists what is installed)",
                             status=_status("LNN_SIM_E_EXTERNAL"), op_name=None)
    if args.share_mem:
        board = parse_bytes(args.share_mem, option="--share-mem")
        need = sim.region_sizes["share_mem"]
        if board < need:
            raise ConfigError(f"packed model '{path}' needs {need} bytes of share-memory, more than --share-mem "
                              f"{board}", {"needed": f"{need} bytes (its memory plan)", "given": f"{board} bytes"},
                              f"re-pack for this board: lnn pack MODEL.onnx -o {path.name} --share-mem {board}",
                              option="--share-mem", value=board, valid=f">= {need}")
    stream = None
    if args.state_in or args.state_out:
        if args.integer:
            raise ConfigError("lnn run --state-in/--state-out run the float inputs, not --int", {},
                              "leave --int out (an integer state input is fed as it is anyway)", option="--int",
                              value=True, valid="without --state-in/--state-out")
        stream = sim.stream(_load_state(args.state_in) if args.state_in else None)
    specs = stream.inputs if stream is not None else sim.int_inputs if args.integer else sim.inputs
    if len(args.inputs) != len(specs):
        raise SimulatorError(f"packed model '{path}' takes {len(specs)} inputs, got {len(args.inputs)} files",
                             {"inputs": ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in specs)},
                             "pass one file per graph input, in this order", status=_status("LNN_SIM_E_INPUT"),
                             op_name=None)
    arrays = [_load_input(f, spec) for f, spec in zip(args.inputs, specs)]
    if args.integer:
        arrays = [_apply_exponent(a, spec, f) for a, f, spec in zip(arrays, args.inputs, specs)]
    out_specs = sim.int_outputs if args.integer else sim.outputs
    paths = _output_paths(args.output, len(out_specs))  # every path is checked before the model runs
    batch = any(tuple(a.shape) != tuple(s.shape) for a, s in zip(arrays, specs))
    if stream is not None and (batch or args.dump or args.profile):
        raise ConfigError("lnn run --state-in/--state-out run one chunk of one sequence",
                          {"inputs": ", ".join(f"{s.name} {tuple(a.shape)} (one chunk: {s.shape})"
                                               for a, s in zip(arrays, specs)), "dump": args.dump,
                           "profile": args.profile},
                          "run the chunks one after another, each with --state-in of the previous --state-out "
                          "(and no --dump or --profile)", option="--state-in", value=args.state_in,
                          valid="one chunk, no --dump or --profile")
    if args.state_out:
        _writable_file(Path(args.state_out), "--state-out")
    if args.threads < 1:
        raise ConfigError(f"lnn run --threads must be at least 1, got {args.threads}", {},
                          "pass --threads 2 (or the number of cores)", option="--threads", value=args.threads,
                          valid=">= 1")
    if batch and args.dump:
        raise ConfigError(f"lnn run --dump takes one row of each input, the inputs of '{path}' hold a batch",
                          {"inputs": ", ".join(f"{s.name} {tuple(a.shape)} (one row: {s.shape})"
                                               for a, s in zip(arrays, specs))},
                          "dump one row: save x[:1] (one row of the batch) and run that", option="--dump",
                          value=args.dump, valid="inputs of one row")
    if args.profile is not None and (args.profile < 1 or batch or args.integer):
        raise ConfigError(f"lnn run --profile {args.profile}: profiles time N >= 1 runs of one row of float inputs",
                          {"runs": args.profile, "batch": batch, "--int": args.integer},
                          "pass --profile 20 with one row of each input (x[:1]) and without --int", option="--profile",
                          value=args.profile, valid="N >= 1, one row, float inputs")
    if args.dump:
        _dump_folder(Path(args.dump))
    if stream is not None:
        outputs, dumped = stream.run(arrays), {}
        if args.state_out:
            _save_state(Path(args.state_out), stream.state)
    elif batch:
        outputs, dumped = sim.run_batch(arrays, threads=args.threads, integer=args.integer), {}
    else:
        result = sim.run(arrays, dump=bool(args.dump), integer=args.integer)
        outputs, dumped = result if args.dump else (result, {})
    for p, arr in zip(paths, outputs):
        _save(p, arr)
    n_dumped = _dump(Path(args.dump), dumped, {s.name: s for s in sim.tensors}) if args.dump else 0
    rows = arrays[0].shape[0] // specs[0].shape[0] if batch and specs[0].shape else 1
    profile = sim.profile(arrays, repeat=args.profile) if args.profile else None
    if args.json:
        doc: dict[str, Any] = {
            "outputs": [{"path": str(p), "tensor": s.name, "dtype": str(a.dtype), "shape": list(a.shape),
                         "exponent": s.exponent} for p, s, a in zip(paths, out_specs, outputs)],
            "inputs": [{"tensor": s.name, "dtype": str(s.dtype), "exponent": s.exponent} for s in specs],
            "rows": rows, "dumped": n_dumped, "dump_dir": args.dump,
            "profile": None if profile is None else [{"op": t.name, "kind": t.kind, "macs": t.macs,
                                                      "us": round(t.us, 3)} for t in profile]}
        print(json.dumps(doc, indent=2), file=result_stream(args))
        return 0
    if profile is not None:
        _print_profile(profile, args.profile, sim.isa, result_stream(args))
    if args.integer:
        for s in specs:
            if s.exponent is not None:
                print(f"input {s.name}: {s.dtype} at exponent {s.exponent} (value = integer * 2^{-s.exponent})",
                      file=result_stream(args))
    for p, s, a in zip(paths, out_specs, outputs):
        exp = f" at exponent {s.exponent}" if args.integer and s.exponent is not None else ""
        print(f"wrote {p}: {s.name} {a.dtype} {tuple(a.shape)}{exp}" + (f" ({rows} rows)" if batch else ""),
              file=result_stream(args))
    if args.dump:
        print(f"dumped {n_dumped} tensors to {args.dump} (index.json lists them)", file=result_stream(args))
    return 0


# -- lnn check ---------------------------------------------------------------------------------------


def configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a CSK60xx-dialect ONNX file, or a PyTorch model as package.module:factory "
                                 "(checked randomly initialised, before any training; needs torch)")
    p.add_argument("--checkpoint", help="for a PyTorch model: a state_dict to load first")
    p.add_argument("--format", default="lnn", metavar="NAME",
                   help="judge against this package format too (default 'lnn'; 'thinker': the chip runtime's contract)")
    p.add_argument("--input-dtype", action="append", metavar="[NAME=]DTYPE",
                   help="for a PyTorch model: dtype of an example input, float32 (default), int64 or int32 (token "
                        "ids of an embedding); NAME is the forward() argument or its position")
    add_fill_arg(p)
    _common(p)


def _is_factory(spec: str) -> bool:
    return ":" in spec and not spec.lower().endswith(".onnx") and not Path(spec).exists()


def _check_factory(args: argparse.Namespace, host: Any, share: int | None, psram: int | None) -> Any:
    """``lnn.check`` on a PyTorch model: op rules, calibration on random inputs, export, pack rules, memory."""
    import lnn_core as lnn
    from lnn_core._model_args import build_float, example_inputs, load_checkpoint

    if not args.input_shape:
        raise ConfigError(f"checking model {args.model!r} needs the shape of its inputs", {},
                          "add --input-shape 1,1,8,8 (once per forward() argument)", option="--input-shape",
                          value=None, valid="D1,D2,...")
    model = build_float(args.model)
    inputs = example_inputs(args, model)
    if args.checkpoint:  # the float model: the quantizer state of an lnn.init checkpoint is not used here
        load_checkpoint(model, args.checkpoint, args.model, allow_extra=True)
    options = {k: v for k, v in (("share_mem", share), ("psram", psram)) if v is not None}
    with _progress(5, f"lnn check {args.model}", args) as bar:
        def step(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        step("build")
        return lnn.check(model, inputs, target=TARGET_ID, host=host, options=options, progress=step)


def run_check(args: argparse.Namespace, host: Any) -> int:
    from .check import check_graph

    share, psram = _sizes(args)
    if _is_factory(args.model):
        report = _check_factory(args, host, share, psram)
        print(report.to_json() if args.json else report.table(), file=result_stream(args))
        return 0 if report.ok else 1
    for option, value in (("--input-dtype", args.input_dtype), ("--input-fill", args.input_fill)):
        if value:
            raise ConfigError(f"option {option} is for a PyTorch model (package.module:factory)",
                              {"model": args.model, "rule": "an ONNX file is checked from its declared inputs"},
                              f"leave {option} out for an ONNX file", option=option, value=value,
                              valid="only with package.module:factory")
    if not Path(args.model).exists():  # before the shapes, which are read differently for a factory
        raise ModelFileError(f"cannot read ONNX file '{args.model}': it does not exist", {},
                             "pass an ONNX file, or a PyTorch model as package.module:factory", path=args.model,
                             node=None)
    with _progress(2, f"lnn check {Path(args.model).name}", args) as bar:
        graph, ops = _read(args.model, host, parse_input_shapes(args.input_shape))
        bar.update(1)
        report = check_graph(graph, share_mem=share, psram=psram, rules_for=_rules_for(host), ops=ops,
                             package_format=args.format)
        bar.update(1)
    print(report.to_json() if args.json else report.table(), file=result_stream(args))
    return 0 if report.ok else 1


# -- lnn inspect -------------------------------------------------------------------------------------


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", help="a thinker package written by lnn pack --format thinker (or the vendor packer)")
    p.add_argument("--json", action="store_true", help="every section as JSON on stdout")


def run_inspect(args: argparse.Namespace, host: Any) -> int:
    from .thinker.package import decode

    path = Path(args.package)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read package '{path}': {exc.strerror}", {}, "check the path", path=str(path),
                             node=None) from exc
    info = decode(blob, path=str(path)).to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{path}: thinker package, {len(blob)} bytes, platform {info['platform']}, CRC-24 {info['crc24']:#08x}")
    print("memory:")
    for m in info["memory"]:
        print(f"  {m['role']:<10} {m['type']:<9} {m['bytes']:>10} B")
    print(f"tensors ({len(info['tensors'])}):")
    for t in info["tensors"]:
        exp = "-" if t["exponent"] is None else f"{t['exponent']:g}"
        where = "const" if t["constant"] else "act"
        print(f"  {t['id']:>4} {t['name'][:40]:<40} {t['dtype']:<8} {str(tuple(t['shape'])):<22} n={exp:<4} "
              f"{where:<5} {t['memory']:<9} @{t['offset']:<8} {t['bytes']:>8} B layout {t['layout']}")
    print(f"ops ({len(info['ops'])}):")
    for op in info["ops"]:
        print(f"  {op['index']:>4} {op['type']:<18} in {op['inputs']} out {op['outputs']} temps {op['temps']}"
              f"{' attrs ' + op['attrs'] if op['attrs'] else ''}")
    io = info["io"]
    print("inputs: " + ", ".join(f"{i['name']} (t{i['id']})" for i in io["inputs"]))
    print("outputs: " + ", ".join(f"{o['name']} (t{o['id']})" for o in io["outputs"]))
    print(f"dma ({len(info['dma'])}):")
    for k, d in enumerate(info["dma"]):
        print(f"  {k:>4} t{d['src']} -> t{d['dst']} {d['bytes']} B from {d['from']}")
    return 0
