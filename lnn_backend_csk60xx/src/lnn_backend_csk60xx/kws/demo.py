"""``lnn demo kws``: keyword spotting from synthesized speech, end to end.

data (eSpeak NG, cached) -> MFCC front end -> for each model: float training -> stage 1 (``lnn.constrain``) ->
stage 2 (``lnn.init``, QAT) -> export (CSK60xx dialect and QDQ) -> pack (memory plan, model.bin) -> the C int8
simulator on every test clip -> ``lnn.verify`` (every intermediate tensor) -> one summary table. The CRNN is also
exported as one streaming step, its GRU state an input and an output (``kws_crnn_step.onnx`` / ``.bin``). Then it
streams a 5 s sentence hop by hop through the keyword detector (:mod:`.stream`): in float, in int8 eval and on the
C simulator (the step model, its state carried), whose integers must equal the int8 model's on the whole sentence.
A model with an op that has no quantized form stops after float training (the table says so).
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
from .data import LABELS, UNKNOWN, load_dataset
from .frontend import FrontEnd, mfcc, write_wav
from .models import FRAMES_PER_STEP, MODELS, STEP_MODELS

__all__ = ["run_kws_demo", "run_cli", "summary_table", "FULL", "QUICK", "QAT_LR"]

# (clips, float epochs of the DS-CNN and of the CRNN, stage-1 epochs, QAT epochs of the DS-CNN and of the CRNN)
FULL = {"clips": 4000, "epochs": 30, "crnn_epochs": 16, "stage1_epochs": 2, "qat_epochs": 4, "crnn_qat_epochs": 16}
QUICK = {"clips": 360, "epochs": 3, "crnn_epochs": 2, "stage1_epochs": 1, "qat_epochs": 1, "crnn_qat_epochs": 1}
QAT_LR = {"dscnn": 3e-4, "crnn": 2e-3}
"""The QAT learning rate (cosine schedule) of each model. The CRNN's QAT has more to learn than fine-tuning:
the chip's GRU keeps its state int8 at ``2**-8`` (spec 2.2.5), so ``|h| <= 127/256``, while the float GRU uses
up to 1 (most of its state values lie beyond 0.5; with the state clipped there the float model scores 42 %).
QAT, which computes the chip's recurrence, relearns the GRU under that range: 4 epochs at 3e-4 left it 4.1 points
below float, 16 epochs at 2e-3 end 0.25 above it (seed 0, 4,000 clips; README). :func:`_gru_alignment` keeps the
longer QAT within the GRU's input alignment."""


def _train(model: Any, x: Any, y: Any, epochs: int, lr: float, seed: int, desc: str, progress: bool,
           one_cycle: bool, chain: int = 1, frames_per_step: int = 1, project: Any = None) -> None:
    """Adam with one-cycle or cosine learning rates, batches of 64.

    ``chain > 1`` (the CRNN, scoring every ``frames_per_step`` frames): each example is ``chain`` clips one
    after the other along time (each cut to whole steps), with the loss at the last step of each clip: the model
    learns to decide at a clip's end from a zero state and from the state the previous clip left, i.e. to forget
    the last word, which a stream needs. And where the first clip holds no keyword (unknown or silence), every
    one of its steps adds half of ``-log P(not a keyword)``: no keyword posterior while a word is half heard
    either. Against overfitting (the GRU learns the training voices by heart), these chains also get Gaussian
    noise (standard deviation 0.3) on their normalized features and AdamW's weight decay (0.01).
    ``project`` (if given) is called after every optimizer step (see :func:`_gru_alignment`).
    """
    import torch
    from tqdm import tqdm

    batch = 64
    g = torch.Generator().manual_seed(seed)
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if chain == 1
           else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01))
    steps = max(1, epochs) * -(-len(x) // batch)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps) if one_cycle
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="batch")
    steps_per_clip = x.shape[2] // frames_per_step
    whole = steps_per_clip * frames_per_step
    for _ in range(epochs):
        perms = [torch.randperm(len(x), generator=g) for _ in range(chain)]
        for i in range(0, len(x), batch):
            opt.zero_grad()
            if chain == 1:
                idx = perms[0][i:i + batch]
                loss = torch.nn.functional.cross_entropy(_clip_scores(model(x[idx])), y[idx])
            else:
                idx = [p[i:i + batch] for p in perms]
                xb = torch.cat([x[j][:, :, :whole] for j in idx], dim=2)
                out = model(xb + 0.3 * torch.randn(xb.shape, generator=g))
                loss = sum(torch.nn.functional.cross_entropy(out[:, steps_per_clip * (k + 1) - 1], y[j])
                           for k, j in enumerate(idx)) / chain
                log_p = torch.log_softmax(out[:, :steps_per_clip], -1)
                not_keyword = torch.logsumexp(log_p[..., UNKNOWN:], -1)  # log(P(unknown) + P(silence)), per step
                mask = (y[idx[0]] >= UNKNOWN).to(log_p.dtype)[:, None]
                loss = loss - 0.5 * (not_keyword * mask).sum() / (mask.sum() * steps_per_clip).clamp(min=1.0)
            loss.backward()
            opt.step()
            if project is not None:
                project()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


