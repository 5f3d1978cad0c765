"""Structure-aware fuzz of the C simulator's loader and executor (issue 12): mutated model.bin images, most with a
valid CRC so that the structural, schedule and op checks are reached, run through ``Simulator``.

    python lnn_backend_csk60xx/benchmarks/fuzz_modelbin.py --cases 20000 --asan      # the full campaign
    python lnn_backend_csk60xx/benchmarks/fuzz_modelbin.py --cases 500               # quick, normal build

``--asan`` copies the backend to ``--build-dir``, builds its simulator there with ``LNN_SIM_DEBUG=1`` (ASan, UBSan,
``-fno-wrapv``), and runs the cases in worker processes with the sanitizers preloaded and set to halt on the first
report; the working tree's own build is left alone. A worker that dies is restarted after the case it died on, and
the case is reported with the sanitizer's output. Nothing here imports torch (its C++ runtime clashes with ASan).

Seeds: three packed models (conv/join/pool/add/alias/linear; conv+bias+fused ReLU; a plugin op with a Python kernel).
Mutation classes: ``truncate`` and ``flip`` (no CRC fix: every one must be refused), ``field`` and ``byte`` (32-bit
structural fields and payload bytes, CRC re-fixed), ``reorder``/``move``/``drop``/``duplicate``/``self-write``/
``rewire`` (schedule edits), ``offset`` (placement), ``exponent``, ``attr`` (op attributes), ``dims`` (geometry), and
``json`` (the plugin op's attribute JSON: deep nesting, size, invalid text, brackets inside strings).

Outcomes per case: ``refused`` (``ModelFileError``), ``same`` or ``changed`` (loaded and ran). The verdict on a
package that loads is decided by decoding it and the original: when both hold the same computation -- the same
ops with the same attributes reading and writing the same tensors (name, dtype, shape, exponent, flags, constant
bytes), the same graph inputs and outputs, only op order, tensor offsets or the plan differing -- the mutation is
*semantically neutral* and the output must equal the original's bit for bit. Any other package that loads is a
different valid model: it must run deterministically (the same output from a second run after a run on other
data, and from a fresh ``Simulator``). Findings: any other exception type (a traceback), a loaded raw corruption, a
neutral package with another output, a nondeterministic run, or a worker killed by a sanitizer or a signal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parent
sys.path.insert(0, str(BACKEND / "tests"))  # _modelbin (an independent model.bin reader/writer), model builders

KINDS = ["truncate", "flip", "field", "byte", "reorder", "move", "drop", "duplicate", "self-write", "rewire",
         "offset", "exponent", "attr", "dims", "json"]
RAW = {"truncate", "flip"}
MAX_MACS = 10 ** 8  # mutants above this are refused for work (the seeds need ~10^5): keeps the campaign fast


# -- seeds ------------------------------------------------------------------------------------------------------------

def _plugin_ops() -> Any:
    import _neg_plugin

    import lnn_backend_csk60xx.plugin as backend_plugin
    from lnn_backend_csk60xx.ops import OpSet
    from lnn_core.testing import isolated_host

    return OpSet.from_host(isolated_host([backend_plugin, _neg_plugin]))


def seeds() -> list[dict[str, Any]]:
    """name, blob, input arrays, kernels, original output."""
    from test_packer import _small_model
    from test_plugin_ops import neg_graph
    from test_sim_schedule import _model

    from lnn_backend_csk60xx.dialect import read_onnx
    from lnn_backend_csk60xx.pipeline import pack_graph
    from lnn_backend_csk60xx.simulator import Simulator

    rng = np.random.default_rng(0)
    ops = _plugin_ops()
    g = neg_graph()
    g.nodes[1].attrs["note"] = "[brackets {in} a string]"
    out = []
    for name, blob, kernels in (
            ("sched", pack_graph(read_onnx(_model()), fuse_relu=False).blob, {}),
            ("small", pack_graph(read_onnx(_small_model())).blob, {}),
            ("plugin", pack_graph(g, ops=ops).blob, ops.kernels)):
        sim = Simulator(blob, kernels=kernels)
        xs = [(rng.standard_normal(s.shape) * 6).astype(s.dtype) for s in sim.inputs]
        out.append({"name": name, "blob": blob, "inputs": xs, "kernels": kernels, "output": sim.run(xs)})
    return out


# -- mutations --------------------------------------------------------------------------------------------------------

def _json_text(rng: np.random.Generator) -> str:
    pick = int(rng.integers(8))
    depth = int(rng.choice([31, 32, 33, 64, 1000, 100_000]))
    if pick == 0:
        return '{"bias":' + "[" * depth + "1" + "]" * depth + "}"
    if pick == 1:
        return '{"bias":3,"s":"' + "[" * depth + '"}'  # brackets inside a string
    if pick == 2:
        return '{"bias":"' + "x" * int(rng.choice([10, 1 << 20, (1 << 20) + 1])) + '"}'
    if pick == 3:
        return str(rng.choice(["", "[", "{", "[1,2]", "3", "null", '"s"', '{"a":"\\', "{]", '{"bias":1e999999}']))
    if pick == 4:
        return '{"bias":' + "1" * int(rng.choice([10, 5000])) + "}"
    if pick == 5:
        return '{"bias":' + str(int(rng.integers(-300, 300))) + "}"
    if pick == 6:
        return "{" * depth + "}" * depth
    return '{"bias":2,"\\u00e9\\n":[[{"a":[]}]]}'


def mutate(seed: dict[str, Any], kind: str, rng: np.random.Generator) -> bytes:
    from _modelbin import ModelBin, refix

    blob = seed["blob"]
    if kind == "truncate":
        return blob[:int(rng.integers(0, len(blob)))]
    if kind == "flip":
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind in ("field", "byte"):
        data = bytearray(blob)
        start = 64
        for _ in range(int(rng.integers(1, 3))):
            if kind == "byte":
                data[int(rng.integers(start, len(data)))] ^= 1 << int(rng.integers(8))
                continue
            pos = int(rng.integers(start // 4, len(data) // 4)) * 4
            value = int(rng.choice([0, 1, 2, 3, 0xFF, 64, 1 << 20, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                    int(rng.integers(0, 1 << 32))]))
            data[pos:pos + 4] = value.to_bytes(4, "little")
        return refix(data)
    m = ModelBin.read(blob)
    n_ops = len(m.ops)
    acts = [i for i, t in enumerate(m.tensors) if t[3] != 0]
    ints = [i for i, t in enumerate(m.tensors) if t[1] != 1]
    if kind == "reorder":
        i, j = (int(v) for v in rng.choice(n_ops, 2, replace=False))
        m.ops[i], m.ops[j] = m.ops[j], m.ops[i]
    elif kind == "move":
        op = m.ops.pop(int(rng.integers(n_ops)))
        m.ops.insert(int(rng.integers(n_ops)), op)
    elif kind == "drop":
        del m.ops[int(rng.integers(n_ops))]
    elif kind == "duplicate":
        k = int(rng.integers(n_ops))
        m.ops.insert(int(rng.integers(n_ops + 1)), m.ops[k])
    elif kind == "self-write":
        k = int(rng.integers(n_ops))
        code, name, ins, outs, attrs = m.ops[k]
        m.ops[k] = (code, name, ins, [ins[int(rng.integers(len(ins)))]] + outs[1:], attrs)
    elif kind == "rewire":
        k = int(rng.integers(n_ops))
        code, name, ins, outs, attrs = m.ops[k]
        ins = list(ins)
        ins[int(rng.integers(len(ins)))] = int(rng.integers(-1, len(m.tensors)))
        m.ops[k] = (code, name, ins, outs, attrs)
    elif kind == "offset":
        i = acts[int(rng.integers(len(acts)))]
        arena = next(size for region, size, _ in m.plan if region == m.tensors[i][3])
        m.tensors[i] = (*m.tensors[i][:6], 64 * int(rng.integers(0, max(1, (arena - m.tensors[i][7]) // 64 + 1))),
                        m.tensors[i][7])
    elif kind == "exponent":
        i = ints[int(rng.integers(len(ints)))]
        t = m.tensors[i]
        m.tensors[i] = (*t[:5], int(rng.choice([t[5] - 1, t[5] + 1, int(rng.integers(-80, 81)), 64, -64, 65, -65])),
                        *t[6:])
    elif kind == "attr":
        with_attrs = [k for k, op in enumerate(m.ops) if op[4] and not isinstance(op[4][0], str)] or [0]
        k = with_attrs[int(rng.integers(len(with_attrs)))]
        code, name, ins, outs, attrs = m.ops[k]
        attrs = list(attrs) or [0]
        a = int(rng.integers(len(attrs)))
        attrs[a] = int(rng.choice([attrs[a] + 1, attrs[a] - 1, attrs[a] * 2, 0, 1, -1, 4096, 4097, 65536,
                                   2 ** 31 - 1, -2 ** 31]))
        if code == 23:  # external op: string references
            attrs[a] = int(rng.integers(0, len(m._strings) + 8))
        m.ops[k] = (code, name, ins, outs, attrs)
    elif kind == "dims":
        i = int(rng.integers(len(m.tensors)))
        name, code, dims, region, flags, exponent, offset, size = m.tensors[i]
        if dims:
            dims = list(dims)
            d = int(rng.integers(len(dims)))
            dims[d] = int(rng.choice([dims[d] + 1, max(1, dims[d] - 1), dims[d] * 2, 1, 4096, 65536]))
            esize = size // max(1, int(np.prod(m.tensors[i][2], dtype=np.int64)))
            size = int(np.prod(dims, dtype=np.int64)) * esize
            if region != 0:
                arena = next(s for r, s, _ in m.plan if r == region)
                if offset + size > arena:  # grow the arena so that the geometry is what the loader judges
                    m.plan = [(r, max(s, -(-(offset + size) // 64) * 64) if r == region else s, p)
                              for r, s, p in m.plan]
            m.tensors[i] = (name, code, tuple(dims), region, flags, exponent, offset, size)
    elif kind == "json":
        ext = [k for k, op in enumerate(m.ops) if op[0] == 23]
        if ext:
            k = ext[0]
            code, name, ins, outs, attrs = m.ops[k]
            op_type = m._strings[attrs[0]:m._strings.index(b"\0", attrs[0])].decode()
            m.ops[k] = (code, name, ins, outs, [op_type, _json_text(rng)])
    return m.build()


# -- the verdict ------------------------------------------------------------------------------------------------------

def canonical(blob: bytes) -> Any:
    """What a package computes, without op order, offsets and plan (see the module docstring)."""
    from _modelbin import ModelBin

    m = ModelBin.read(blob)
    strings = bytes(m._strings)

    def tensor(i: int) -> Any:
        if i < 0:
            return None
        name, code, dims, region, flags, exponent, offset, size = m.tensors[i]
        const = bytes(m.weights[offset:offset + size]) if region == 0 else None
        return name, code, dims, exponent, flags, region == 0, const

    def attr(op: tuple) -> Any:
        if op[0] != 23:
            return tuple(op[4])
        return tuple(strings[a:strings.index(b"\0", a)] for a in op[4])

    ops = sorted(repr((op[0], op[1], tuple(tensor(i) for i in op[2]), tuple(tensor(i) for i in op[3]), attr(op)))
                 for op in m.ops)
    return ops, [tensor(i) for i in m.inputs], [tensor(i) for i in m.outputs]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and
                                    np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def run_case(seed: dict[str, Any], index: int, base: int, canon: Any) -> tuple[str, str, str | None]:
    """(kind, outcome, finding or None) of case ``index``."""
    from lnn_backend_csk60xx.simulator import Simulator
    from lnn_core.errors import ModelFileError, SimulatorError

    rng = np.random.default_rng([base, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if seed["name"] == "plugin" and rng.random() < 0.25:
        kind = "json"
    elif kind == "json" and seed["name"] != "plugin":
        kind = "attr"
    try:
        data = mutate(seed, kind, rng)
    except Exception:  # a mutation the reader cannot take apart (a field edit of the writer's own layout)
        return kind, "skipped", None
    try:
        sim = Simulator(data, kernels=seed["kernels"], max_macs=MAX_MACS)
    except ModelFileError:
        return kind, "refused", None
    except Exception:
        return kind, "traceback", f"load: {traceback.format_exc(limit=4)}"
    if kind in RAW:
        return kind, "loaded", "a raw corruption (no CRC fix) loaded"
    try:
        xs = [x if (x.shape, x.dtype) == (s.shape, s.dtype) else
              (rng.standard_normal(s.shape) * 6).astype(s.dtype) if s.dtype.kind == "f" else
              rng.integers(-128, 128, s.shape).astype(s.dtype) for x, s in zip(seed["inputs"], sim.inputs)]
        if len(xs) != len(sim.inputs):
            return kind, "changed", None
        other = [(np.asarray(x) * 0 + 1).astype(x.dtype) for x in xs]
        first = sim.run(xs)
        sim.run(other)
        again = sim.run(xs)
        fresh = Simulator(data, kernels=seed["kernels"], max_macs=MAX_MACS).run(xs)
    except SimulatorError:
        return kind, "run-refused", None
    except Exception:
        return kind, "traceback", f"run: {traceback.format_exc(limit=4)}"
    if not (_same(first, again) and _same(first, fresh)):
        return kind, "nondeterministic", "two runs of one package differ"
    neutral = False
    try:
        neutral = canonical(data) == canon
    except Exception:
        neutral = False
    if neutral:
        if not _same(first, seed["output"]):
            return kind, "wrong", "a semantically neutral package computes another output"
        return kind, "same", None
    return kind, "changed", None


# -- workers and the campaign -----------------------------------------------------------------------------------------

def worker(start: int, end: int, base: int, out: Path) -> int:
    all_seeds = seeds()
    canons = [canonical(s["blob"]) for s in all_seeds]
    counts: Counter[str] = Counter()
    findings = []
    progress = out / f"progress-{start}.txt"
    for i in range(start, end):
        progress.write_text(str(i))
        s = i % len(all_seeds)
        kind, outcome, finding = run_case(all_seeds[s], i, base, canons[s])
        counts[f"{kind}:{outcome}"] += 1
        if finding:
            findings.append({"case": i, "seed": all_seeds[s]["name"], "kind": kind, "outcome": outcome,
                             "finding": finding})
    (out / f"result-{start}.json").write_text(json.dumps({"counts": counts, "findings": findings}))
    progress.unlink()
    return 0


def _asan_env(build_dir: Path) -> dict[str, str]:
    """Copy the backend to build_dir, build its simulator with LNN_SIM_DEBUG=1, and return the workers' env."""
    src = build_dir / "src" / "lnn_backend_csk60xx"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(BACKEND / "csrc", build_dir / "csrc", ignore=shutil.ignore_patterns("*.o"))
    shutil.copytree(BACKEND / "src" / "lnn_backend_csk60xx", src,
                    ignore=shutil.ignore_patterns("*.so", "*.o", "_sim.c", "__pycache__"))
    subprocess.run([sys.executable, str(src / "_sim_build.py")], check=True,
                   env={**os.environ, "LNN_SIM_DEBUG": "1"})
    libs = [subprocess.run(["gcc", f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in ("libasan.so", "libubsan.so")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(build_dir / "src"), os.environ.get("PYTHONPATH", "")]),
            "LD_PRELOAD": ":".join(libs), "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def campaign(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("result-*.json"), *out.glob("progress-*.txt")]:
        old.unlink()
    env = _asan_env(Path(args.build_dir)) if args.asan else dict(os.environ)
    if args.asan:  # prove that the workers run the instrumented build
        probe = subprocess.run([sys.executable, "-c", "import lnn_backend_csk60xx._sim as s; print(s.__file__)"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        print(f"sanitized simulator: {probe}")
        assert probe.startswith(str(Path(args.build_dir).resolve())), probe
    t0 = time.time()
    chunk = -(-args.cases // args.jobs)
    pending = [(s, min(s + chunk, args.cases)) for s in range(0, args.cases, chunk)]
    crashes = []
    running: list[tuple[subprocess.Popen, int, int, Path]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            s, e = pending.pop(0)
            log = out / f"worker-{s}.log"
            cmd = [sys.executable, __file__, "--worker", str(s), str(e), "--seed", str(args.seed), "--out", str(out)]
            with log.open("w") as f:
                running.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), s, e, log))
        time.sleep(0.2)
        for item in list(running):
            proc, s, e, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if (out / f"result-{s}.json").exists():
                continue
            marker = out / f"progress-{s}.txt"
            at = int(marker.read_text()) if marker.exists() else None  # None: it died packing the seeds
            crashes.append({"case": at, "returncode": proc.returncode, "log": log.read_text()[-3000:]})
            print(f"worker died at case {at} (exit {proc.returncode})", file=sys.stderr)
            marker.unlink(missing_ok=True)
            if at is not None and at + 1 < e:
                pending.append((at + 1, e))
    counts: Counter[str] = Counter()
    findings = []
    for f in out.glob("result-*.json"):
        r = json.loads(f.read_text())
        counts.update(r["counts"])
        findings += r["findings"]
    by_outcome: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    for key, n in counts.items():
        kind, outcome = key.split(":")
        by_outcome[outcome] += n
        by_kind.setdefault(kind, Counter())[outcome] += n
    sanitizer = sum("Sanitizer" in c["log"] or "runtime error" in c["log"] for c in crashes)
    summary = {"cases": args.cases, "seconds": round(time.time() - t0, 1), "asan": args.asan,
               "outcomes": dict(sorted(by_outcome.items())),
               "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
               "crashes": len(crashes), "sanitizer_reports": sanitizer, "findings": len(findings)}
    (out / "summary.json").write_text(json.dumps({**summary, "crash_logs": crashes, "finding_list": findings},
                                                 indent=2))
    print(json.dumps(summary, indent=2))
    for f in findings[:20]:
        print(f"finding: case {f['case']} ({f['seed']}, {f['kind']}): {f['outcome']}: {f['finding']}")
    for c in crashes[:5]:
        print(f"crash at case {c['case']}:\n{c['log']}")
    return 1 if crashes or findings else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1212)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--asan", action="store_true", help="build an ASan/UBSan simulator copy and run under it")
    p.add_argument("--build-dir", default="/tmp/lnn-fuzz-asan", help="where --asan builds its copy")
    p.add_argument("--out", default="/tmp/lnn-fuzz", help="summary.json, worker logs")
    p.add_argument("--worker", nargs=2, type=int, metavar=("START", "END"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.seed, Path(args.out))
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
