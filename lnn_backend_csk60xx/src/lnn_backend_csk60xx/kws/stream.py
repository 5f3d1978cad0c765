"""Streaming keyword detection: a recording fed hop by hop through the front end and a per-frame model, with its
posteriors smoothed and thresholded.

The model is any callable ``step(frames, state) -> (scores, state)``: ``frames`` the normalized features of
the new frames ``(1, 1, t, 10)`` float32, ``state`` whatever the model carries between calls (``None`` at the
start), ``scores`` the class scores of each new model step ``(t // frames_per_step, 12)``. The same detector
thus runs the float torch model, the int8 eval-mode torch model and the C simulator (:func:`float_torch_step`, ...).

The detector, per model step (the CRNN's: two frames, 40 ms):

1. posteriors: the softmax of the step's 12 scores;
2. smoothing: the mean posterior over the last :attr:`Detector.smooth` steps (160 ms): one step's spike is
   not a word, and a spoken keyword keeps its class on top for several steps;
3. threshold: a keyword fires when its smoothed posterior reaches :attr:`Detector.threshold` (0.6) while the
   detector is armed; firing disarms it, and it re-arms once every keyword's smoothed posterior has fallen
   below :attr:`Detector.release` (0.3) and at least :attr:`Detector.refractory` seconds (0.5) have passed
   (one word, one firing).

:func:`synthesize_sentence` makes the test recording: a seeded 5 s sentence of isolated words in noise, two
keywords among other words and pauses, spoken by a voice the models never heard; :func:`plot_stream` draws it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import KEYWORDS, LABELS, SAMPLE_RATE, check_cache_dir, default_cache_dir, plan_clips
from .frontend import FRAME, HOP, FrontEnd, StreamingMfcc

__all__ = ["Detector", "Firing", "Sentence", "StreamResult", "stream", "float_torch_step", "int8_torch_step",
           "simulator_step", "synthesize_sentence", "score_firings", "plot_stream", "SENTENCE_WORDS"]

Step = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]

SENTENCE_WORDS = ("happy", "left", "house", "seven", "stop", "bird")
"""The default sentence: the keywords ``left`` and ``stop`` among four other words."""
SENTENCE_SECONDS = 5.0


@dataclass(frozen=True)
class Firing:
    """A keyword detected: ``time`` in seconds from the recording's start (the end of the step that fired)."""

    time: float
    step: int
    keyword: str
    posterior: float