def _clip_scores(out: Any) -> Any:
    """A model's output -> the clip's scores ``(N, 12)``: a step-by-step model's ``(N, steps, 12)`` gives its last."""
    return out[:, -1] if out.ndim == 3 else out


def _predict(model: Any, x: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([_clip_scores(model(x[i:i + 256])) for i in range(0, len(x), 256)])


def _accuracy(model: Any, x: Any, y: Any) -> float:
    return float((_predict(model, x).argmax(1) == y).float().mean()) * 100.0


def _gru_alignment(qmodel: Any) -> Any:
    """A projection that keeps every quantized GRU within the chip's input alignment (``csk60xx.gru.in_alignment``:
    ``n_i + n_iw >= 11``, the Q11 alignment of ``x . W_ih`` shifts right only), or None for a model without one.

    It clips ``W_ih`` to ``127 * 2**(n_i - 11)``, so that its weight exponent (``floor(log2(127 / max|W_ih|))``)
    is at least ``11 - n_i`` at the input exponent ``n_i`` of the moment. Long QAT at the CRNN's learning rate
    otherwise grows ``W_ih`` past that bound (seed 0: ``n_i + n_iw = 4 + 6``) and ``lnn pack`` refuses the GRU."""
    import torch

    from lnn_ops_builtin.rnn import GATE_Q, QRNN

    grus = [m for m in qmodel.modules() if isinstance(m, QRNN)]
    if not grus:
        return None

    def project() -> None:
        with torch.no_grad():
            for m in grus:
                for layer, n_in in enumerate(m.layer_exponents()):
                    for d in range(m.directions):
                        limit = 127.0 * 2.0 ** (n_in - GATE_Q)
                        m.pairs(layer, d)[0][0].clamp_(-limit, limit)

    return project


def _int8_blocker(build: Any, host: Any) -> str | None:
    """Why the int8 path cannot run for this model (an op without a quantized form), or None when it can."""
    import lnn_core as lnn
    from lnn_core.errors import UnsupportedOpError

    try:
        lnn.init(build(), host=host, strict=True)
    except UnsupportedOpError as exc:
        found = getattr(exc, "ops", None) or [(None, getattr(exc, "op", "?"), None)]
        ops = sorted({f"{op[1]} ({op[0]})" if isinstance(op, tuple) else str(op) for op in found})
        return f"no int8 form yet for {', '.join(ops)} (the GRU op family, issue 10)"
    return None


def _flow(name: str, build: Any, xtr: Any, ytr: Any, xte: Any, yte: Any, cfg: dict[str, int], seed: int, host: Any,
          out: Path, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model through the whole flow: its row of the summary, and its models ``{"float": ..., "int8": ...}``
    (``int8`` and the int8 figures of the row are None when the model has an op without a quantized form)."""
    import torch
    from tqdm import tqdm

    import lnn_core as lnn

    from ..dialect import read_onnx
    from ..pipeline import pack_graph
    from ..planner import REGION_PSRAM, REGION_SHARE
    from ..simulator import Simulator

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    fps = FRAMES_PER_STEP.get(name, 1)
    chain = 2 if name in FRAMES_PER_STEP else 1
    float_model = build()
    epochs = cfg["crnn_epochs" if name in FRAMES_PER_STEP else "epochs"]
    _train(float_model, xtr, ytr, epochs, 1e-2, seed, f"{name}: float training", progress, True, chain, fps)
    float_acc = _accuracy(float_model, xte, yte)
    row: dict[str, Any] = {"model": name, "parameters": sum(p.numel() for p in float_model.parameters()),
                           "float_accuracy": round(float_acc, 2)}
    blocker = _int8_blocker(build, host)
    if blocker is not None:
        torch.save(float_model.state_dict(), out / f"kws_{name}_float.pt")
        row.update({"int8_blocked": blocker, "train_seconds": round(time.perf_counter() - t0, 1)})
        return row, {"float": float_model, "int8": None}

    stage1 = lnn.constrain(build(), host=host)
    stage1.load_state_dict(_with_float_weights(stage1, float_model), strict=True)
    _train(stage1, xtr, ytr, cfg["stage1_epochs"], 1e-3, seed + 1, f"{name}: stage 1 (constrain)", progress, False,
           chain, fps)
    constrained_acc = _accuracy(stage1, xte, yte)

    qmodel = lnn.init(build(), host=host)
    qmodel.load_state_dict(stage1.state_dict(), strict=True)
    project = _gru_alignment(qmodel)
    _train(qmodel, xtr, ytr, cfg["crnn_qat_epochs" if name in FRAMES_PER_STEP else "qat_epochs"], QAT_LR[name],
           seed + 2, f"{name}: stage 2 (QAT)", progress, False, chain, fps, project)
    if project is not None:
        qmodel.eval()
        project()  # at the exponents eval (and export) use
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
    sim_scores = np.stack([np.asarray(sim.run([x_np[i:i + 1]])[0][0]).reshape(-1, len(LABELS))[-1] for i in tqdm(
        range(len(x_np)), desc=f"{name}: C simulator, {len(x_np)} test clips", disable=not progress, leave=False)])
    sim_ms = (time.perf_counter() - t1) * 1000.0 / len(x_np)  # one clip is one second of audio
    report = lnn.verify(qmodel, xte[:1], host=host)
    step = _export_step_model(name, qmodel, xte[:1], out, host, fps) if name in STEP_MODELS else None
    share = packed.plan.regions[REGION_SHARE]
    psram = packed.plan.regions.get(REGION_PSRAM)
    row.update({
        "int8_blocked": None,
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
    })
    if step is not None:
        row["step_model"] = step.pop("row")
    return row, {"float": float_model, "int8": qmodel, "sim": sim, **(step or {})}


def _export_step_model(name: str, qmodel: Any, clip: Any, out: Path, host: Any, frames: int) -> dict[str, Any]:
    """The trained int8 model as one streaming step (:data:`.models.STEP_MODELS`): ``(frames, h) -> (scores,
    h_n)``, its GRU's initial state a graph input and its final state a graph output, exported, packed
    (``kws_<name>_step.onnx`` / ``.bin``) and verified tensor by tensor; returns its row of the summary
    (``"row"``), the quantized step model (``"int8_step"``) and its simulator (``"step_sim"``). ``clip`` (one
    test clip): its first frames and the state the int8 model has after the rest are what export and verify see.

    The step model has the whole model's parameters and activation exponents (its ``state_dict``); its one new
    quantizer, the state input's, takes the GRU's state exponent (``n_o``, 8) as a fixed exponent, so the state
    the simulator carries from call to call is exactly the chip's int8 ``h`` (no rounding between calls)."""
    import lnn_core as lnn
    from lnn_core.quant.observers import FixedExponent

    from ..dialect import read_onnx
    from ..pipeline import pack_graph
    from ..planner import REGION_SHARE
    from ..simulator import Simulator
    from .stream import int8_torch_step

    gru = qmodel.get_submodule("gru")
    # the quantizer of the state input h (graph input "h") at the GRU state's own exponent
    pin = lnn.LayerConfig(act_observer=FixedExponent.with_args(n=gru.state_exponent))
    step = lnn.init(STEP_MODELS[name](), config=lnn.QuantConfig(by_path={"q_input_h": pin}), host=host)
    missing, unexpected = step.load_state_dict(qmodel.state_dict(), strict=False)
    if unexpected or any(not k.startswith("q_input_h.") for k in missing):
        raise RuntimeError(f"lnn demo kws: the step model of {name} does not match its whole model: missing "
                           f"{missing}, unexpected {unexpected}")
    step.eval()
    _, h = int8_torch_step(qmodel)(clip[:, :, frames:(clip.shape[2] // frames) * frames].numpy(), None)
    example = (clip[:, :, :frames], h)
    path = out / f"kws_{name}_step.onnx"
    lnn.export(step, example, path, input_names=["frames", "h"], output_names=["scores", "h_n"], host=host)
    packed = pack_graph(read_onnx(path))
    (out / f"kws_{name}_step.bin").write_bytes(packed.blob)
    sim = Simulator(packed.blob)
    report = lnn.verify(step, example, host=host)
    warnings = sorted({v.rule_id for v in (packed.rules.violations if packed.rules else ())})
    return {"row": {"file": str(out / f"kws_{name}_step.bin"), "frames_per_call": frames,
                    "state": dict(sim.state_pairs), "state_exponent": gru.state_exponent,
                    "bit_exact": bool(report.ok), "flash_bytes": len(packed.blob),
                    "share_mem_bytes": packed.plan.regions[REGION_SHARE].size,
                    "warnings": warnings},
            "int8_step": step, "step_sim": sim}


def run_kws_demo(*, clips: int = FULL["clips"], epochs: int = FULL["epochs"], crnn_epochs: int = FULL["crnn_epochs"],
                 stage1_epochs: int = FULL["stage1_epochs"], qat_epochs: int = FULL["qat_epochs"],
                 crnn_qat_epochs: int = FULL["crnn_qat_epochs"], seed: int = 0,
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
    cfg = {"epochs": epochs, "crnn_epochs": crnn_epochs, "stage1_epochs": stage1_epochs, "qat_epochs": qat_epochs,
           "crnn_qat_epochs": crnn_qat_epochs}
    rows, trained = [], {}
    for name in models:
        row, trained[name] = _flow(name, MODELS[name], xtr, ytr, xte, yte, cfg, seed, host, out, progress)
        rows.append(row)
    streaming = None
    if "crnn" in trained:
        streaming = _streaming(trained["crnn"], front, clips, seed, cache_dir, out, progress)
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
        "streaming": streaming,
        "files": str(out),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "summary.txt").write_text(summary_table(result) + "\n")
    return result


def _streaming(models: dict[str, Any], front: FrontEnd, clips: int, seed: int, cache_dir: Any, out: Path,
               progress: bool) -> dict[str, Any]:
    """The CRNN streamed over the 5 s test sentence, hop by hop, by each runner that exists (float torch, int8
    eval, the C simulator on the step model): the detector's firings, their scoring, whether the streamed integers
    equal each other and the whole sentence's at once, ``stream.png`` and ``sentence.wav``."""
    import torch
    from tqdm import tqdm

    from .stream import (
        Detector,
        float_torch_step,
        int8_torch_step,
        plot_stream,
        score_firings,
        simulator_step,
        stream,
        synthesize_sentence,
    )

    sentence = synthesize_sentence(seed, clips=clips, cache_dir=cache_dir)
    write_wav(out / "sentence.wav", sentence.audio)
    detector = Detector()
    runners = {"float": float_torch_step(models["float"])}
    res: dict[str, Any] = {"voice": sentence.voice, "seconds_of_audio": len(sentence.audio) / 16000,
                           "words": [{"word": w, "start_s": round(a / 16000, 3), "end_s": round(b / 16000, 3)}
                                     for w, a, b in sentence.words],
                           "detector": {"threshold": detector.threshold, "release": detector.release,
                                        "smooth_frames": detector.smooth, "refractory_s": detector.refractory},
                           "runs": {}}
    if models.get("int8") is None:
        res["int8_blocked"] = "the int8 CRNN needs the GRU op family (issue 10): streamed in float only"
    else:
        runners["int8"] = int8_torch_step(models["int8"])
    if models.get("step_sim") is not None:
        runners["sim"] = simulator_step(models["step_sim"])
    results = {}
    for kind, step in tqdm(runners.items(), desc="streaming the 5 s sentence", disable=not progress, leave=False):
        t0 = time.perf_counter()
        results[kind] = r = stream(sentence.audio, front, step, detector)
        ms = (time.perf_counter() - t0) * 1000.0 / res["seconds_of_audio"]
        res["runs"][kind] = {"firings": [{"keyword": f.keyword, "time_s": f.time, "posterior": f.posterior}
                                         for f in r.firings],
                             **score_firings(sentence, r.firings), "ms_per_audio_second": round(ms, 2)}
    if "int8" in results:
        feats = results["int8"].features  # the streamed features, every frame the model saw, as one recording
        with torch.no_grad():
            models["int8"].eval()
            whole = models["int8"](torch.from_numpy(np.ascontiguousarray(feats[None, None])))[0].numpy()
        res["int8_stream_equals_whole"] = bool(np.array_equal(results["int8"].scores, whole))
        res["model_steps"] = len(whole)
        if "sim" in results:
            res["sim_stream_equals_int8"] = bool(np.array_equal(results["sim"].scores, results["int8"].scores))
            res["sim_stream_equals_whole"] = bool(np.array_equal(results["sim"].scores, whole))
    best = "sim" if "sim" in results else "int8" if "int8" in results else "float"
    plot_stream(out / "stream.png", sentence, results[best], detector,
                f"lnn demo kws: the CRNN ({best}) streamed over 5 s, {sentence.voice} (a voice not heard in training)")
    res["plot"] = str(out / "stream.png")
    res["plotted_run"] = best
    return res


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
        if r["int8_blocked"]:
            lines.append(f"| {r['model']} ({r['parameters']:,} params) | {r['float_accuracy']:.2f} % | "
                         "- | - | - | - | - | - |")
            continue
        exact = r["bit_exact"] and r["simulator_equals_eval"]
        psram = f" + PSRAM {r['psram_bytes']:,}" if r["spilled_to_psram"] else ""
        lines.append(
            f"| {r['model']} ({r['parameters']:,} params) | {r['float_accuracy']:.2f} % | {r['int8_accuracy']:.2f} % "
            f"({r['int8_minus_float']:+.2f}) | {r['simulator_accuracy']:.2f} % | {'yes' if exact else 'NO'} | "
            f"{r['share_mem_bytes']:,} of {r['share_mem_limit']:,}{psram} | "
            f"{r['flash_bytes']:,} | {r['sim_ms_per_audio_second']:.2f} |")
    lines.append("")
    for r in res["models"]:
        if r["int8_blocked"]:
            lines.append(f"  {r['model']}: float only: {r['int8_blocked']}; training {r['train_seconds']} s")
            continue
        lines.append(f"  {r['model']}: stage 1 (constrained) {r['constrained_accuracy']:.2f} %; "
                     f"{r['tensors_verified']} tensors verified by lnn.verify; simulator scores "
                     f"{'equal' if r['simulator_equals_eval'] else 'DIFFER from'} eval mode on "
                     f"{'every' if r['simulator_equals_eval'] else str(r['clips_differing']) + ' of the'} "
                     f"{d['test_clips']} test clips; training {r['train_seconds']} s")
    st = res.get("streaming")
    if st:
        words = ", ".join(f"{w['word']} {w['start_s']:.2f}-{w['end_s']:.2f} s" for w in st["words"])
        lines += ["", f"streaming: the CRNN over a {st['seconds_of_audio']:.0f} s sentence by {st['voice']} "
                      f"(not heard in training): the front end every 20 ms hop, the CRNN every two frames (40 ms) with "
                      f"its GRU state carried: {words}",
                  f"  detector: 160 ms mean posterior >= {st['detector']['threshold']} fires "
                  f"(re-armed below {st['detector']['release']}, {st['detector']['refractory_s']} s apart)"]
        for kind, run in st["runs"].items():
            fired = ", ".join(f"{f['keyword']} at {f['time_s']:.2f} s" for f in run["firings"]) or "nothing"
            verdict = ("both keywords detected, no false firing" if run["ok"] else
                       f"missed {run['missed'] or 'none'}, false firings {run['false_firings'] or 'none'}")
            lines.append(f"  {kind}: fired {fired}: {verdict}; {run['ms_per_audio_second']:.1f} ms per s of audio")
        if st.get("int8_blocked"):
            lines.append(f"  {st['int8_blocked']}")
        if "int8_stream_equals_whole" in st:
            lines.append(f"  int8 eval streamed step by step == the int8 model on the whole sentence at once "
                         f"({st['model_steps']} steps): {'yes' if st['int8_stream_equals_whole'] else 'NO'}")
        crnn = next((r for r in res["models"] if r.get("step_model")), None)
        if "sim_stream_equals_int8" in st and crnn is not None:
            sm = crnn["step_model"]
            same = st["sim_stream_equals_int8"] and st["sim_stream_equals_whole"]
            lines += [f"  sim: the step model {Path(sm['file']).name} ({sm['frames_per_call']} frames in, GRU state "
                      f"h int8 at 2^-{sm['state_exponent']} an input and an output, {sm['flash_bytes']:,} B, "
                      f"{sm['share_mem_bytes']:,} B share-mem, lnn.verify {'bit-exact' if sm['bit_exact'] else 'FAILS'}"
                      f") on the C simulator, its state carried (Simulator.stream): streamed integers "
                      f"{'equal' if same else 'DIFFER from'} int8 eval's stream and the whole sentence's",
                      "  on the board: the vendor runtime (thinker) does not read a GRU's h0 (lnn pack warns "
                      "csk60xx.gru.vendor_state): it starts every call from a zero state, so there this step model "
                      "does not stream; lnn's simulator carries the state as above"]
        lines.append(f"  plot: {st['plot']} ({st['plotted_run']})")
    lines.append(f"  files in {res['files']}; total {res['seconds']} s")
    return "\n".join(lines)


def run_cli(args: Any, host: Any) -> int:
    """``lnn demo kws [--quick] [--clips N] [--epochs N] [--qat-epochs N] [--cache-dir DIR] [--workers N] ...``.

    Exit 0 when every model's simulator scores equal eval mode on every test clip, ``lnn.verify`` passes (the
    CRNN's step model too) and the streamed integers (int8 eval and the simulator) equal the whole sentence's, 1 if
    not (a model whose int8 path cannot run yet is reported as float only).
    """
    cfg = dict(QUICK if args.quick else FULL)
    for key, value in (("clips", args.clips), ("epochs", args.epochs), ("crnn_epochs", args.epochs),
                       ("qat_epochs", args.qat_epochs), ("crnn_qat_epochs", args.qat_epochs)):
        if value is not None:
            cfg[key] = value
    res = run_kws_demo(**cfg, seed=args.seed, cache_dir=args.cache_dir, workers=args.workers,
                       out_dir=args.out_dir or "lnn-demo-kws", progress=not args.json, host=host)
    print(json.dumps(res, indent=2) if args.json else summary_table(res), file=result_stream(args))
    ran = [r for r in res["models"] if not r["int8_blocked"]]
    st = res.get("streaming") or {}
    streamed = [st[k] for k in ("int8_stream_equals_whole", "sim_stream_equals_int8", "sim_stream_equals_whole")
                if k in st] + [r["step_model"]["bit_exact"] for r in ran if r.get("step_model")]
    return 0 if all(r["bit_exact"] and r["simulator_equals_eval"] for r in ran) and all(streamed) else 1
