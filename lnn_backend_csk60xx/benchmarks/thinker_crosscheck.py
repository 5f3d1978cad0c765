"""Cross-check ``lnn pack --format thinker`` against the vendor runtime (not CI: it needs the vendor build).

For each model: pack it twice (lnn's model.bin and a thinker package), run model.bin in lnn's simulator and the
package in the vendor's x86 ``test_thinker`` (LISTENAI thinker 3.0.4, VENUS build; how to build it: issue 14 /
the backend README), and compare every output bit for bit. Models: ONNX files given on the command line, the
linger ResNet-18 (``--resnet``), the models of tests/test_thinker_models.py (``--cases``) and the random models of
tests/test_verify_random.py (``--seeds A:B``; a model the thinker check refuses is counted as refused), and the
dialect-level sequence-op models of lnn_backend_csk60xx/tests/test_thinker_seq_ops.py (``--seq``: BmmInt, attention
blocks, unfolded iqPad, GRUInt, LSTMInt). ``--share`` writes ``--format thinker-share`` packages (constants read
in place from share-memory, no DMA) instead. A package with SoftmaxInt / LogSoftmaxInt is counted as "vendor cannot
run": the vendor's x86 build lacks the HiFi library those kernels call.

    python thinker_crosscheck.py --test-thinker /path/to/bin/test_thinker --resnet --cases --seq --seeds 0:84
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.thinker.package import decode

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO.parent / "shared" / "data" / "linger-demo"


HIFI = ("SoftmaxInt", "LogSoftmaxInt")


def crosscheck(tt: str, model, inputs: list[list[np.ndarray]], fmt: str = "thinker") -> tuple[bool | None, str]:
    graph = read_onnx(model)
    sim = Simulator(pack_graph(graph).blob)
    res = pack_graph(graph, package_format=fmt)
    work = Path(tempfile.mkdtemp())
    (work / "m.pkg").write_bytes(res.blob)
    pkg = decode(res.blob)
    hifi = sorted({op.type for op in pkg.ops} & set(HIFI))
    if hifi:
        return None, f"packed; the vendor x86 build cannot run {', '.join(hifi)} (no HiFi library)"
    for k, arrays in enumerate(inputs):
        ref = sim.run(arrays)
        files = []
        for i, a in enumerate(arrays):  # the package's input dtypes (token ids: int32)
            files.append(work / f"in{i}.bin")
            np.ascontiguousarray(a).astype(pkg.tensors[pkg.inputs[i]].dtype).tofile(files[-1])
        outs = [work / f"out{j}.bin" for j in range(len(ref))]
        for o in outs:
            o.unlink(missing_ok=True)
        run = subprocess.run([tt, str(work / "m.pkg"), *map(str, files), *map(str, outs)], capture_output=True,
                             text=True)
        if not all(o.exists() for o in outs):
            return False, f"no output: {run.stdout[-300:]}"
        for o, f in zip(ref, outs):
            got = np.fromfile(f, dtype=o.dtype).reshape(o.shape)
            if not np.array_equal(got, o):
                return False, f"input {k}: {(got != o).sum()} of {o.size} values differ"
    return True, f"{len(inputs)} inputs, share-memory {res.plan.regions['share_mem'].size} B"


def _export_cases(out: Path) -> list[tuple[str, Path, list[tuple[int, ...]]]]:
    import torch

    import lnn_core as lnn

    sys.path.insert(0, str(REPO / "tests"))
    from test_thinker_models import CASES

    made = []
    for name, (factory, shapes) in sorted(CASES.items()):
        torch.manual_seed(0)
        model = lnn.init(factory())
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(*[torch.randn(s) for s in shapes])
        model.eval()
        xs = tuple(torch.randn(s) for s in shapes)
        lnn.export(model, xs if len(xs) > 1 else xs[0], out / f"{name}.onnx")
        made.append((name, out / f"{name}.onnx", shapes))
    return made


def _export_seed(seed: int, out: Path) -> tuple[Path, tuple[int, ...]]:
    import torch

    import lnn_core as lnn

    sys.path.insert(0, str(REPO / "tests"))
    from test_verify_random import Gen

    torch.manual_seed(seed)
    model, shape, _ = Gen(seed).build()
    q = lnn.init(model)
    q.train()
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(shape))
    q.eval()
    lnn.export(q, torch.randn(shape), out / f"s{seed}.onnx")
    return out / f"s{seed}.onnx", shape


def _seq_models() -> list[tuple[str, object, list[tuple[int, ...]]]]:
    sys.path.insert(0, str(REPO / "lnn_backend_csk60xx" / "tests"))
    import test_thinker_seq_ops as t

    made = []
    for b, m, k, n in ((1, 4, 8, 4), (1, 7, 13, 5), (3, 5, 16, 9), (2, 1, 3, 1), (4, 12, 20, 12), (1, 64, 32, 64)):
        xs, ys = (b, m, k), (b, k, n)
        made.append((f"bmm {xs}x{ys}", t.bmm_model(xs, ys, 4, 5, 6), [xs, ys]))
        made.append((f"bmm2d {xs[1:]}x{ys[1:]}", t.bmm_model(xs[1:], ys[1:], 3, 4, 4), [xs[1:], ys[1:]]))
        made.append((f"bmm const {xs}x{ys}", t.bmm_model(xs, ys, 4, 6, 5, seed=b, const=True), [xs]))
    for tt, d in ((4, 8), (6, 16), (10, 32), (16, 24)):
        made.append((f"attention T={tt} D={d}", t.attention_model(tt, d, seed=tt), [(1, tt, d)]))
        made.append((f"attention+softmax T={tt} D={d}", t.attention_model(tt, d, seed=tt, softmax=True),
                     [(1, tt, d)]))
    for shape, pads, conv in (((1, 3, 5, 6), (3, 0, 2, 4), True), ((1, 2, 4, 4), (1, 2, 0, 1), False),
                              ((1, 5, 3, 7), (0, 4, 4, 0), True), ((1, 16, 6, 6), (2, 2, 2, 2), False),
                              ((1, 8, 9, 5), (5, 1, 0, 3), True)):
        made.append((f"pad {shape} {pads}{' conv' if conv else ''}", t.pad_model(shape, pads, conv=conv), [shape]))
    for k, (tt, d, h, bf, n_i, n_hw) in enumerate(((4, 3, 2, 1, 5, 7), (6, 12, 16, 1, 6, 5), (8, 16, 32, 0, 4, 9),
                                                   (10, 24, 20, 1, 5, 3), (3, 40, 64, 0, 7, 6), (12, 13, 9, 1, 8, 8),
                                                   (5, 64, 48, 1, 5, 7), (20, 8, 128, 0, 6, 4))):
        made.append((f"gru T={tt} D={d} H={h} bf={bf}", t.gru_model(tt, d, h, seed=k, batch_first=bf, n_i=n_i,
                                                                   n_iw=max(3, 11 - n_i), n_hw=n_hw),
                     [(1, tt, d) if bf else (tt, 1, d)]))
    for k, (tt, d, h) in enumerate(((5, 12, 16), (9, 32, 24), (4, 8, 64))):
        made.append((f"linear-gru-linear T={tt} D={d} H={h}", t.gru_model(tt, d, h, seed=k, linears=True),
                     [(1, tt, d)]))
    for k, (tt, d, h, bf) in enumerate(((4, 3, 2, 1), (6, 12, 16, 0), (9, 20, 24, 1), (5, 7, 5, 1))):
        made.append((f"gru reverse T={tt} D={d} H={h}", t.gru_model(tt, d, h, seed=k, batch_first=bf, go_forward=0),
                     [(1, tt, d) if bf else (tt, 1, d)]))
    made.append(("gru lengths [T]", t.gru_model(6, 5, 8, seed=9, lengths=6), [(1, 6, 5)]))
    for k, (tt, d, h, bf, fwd, state) in enumerate(((4, 3, 2, 1, 1, False), (6, 12, 16, 0, 1, False),
                                                    (5, 10, 6, 1, 0, False), (8, 7, 5, 0, 0, False),
                                                    (3, 32, 64, 1, 1, False), (10, 24, 20, 1, 1, True),
                                                    (7, 9, 3, 0, 0, True), (12, 16, 33, 1, 1, True))):
        made.append((f"lstm T={tt} D={d} H={h} bf={bf} fwd={fwd} state={state}",
                     t.lstm_model(tt, d, h, seed=k, batch_first=bf, go_forward=fwd, state=state,
                                  n_o=[7, 5, 8][k % 3]), [(1, tt, d) if bf else (tt, 1, d)]
                     + ([(1, 1, h), (1, 1, h)] if state else [])))
    for k, (tt, d, h) in enumerate(((5, 12, 16), (6, 10, 6), (4, 8, 64))):
        made.append((f"linear-lstm-linear T={tt} D={d} H={h}", t.lstm_model(tt, d, h, seed=k, linears=True),
                     [(1, tt, d)]))
    made.append(("lstm lengths [T]", t.lstm_model(6, 5, 8, seed=9, lengths=6), [(1, 6, 5)]))
    for kind in ("GRUInt", "LSTMInt"):
        for bf, (tt, d, h) in ((1, (6, 5, 7)), (0, (9, 16, 12))):
            made.append((f"bidirectional {kind} T={tt} D={d} H={h} bf={bf}",
                         t.birnn_model(kind, tt, d, h, seed=tt, batch_first=bf), [(1, tt, d) if bf else (tt, 1, d)]))
    for shape in ((4, 10), (1, 3, 7)):
        made.append((f"softmax {shape}", t.softmax_model(shape, 4, 7), [shape]))
        made.append((f"log-softmax {shape}", t.softmax_model(shape, 4, 4, log=True), [shape]))
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="*")
    ap.add_argument("--test-thinker", required=True)
    ap.add_argument("--resnet", action="store_true")
    ap.add_argument("--cases", action="store_true")
    ap.add_argument("--seeds", default=None, metavar="A:B")
    ap.add_argument("--seq", action="store_true")
    ap.add_argument("--share", action="store_true", help="pack --format thinker-share (constants in share-memory)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    stats: collections.Counter = collections.Counter()

    def check(name: str, model, inputs) -> None:
        try:
            ok, what = crosscheck(args.test_thinker, model, inputs, "thinker-share" if args.share else "thinker")
        except Exception as exc:  # a model the thinker check refuses
            stats["refused"] += 1
            print(f"{name}: refused: {str(exc).splitlines()[0][:160]}")
            return
        if ok is None:
            stats["vendor cannot run"] += 1
            print(f"{name}: {what}")
            return
        stats["equal" if ok else "different"] += 1
        print(f"{name}: {'equal' if ok else 'DIFFERENT'} ({what})")

    for f in args.onnx:
        shape = Simulator(pack_graph(read_onnx(f)).blob).inputs[0].shape
        check(f, f, [[rng.standard_normal(shape).astype(np.float32)] for _ in range(4)])
    if args.resnet:
        xs = np.load(DEMO / "resnet18_inputs.npy")
        check("resnet18", DEMO / "resnet18-12-regular.onnx", [[xs[i:i + 1]] for i in range(4)])
    if args.cases:
        for name, path, shapes in _export_cases(out):
            check(name, path, [[rng.standard_normal(s).astype(np.float32) * (1 + k) for s in shapes] for k in range(4)])
    if args.seq:
        for name, model, shapes in _seq_models():
            dtypes = [read_onnx(model).tensors[i].dtype for i in read_onnx(model).inputs]
            check(name, model, [[rng.standard_normal(s).astype(np.float32) * (1 + k) if dt == "float32" else
                                 rng.integers(-100 * (1 + k), 100 * (1 + k), s).astype(dt)
                                 for s, dt in zip(shapes, dtypes)] for k in range(4)])
    if args.seeds:
        a, b = map(int, args.seeds.split(":"))
        for seed in range(a, b):
            path, shape = _export_seed(seed, out)
            check(f"seed {seed}", path, [[rng.standard_normal(shape).astype(np.float32)] for _ in range(2)])
    print(dict(stats))
    return 0 if not stats["different"] else 1


if __name__ == "__main__":
    sys.exit(main())
