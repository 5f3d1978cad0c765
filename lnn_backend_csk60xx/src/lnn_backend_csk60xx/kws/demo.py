"""``lnn demo kws``: keyword spotting from synthesized speech, end to end.

data (eSpeak NG, cached) -> MFCC front end -> for each model: float training -> stage 1 (``lnn.constrain``) ->
stage 2 (``lnn.init``, QAT) -> export (CSK60xx dialect and QDQ) -> pack (memory plan, model.bin) -> the C int8
simulator on every test clip -> ``lnn.verify`` (every intermediate tensor) -> one summary table.
Needs the ``demo`` extra (torch, lnn-ops-builtin, espeakng-loader).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lnn_core.cli import result_stream

from ..demo import _with_float_weights
from .data import LABELS, load_dataset
from .frontend import FrontEnd, mfcc, write_wav
from .models import MODELS

__all__ = ["run_kws_demo", "run_cli", "summary_table", "FULL", "QUICK"]

# (clips, float epochs, stage-1 epochs, QAT epochs)
FULL = {"clips": 4000, "epochs": 30, "stage1_epochs": 2, "qat_epochs": 4}
QUICK = {"clips": 360, "epochs": 3, "stage1_epochs": 1, "qat_epochs": 1}


def _train(model: Any, x: Any, y: Any, epochs: int, lr: float, seed: int, desc: str, progress: bool,
           one_cycle: bool) -> None:
    import torch
    from tqdm import tqdm

    batch = 64
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs) * -(-len(x) // batch)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps) if one_cycle
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="batch")
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


def _predict(model: Any, x: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])


def _accuracy(model: Any, x: Any, y: Any) -> float:
    return float((_predict(model, x).argmax(1) == y).float().mean()) * 100.0


def _flow(name: str, build: Any, xtr: Any, ytr: Any, xte: Any, yte: Any, cfg: dict[str, int], seed: int, host: Any,
          out: Path, progress: bool) -> dict[str, Any]:
    """One model through the whole flow; its row of the summary."""
    import torch
    from tqdm import tqdm

    import lnn_core as lnn

    from ..dialect import read_onnx
    from ..pipeline import pack_graph
    from ..planner import REGION_PSRAM, REGION_SHARE
    from ..simulator import Simulator

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    float_model = build()
    _train(float_model, xtr, ytr, cfg["epochs"], 1e-2, seed, f"{name}: float training", progress, True)
    float_acc = _accuracy(float_model, xte, yte)

    stage1 = lnn.constrain(build(), host=host)
    stage1.load_state_dict(_with_float_weights(stage1, float_model), strict=True)
    _train(stage1, xtr, ytr, cfg["stage1_epochs"], 1e-3, seed + 1, f"{name}: stage 1 (constrain)", progress, False)
    constrained_acc = _accuracy(stage1, xte, yte)

    qmodel = lnn.init(build(), host=host)
    qmodel.load_state_dict(stage1.state_dict(), strict=True)
    _train(qmodel, xtr, ytr, cfg["qat_epochs"], 3e-4, seed + 2, f"{name}: stage 2 (QAT)", progress, False)
    eval_scores = _predict(qmodel, xte).numpy()
    int8_acc = float((eval_scores.argmax(1) == yte.numpy()).mean()) * 100.0
    train_s = time.perf_counter() - t0

    onnx_path = out / f"kws_{name}.onnx"
    lnn.export(qmodel, xte[:1], onnx_path, host=host)
    lnn.export(qmodel, xte[:1], out / f"kws_{name}.qdq.onnx", dialect="qdq", dynamic_batch=True, host=host)
    packed = pack_graph(read_onnx(onnx_path))
    (out / f"kws_{name}.bin").write_bytes(packed.blob)
    (out / f"kws_{name}.memory.json").write_text(json.dumps(packed.plan.to_dict(), indent=1) + "\n")
    torch.save(qmodel.state_dict(), out / f"kws_{name}_qat.pt")

    sim = Simulator(packed.blob)
    x_np = xte.numpy()
    t1 = time.perf_counter()
    sim_scores = np.stack([sim.run([x_np[i:i + 1]])[0][0] for i in tqdm(
        range(len(x_np)), desc=f"{name}: C simulator, {len(x_np)} test clips", disable=not progress, leave=False)])
    sim_ms = (time.perf_counter() - t1) * 1000.0 / len(x_np)  # one clip is one second of audio
    report = lnn.verify(qmodel, xte[:1], host=host)
    share = packed.plan.regions[REGION_SHARE]
    psram = packed.plan.regions.get(REGION_PSRAM)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in float_model.parameters()),
        "float_accuracy": round(float_acc, 2),
        "constrained_accuracy": round(constrained_acc, 2),
        "int8_accuracy": round(int8_acc, 2),
        "int8_minus_float": round(int8_acc - float_acc, 2),
        "simulator_accuracy": round(float((sim_scores.argmax(1) == yte.numpy()).mean()) * 100.0, 2),
        "simulator_equals_eval": bool(np.array_equal(sim_scores, eval_scores)),
        "clips_differing": int(np.sum(np.any(sim_scores != eval_scores, axis=1))),
        "bit_exact": bool(report.ok),
        "tensors_verified": len(report.tensors),
        "share_mem_bytes": share.size,
        "share_mem_limit": share.limit,
        "psram_bytes": psram.size if psram is not None else 0,
        "spilled_to_psram": len(packed.plan.spilled),
        "flash_bytes": len(packed.blob),
        "sim_ms_per_audio_second": round(sim_ms, 3),
        "train_seconds": round(train_s, 1),
    }


def run_kws_demo(*, clips: int = FULL["clips"], epochs: int = FULL["epochs"],
                 stage1_epochs: int = FULL["stage1_epochs"], qat_epochs: int = FULL["qat_epochs"], seed: int = 0,
                 cache_dir: str | Path | None = None, workers: int | None = None, out_dir: str | Path = "lnn-demo-kws",
                 models: tuple[str, ...] = tuple(MODELS), progress: bool = True, host: Any = None) -> dict[str, Any]:
    """Run the keyword demo and return its figures (accuracies in percent on the held-out voices).

    :param out_dir: where the ONNX files, model.bin files, checkpoints, ``frontend.json``, ``summary.json`` and
        example inputs (``examples/<word>.wav`` and the matching ``.npy`` model inputs) are written.
    :raises ConfigError: the cache folder (or ``out_dir``) cannot be written.
    :raises EspeakError: eSpeak NG is missing and the clips are not cached.
    """
    import torch
    from tqdm import tqdm

    import lnn_core as lnn

    t0 = time.perf_counter()
    out = _writable_out(out_dir)
    data = load_dataset(clips, seed, cache_dir=cache_dir, workers=workers, progress=progress)
    t_feat = time.perf_counter()
    raw = np.concatenate([mfcc(data.audio[i:i + 512]) for i in tqdm(
        range(0, len(data.audio), 512), desc="MFCC front end", disable=not progress, leave=False)])
    front = FrontEnd.fit(raw[~data.test])
    front.save(out / "frontend.json")
    feats = front.normalize(raw)
    feat_s = time.perf_counter() - t_feat
    x, y = torch.from_numpy(feats), torch.from_numpy(data.labels)
    test = torch.from_numpy(data.test)
    xtr, ytr, xte, yte = x[~test], y[~test], x[test], y[test]
    _write_examples(out / "examples", data, feats)

    host = host or lnn.PluginHost()
    rows = [_flow(name, MODELS[name], xtr, ytr, xte, yte, {"epochs": epochs, "stage1_epochs": stage1_epochs,
                                                           "qat_epochs": qat_epochs}, seed, host, out, progress)
            for name in models]
    result = {
        "dataset": {"clips": len(data.labels), "train_clips": int((~data.test).sum()),
                    "test_clips": int(data.test.sum()), "train_voices": len(data.train_speakers),
                    "test_voices": len(data.test_speakers), "train_voice_names": list(data.train_speakers),
                    "test_voice_names": list(data.test_speakers),
                    "classes": list(LABELS), "synthesizer": data.synthesizer, "cache_file": str(data.cache_file),
                    "from_cache": data.from_cache, "seconds": round(data.seconds, 1)},
        "front_end": {"features": "MFCC 49 x 10 (40 ms frames, 20 ms hop, 40 mel bands)",
                      "seconds": round(feat_s, 1)},
        "models": rows,
        "files": str(out),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "summary.txt").write_text(summary_table(result) + "\n")
    return result


def _writable_out(out_dir: str | Path) -> Path:
    from lnn_core.errors import ConfigError

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".lnn-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"lnn demo kws: the output folder '{out}' cannot be written",
                          {"cause": f"{type(exc).__name__}: {exc.strerror or exc}"},
                          "choose a writable folder with --out-dir", option="out-dir", value=str(out),
                          valid=None) from exc
    return out


def _write_examples(folder: Path, data: Any, feats: np.ndarray) -> None:
    """One test clip per class: ``<label>.wav`` and the model input ``<label>.npy`` it gives (for ``lnn run``)."""
    folder.mkdir(exist_ok=True)
    for label, name in enumerate(LABELS):
        hits = np.nonzero(data.test & (data.labels == label))[0]
        if len(hits):
            write_wav(folder / f"{name}.wav", data.audio[hits[0]])
            np.save(folder / f"{name}.npy", feats[hits[0]:hits[0] + 1])


def summary_table(res: dict[str, Any]) -> str:
    d = res["dataset"]
    lines = [
        f"lnn demo kws: {d['clips']} clips of synthesized speech (eSpeak NG), 12 classes; "
        f"{d['train_clips']} train clips from {d['train_voices']} voices, {d['test_clips']} test clips from "
        f"{d['test_voices']} voices never heard in training",
        f"  data {d['seconds']} s ({'from the cache' if d['from_cache'] else 'synthesized'}: {d['cache_file']}); "
        f"front end {res['front_end']['features']}, {res['front_end']['seconds']} s",
        "",
        "| model | float | int8 eval | simulator | bit-exact | share-mem B | flash B | sim ms / s audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["models"]:
        exact = r["bit_exact"] and r["simulator_equals_eval"]
        psram = f" + PSRAM {r['psram_bytes']:,}" if r["spilled_to_psram"] else ""
        lines.append(
            f"| {r['model']} ({r['parameters']:,} params) | {r['float_accuracy']:.2f} % | {r['int8_accuracy']:.2f} % "
            f"({r['int8_minus_float']:+.2f}) | {r['simulator_accuracy']:.2f} % | {'yes' if exact else 'NO'} | "
            f"{r['share_mem_bytes']:,} of {r['share_mem_limit']:,}{psram} | "
            f"{r['flash_bytes']:,} | {r['sim_ms_per_audio_second']:.2f} |")
    lines.append("")
    for r in res["models"]:
        lines.append(f"  {r['model']}: stage 1 (constrained) {r['constrained_accuracy']:.2f} %; "
                     f"{r['tensors_verified']} tensors verified by lnn.verify; simulator scores "
                     f"{'equal' if r['simulator_equals_eval'] else 'DIFFER from'} eval mode on "
                     f"{'every' if r['simulator_equals_eval'] else str(r['clips_differing']) + ' of the'} "
                     f"{d['test_clips']} test clips; training {r['train_seconds']} s")
    lines.append(f"  files in {res['files']}; total {res['seconds']} s")
    return "\n".join(lines)


def run_cli(args: Any, host: Any) -> int:
    """``lnn demo kws [--quick] [--clips N] [--epochs N] [--qat-epochs N] [--cache-dir DIR] [--workers N] ...``.

    Exit 0 when every model's simulator scores equal eval mode on every test clip and ``lnn.verify`` passes, 1 if not.
    """
    cfg = dict(QUICK if args.quick else FULL)
    for key, value in (("clips", args.clips), ("epochs", args.epochs), ("qat_epochs", args.qat_epochs)):
        if value is not None:
            cfg[key] = value
    res = run_kws_demo(**cfg, seed=args.seed, cache_dir=args.cache_dir, workers=args.workers,
                       out_dir=args.out_dir or "lnn-demo-kws", progress=not args.json, host=host)
    print(json.dumps(res, indent=2) if args.json else summary_table(res), file=result_stream(args))
    return 0 if all(r["bit_exact"] and r["simulator_equals_eval"] for r in res["models"]) else 1