@dataclass
class Detector:
    """Posterior smoothing and thresholding over the per-frame scores (see the module's description)."""

    threshold: float = 0.6
    release: float = 0.3
    smooth: int = 4
    refractory: float = 0.5
    keywords: tuple[int, ...] = tuple(range(len(KEYWORDS)))
    frames_per_step: int = 2

    def run(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Firing]]:
        """Per-step scores ``(T, 12)`` -> posteriors ``(T, 12)``, smoothed posteriors ``(T, 12)``, firings."""
        s = np.asarray(scores, np.float64)
        post = np.exp(s - s.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        csum = np.cumsum(np.vstack([np.zeros((1, post.shape[1])), post]), axis=0)
        lo = np.maximum(np.arange(len(post)) + 1 - self.smooth, 0)
        smoothed = (csum[1:] - csum[lo]) / (np.arange(len(post)) + 1 - lo)[:, None]
        kw = list(self.keywords)
        firings: list[Firing] = []
        armed, last = True, -np.inf
        for t in range(len(smoothed)):
            now = float(frame_end((t + 1) * self.frames_per_step - 1))
            if not armed and smoothed[t, kw].max() < self.release and now - last >= self.refractory:
                armed = True
            k = kw[int(np.argmax(smoothed[t, kw]))]
            if armed and smoothed[t, k] >= self.threshold:
                firings.append(Firing(round(now, 3), t, LABELS[k], round(float(smoothed[t, k]), 3)))
                armed, last = False, now
        return post, smoothed, firings


def frame_end(t: int | np.ndarray) -> Any:
    """The time (s) at which frame ``t`` is complete: its last sample's end."""
    return (np.asarray(t) * HOP + FRAME) / SAMPLE_RATE


@dataclass
class StreamResult:
    features: np.ndarray  # (T, 10) normalized
    scores: np.ndarray  # (T, 12)
    posteriors: np.ndarray
    smoothed: np.ndarray
    firings: list[Firing]


def stream(audio: np.ndarray, front: FrontEnd, step: Step, detector: Detector | None = None, *,
           hop_samples: int = HOP) -> StreamResult:
    """Feed ``audio`` (int16, 16 kHz) ``hop_samples`` at a time through the streaming front end, the model one
    step (``detector.frames_per_step`` frames) per call with its state carried, and the detector."""
    detector = detector or Detector()
    frames_per_call = detector.frames_per_step
    mf = StreamingMfcc()
    pending = np.zeros((0, front.mean.shape[0]), np.float32)
    feats, scores, state = [], [], None
    audio = np.asarray(audio)
    for i in range(0, len(audio), hop_samples):
        pending = np.concatenate([pending, mf.push(audio[i:i + hop_samples])])
        while len(pending) >= frames_per_call:
            x = front.normalize(pending[None, :frames_per_call])  # (1, 1, t, 10)
            pending = pending[frames_per_call:]
            y, state = step(x, state)
            feats.append(x[0, 0])
            scores.append(np.asarray(y, np.float64).reshape(-1, len(LABELS)))
    f, s = np.concatenate(feats), np.concatenate(scores)
    post, smoothed, firings = detector.run(s)
    return StreamResult(f, s, post, smoothed, firings)


def float_torch_step(model: Any) -> Step:
    """The float CRNN (:func:`.models.build_crnn`) as a streaming step: its GRU state is carried."""
    import torch

    def step(x: np.ndarray, h: Any) -> tuple[np.ndarray, Any]:
        model.eval()
        with torch.no_grad():
            y, h = model.step(torch.from_numpy(x), h)
        return y[0].numpy(), h

    return step


def int8_torch_step(qmodel: Any) -> Step:
    """The quantized CRNN (``lnn.init`` of :func:`.models.build_crnn`, eval) as a streaming step: the whole graph
    runs on the two new frames, and its GRU (the quantized module at ``gru``) starts from the carried state, whose
    final value it returns (a forward pre-hook gives the state, a forward hook takes it: the eval-mode GRU's
    ``(x, h) -> (y, h_n)``, the same integers as the whole recording)."""
    import torch

    gru = qmodel.get_submodule("gru")

    def step(x: np.ndarray, h: Any) -> tuple[np.ndarray, Any]:
        seen: dict[str, Any] = {}

        def keep(mod: Any, args: Any, out: Any) -> None:  # returns None: the output stays the module's
            seen["h"] = out[1]

        pre = gru.register_forward_pre_hook(lambda mod, args: (args[0], h) if h is not None else None)
        post = gru.register_forward_hook(keep)
        qmodel.eval()
        try:
            with torch.no_grad():
                y = qmodel(torch.from_numpy(x))
        finally:
            pre.remove()
            post.remove()
        return y[0].numpy(), seen["h"]

    return step


def simulator_step(sim: Any) -> Step:
    """The C simulator running a step model (a :class:`~lnn_backend_csk60xx.simulator.Simulator` of the packed
    :func:`.models.build_crnn_step`, whose GRU reads ``h0`` from a graph input and writes ``h_n`` to a graph
    output) as a streaming step: one :meth:`~lnn_backend_csk60xx.simulator.Simulator.stream` run per call, the
    state carried being the chip's own (``StatefulRun.state``: graph input name -> the GRU state, int8 at
    ``2**-8`` as float; ``None``: zeros). The same integers as the quantized model in eval on the whole
    recording."""
    run = sim.stream()

    def step(x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        if state is None:
            run.reset()
        else:
            run.state = dict(state)
        scores = run.run([x])[0]
        return np.asarray(scores), dict(run.state)

    return step


# --------------------------------------------------------------------------------------------- the sentence

@dataclass
class Sentence:
    """The streaming test recording and where its words are (sample spans)."""

    audio: np.ndarray  # int16, 16 kHz
    words: list[tuple[str, int, int]]  # (word, first sample, end sample)
    voice: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def keywords(self) -> list[tuple[str, int, int]]:
        return [w for w in self.words if w[0] in KEYWORDS]


def synthesize_sentence(seed: int = 0, *, words: Sequence[str] = SENTENCE_WORDS, clips: int = 4000,
                        cache_dir: str | Path | None = None, snr_db: float = 20.0,
                        espeak_paths: Any = None) -> Sentence:
    """A seeded 5 s recording: ``words`` spoken one by one by a test voice of the ``(clips, seed)`` data set
    (never heard in training), with pauses of 0.15..0.45 s between them, at 16 kHz, in pink noise at ``snr_db``.

    The words are synthesized once (eSpeak NG, in a fresh process like the data set) and cached beside the data.

    :raises ConfigError: the cache folder cannot be written. :raises EspeakError: eSpeak NG is missing and the
        words are not cached.
    """
    from . import data

    rng = np.random.default_rng([seed, 7])
    _, _, test_speakers = plan_clips(clips, seed)
    speaker = test_speakers[int(rng.integers(len(test_speakers)))]
    voice = f"en-US+{speaker}"
    requests = [(w, voice, int(rng.integers(150, 200)), int(rng.integers(35, 65)), 50, int(rng.integers(1, 2**31)))
                for w in words]
    cache = check_cache_dir(cache_dir if cache_dir is not None else default_cache_dir())
    key = hashlib.sha256(json.dumps({"version": data.GENERATOR_VERSION, "requests": requests}).encode()).hexdigest()
    file = cache / f"sentence-{key[:16]}.npz"
    spoken: list[np.ndarray] | None = None
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                spoken = [z[f"w{i}"] for i in range(len(words))]
        except (OSError, ValueError, KeyError):
            spoken = None
    if spoken is None:
        from .synth import locate

        spoken = data._synthesize(requests, espeak_paths or locate(), 1, False)
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{f"w{i}": w for i, w in enumerate(spoken)})
        os.replace(tmp, file)
    n = int(SENTENCE_SECONDS * SAMPLE_RATE)
    x = np.zeros(n)
    spans = []
    pos = int(rng.uniform(0.3, 0.5) * SAMPLE_RATE)
    for w, s in zip(words, spoken, strict=True):
        s = s.astype(np.float64) * (32768.0 * 10 ** (rng.uniform(-12.0, -3.0) / 20.0) / max(float(np.abs(s).max()), 1))
        if pos + len(s) > n:
            break
        x[pos:pos + len(s)] = s
        spans.append((w, pos, pos + len(s)))
        pos += len(s) + int(rng.uniform(0.15, 0.45) * SAMPLE_RATE)
    speech_rms = float(np.sqrt(np.mean(np.concatenate([x[a:b] for _, a, b in spans]) ** 2)))
    x += data._noise("pink", n, rng) * speech_rms / 10 ** (snr_db / 20.0)
    audio = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return Sentence(audio, spans, voice, {"snr_db": snr_db, "cache_file": str(file)})


def score_firings(sentence: Sentence, firings: Sequence[Firing], window: float = 1.0) -> dict[str, Any]:
    """Which keywords were found and which firings were false.

    A firing is right when it names a keyword of the sentence and comes between that word's start and ``window``
    seconds after its end (the decision lags the word: the model must hear it whole).
    """
    found = {}
    false = []
    for f in firings:
        hit = next((w for w in sentence.keywords if w[0] == f.keyword
                    and w[1] / SAMPLE_RATE <= f.time <= w[2] / SAMPLE_RATE + window), None)
        if hit is None:
            false.append(f)
        else:
            found.setdefault(hit, f)
    return {"keywords": [w[0] for w in sentence.keywords],
            "detected": [w[0] for w in sentence.keywords if w in found],
            "missed": [w[0] for w in sentence.keywords if w not in found],
            "false_firings": [(f.keyword, f.time) for f in false],
            "ok": len(found) == len(sentence.keywords) and not false}


def plot_stream(path: str | Path, sentence: Sentence, result: StreamResult, detector: Detector,
                title: str = "") -> None:
    """A PNG: the waveform with its words, the features, the smoothed keyword posteriors, the firings."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    del plt  # the Figure is built without pyplot's global state
    fig = Figure(figsize=(10, 7), dpi=80, layout="constrained")
    ax = fig.subplots(3, 1, sharex=True, height_ratios=[1.0, 1.0, 1.4])
    t = np.arange(len(sentence.audio)) / SAMPLE_RATE
    ax[0].plot(t, sentence.audio / 32768.0, lw=0.4, color="0.3")
    for w, a, b in sentence.words:
        color = "tab:red" if w in KEYWORDS else "0.5"
        ax[0].axvspan(a / SAMPLE_RATE, b / SAMPLE_RATE, color=color, alpha=0.15, lw=0)
        ax[0].text((a + b) / 2 / SAMPLE_RATE, 0.9, w, ha="center", va="top", color=color, fontsize=9,
                   transform=ax[0].get_xaxis_transform())
    ax[0].set_ylabel("waveform")
    ax[0].set_title(title or f"streaming keyword detection ({sentence.voice}, a voice not heard in training)")
    ends = frame_end(np.arange(len(result.features)))
    ax[1].imshow(result.features.T, aspect="auto", origin="lower", cmap="magma",
                 extent=(ends[0] - HOP / SAMPLE_RATE, ends[-1], -0.5, result.features.shape[1] - 0.5))
    ax[1].set_ylabel("MFCC (normalized)")
    shown = sorted({LABELS.index(w) for w, _, _ in sentence.keywords} | {LABELS.index(f.keyword)
                                                                          for f in result.firings})
    ends = frame_end((np.arange(len(result.smoothed)) + 1) * detector.frames_per_step - 1)
    for k in shown:
        ax[2].plot(ends, result.smoothed[:, k], lw=1.2, label=LABELS[k])
    others = [k for k in detector.keywords if k not in shown]
    if others:
        ax[2].plot(ends, result.smoothed[:, others].max(axis=1), lw=0.8, color="0.6", label="other keywords (max)")
    ax[2].axhline(detector.threshold, color="k", ls="--", lw=0.8, label=f"threshold {detector.threshold}")
    for f in result.firings:
        ax[2].axvline(f.time, color="tab:green", lw=1.5)
        ax[2].text(f.time, 1.02, f"{f.keyword} @ {f.time:.2f} s", ha="center", va="bottom", fontsize=8,
                   color="tab:green")
    ax[2].set_ylim(0, 1.12)
    ax[2].set_ylabel("smoothed posterior")
    ax[2].set_xlabel("time (s)")
    ax[2].legend(loc="center right", fontsize=8)
    ax[2].set_xlim(0, len(sentence.audio) / SAMPLE_RATE)
    fig.savefig(str(path))
