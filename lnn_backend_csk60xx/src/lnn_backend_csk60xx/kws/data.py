"""The keyword data set: 1 s clips at 16 kHz of synthesized speech, seeded, split by voice, cached on disk.

Twelve classes as in Speech Commands' keyword task: the ten keywords, ``unknown`` (other words: the Speech
Commands auxiliary words) and ``silence`` (background noise only). Variety comes from

* the speaker: an eSpeak NG voice variant (male, female and Klatt voices; :data:`VARIANTS`), each speaking two
  English accents (:data:`ACCENTS`; US, New York, British RP and regional, Scottish, Caribbean);
* each utterance: speaking rate, pitch and pitch range, the synthesizer's random seed;
* each clip: the word's place in the second (time shift), gain, and a background noise (white, pink, brown,
  mains hum, modulated noise) at a random signal-to-noise ratio.

The split is by speaker: the test set holds only voice variants that no training clip uses. Everything follows
from ``(n_clips, seed)``. The synthesized words (the slow part) are cached as one ``.npz`` file keyed by a hash of
every synthesis request; the noise, shift and gain are applied again on each load (cheap, seeded per clip).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnn_core.errors import ConfigError

__all__ = ["KEYWORDS", "UNKNOWN_WORDS", "LABELS", "ACCENTS", "VARIANTS", "SAMPLE_RATE", "CLIP_SAMPLES",
           "KwsData", "ClipSpec", "plan_clips", "load_dataset", "resample_22050_to_16000", "default_cache_dir",
           "check_cache_dir"]

GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero", "one",
                 "two", "three", "four", "five", "six", "seven", "eight", "nine", "backward", "forward", "follow",
                 "learn", "visual")
LABELS = (*KEYWORDS, "unknown", "silence")
UNKNOWN, SILENCE = len(KEYWORDS), len(KEYWORDS) + 1
ACCENTS = ("en-US", "en-US-nyc", "en-GB-x-rp", "en", "en-GB-scotland", "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029")
# eSpeak NG voice variants that sound like people (no robots, whispers or extreme speeds)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Henrique",
            "Hugo", "Jacky", "Lee", "Mario", "Michael", "Mike", "Nguyen", "Reed", "adam", "anika", "antonio", "aunty",
            "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa", "gustave", "ian",
            "iven", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro",
            "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis", "victor", "zac")
NOISES = ("white", "pink", "brown", "hum", "modulated")
RATE_WPM = (140, 220)
PITCH = (25, 75)
PITCH_RANGE = (20, 90)
SNR_DB = (8.0, 30.0)
PEAK_DBFS = (-24.0, -1.0)
SILENCE_DBFS = (-75.0, -30.0)
CHUNK = 96  # utterances per synthesis process (fixed, so the samples do not depend on the number of workers)


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the plan. ``text`` is empty for a silence clip."""

    index: int
    label: int
    text: str
    speaker: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    synth_seed: int
    test: bool


@dataclass
class KwsData:
    """The clips (int16, ``(N, 16000)``), labels (0..11, :data:`LABELS`), and the split by speaker."""

    audio: np.ndarray
    labels: np.ndarray
    test: np.ndarray
    specs: list[ClipSpec]
    train_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    cache_file: Path
    from_cache: bool
    seconds: float
    synthesizer: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, test: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.audio[self.test == test], self.labels[self.test == test]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lnn/kws`` (``~/.cache/lnn/kws``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lnn" / "kws"


def check_cache_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove that a file can be written there.

    :raises ConfigError: the folder cannot be created or written (``option`` ``cache-dir``, ``value`` the path).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lnn-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"lnn demo kws: the data cache folder '{path}' cannot be written",
                          {"rule": "the synthesized clips are cached there after the first run",
                           "cause": f"{type(exc).__name__}: {exc.strerror or exc}"},
                          "choose a writable folder with --cache-dir", option="cache-dir", value=str(path),
                          valid=None, path=str(path)) from exc
    return path


def plan_clips(n_clips: int, seed: int, test_fraction: float = 0.2) -> tuple[list[ClipSpec], list[str], list[str]]:
    """The clips, labels and speakers that ``(n_clips, seed)`` stand for; no audio.

    Every class gets ``n_clips // 12`` clips (``unknown`` the rest). The speakers are the voice variants, shuffled;
    the first ``test_fraction`` of them are the test speakers. Each speaker speaks two accents.
    """
    if n_clips < 12 * 4:
        raise ConfigError(f"lnn demo kws: {n_clips} clips is too few", {"rule": "at least 4 clips per class (48)"},
                          "ask for more clips", option="clips", value=n_clips, valid=">= 48")
    rng = np.random.default_rng([seed, 0])
    speakers = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    n_test = max(1, round(len(speakers) * test_fraction))
    test_speakers, train_speakers = speakers[:n_test], speakers[n_test:]
    accents = {s: [ACCENTS[i] for i in rng.choice(len(ACCENTS), 2, replace=False)] for s in speakers}
    per_class = n_clips // len(LABELS)
    counts = [per_class] * len(LABELS)
    counts[UNKNOWN] += n_clips - per_class * len(LABELS)
    specs: list[ClipSpec] = []
    for label, count in enumerate(counts):
        order = [speakers[i] for i in rng.permutation(len(speakers))]
        for k in range(count):
            if label == SILENCE:
                test = bool(rng.random() < n_test / len(speakers))
                specs.append(ClipSpec(len(specs), label, "", "", "", 0, 0, 0, 0, test))
                continue
            speaker = order[k % len(order)]
            text = LABELS[label] if label != UNKNOWN else UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]
            accent = accents[speaker][int(rng.integers(2))]
            specs.append(ClipSpec(len(specs), label, text, speaker, f"{accent}+{speaker}",
                                  int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                                  int(rng.integers(PITCH[0], PITCH[1] + 1)),
                                  int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                                  int(rng.integers(1, 2**31 - 1)), speaker in test_speakers))
    return specs, train_speakers, test_speakers


# --------------------------------------------------------------------------------------------- resampling

_UP, _DOWN = 320, 441  # 16000 / 22050 = 320 / 441
_PASS_HZ, _STOP_HZ = 7200.0, 8000.0


def resample_22050_to_16000(x: np.ndarray) -> np.ndarray:
    """22,050 Hz to 16 kHz in the frequency domain; float64 out, same scale, ``len(x) * 320 // 441`` samples.

    The signal is zero-padded (to a whole number of 441-sample blocks, with a 20 ms margin against wrap-around),
    its spectrum cut above 8 kHz with a raised-cosine roll-off from 7.2 kHz, and transformed back at 16 kHz.
    """
    x = np.asarray(x, dtype=np.float64)
    n_out = len(x) * _UP // _DOWN
    blocks = -(-(len(x) + 441) // _DOWN)
    n_in, n_res = blocks * _DOWN, blocks * _UP
    spec = np.fft.rfft(x, n_in)[:n_res // 2 + 1]
    f = np.arange(len(spec)) * (22050.0 / n_in)
    spec *= np.clip(0.5 + 0.5 * np.cos(np.pi * (f - _PASS_HZ) / (_STOP_HZ - _PASS_HZ)), 0.0, 1.0) ** (f > _PASS_HZ)
    return np.fft.irfft(spec, n_res)[:n_out] * (n_res / n_in)


def _trim(x: np.ndarray, rel: float = 0.02, pad: int = 160) -> np.ndarray:
    """The span where ``|x|`` exceeds ``rel`` of its peak, with ``pad`` samples either side."""
    loud = np.nonzero(np.abs(x) > rel * max(1.0, float(np.abs(x).max())))[0]
    if not len(loud):
        return x[:0]
    return x[max(0, loud[0] - pad):loud[-1] + 1 + pad]


def _synthesize_chunk(job: tuple[Any, list[tuple[str, str, int, int, int, int]]]) -> list[np.ndarray]:
    """Run in a fresh process: speak each request, resample to 16 kHz, trim; int16 arrays."""
    from .synth import Espeak

    paths, requests = job
    tts = Espeak(paths)
    out = []
    for text, voice, rate, pitch, pitch_range, seed in requests:
        wav = tts.say(text, voice, rate=rate, pitch=pitch, pitch_range=pitch_range, seed=seed)
        y = _trim(resample_22050_to_16000(wav))
        out.append(np.clip(np.rint(y), -32768, 32767).astype(np.int16))
    return out


def _synthesize(requests: list[tuple[str, str, int, int, int, int]], paths: Any, workers: int,
                progress: bool) -> list[np.ndarray]:
    import multiprocessing as mp

    from tqdm import tqdm

    jobs = [(paths, requests[i:i + CHUNK]) for i in range(0, len(requests), CHUNK)]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    # one fresh process per chunk: eSpeak NG keeps state between utterances that nothing resets
    with mp.get_context(method).Pool(max(1, min(workers, len(jobs))), maxtasksperchild=1) as pool:
        chunks = list(tqdm(pool.imap(_synthesize_chunk, jobs), total=len(jobs), leave=False, disable=not progress,
                           desc=f"synthesizing {len(requests)} words (eSpeak NG, {workers} processes)"))
    return [w for chunk in chunks for w in chunk]


# --------------------------------------------------------------------------------------------- mixing

def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS background noise of one kind."""
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown", "modulated"):
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        shape = 1.0 / np.maximum(f, 20.0) ** (0.5 if kind != "brown" else 1.0)
        x = np.fft.irfft(np.fft.rfft(white) * shape, n)
        if kind == "modulated":  # a slowly varying level, like distant talk or traffic
            t = np.arange(n) / SAMPLE_RATE
            x = x * (1.0 + 0.8 * np.sin(2 * np.pi * rng.uniform(1.0, 5.0) * t + rng.uniform(0, 2 * np.pi)))
    else:  # mains hum and harmonics over a little hiss
        t = np.arange(n) / SAMPLE_RATE
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        x = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
                for h in range(1, 8)) + 0.05 * white
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def render_clip(spec: ClipSpec, speech: np.ndarray, seed: int) -> np.ndarray:
    """One 1 s int16 clip: the word at a random place and level, plus a background noise at a random SNR."""
    rng = np.random.default_rng([seed, 1, spec.index])
    kind = NOISES[int(rng.integers(len(NOISES)))]
    noise = _noise(kind, CLIP_SAMPLES, rng)
    if spec.label == SILENCE or not len(speech):
        level = 32768.0 * 10 ** (rng.uniform(*SILENCE_DBFS) / 20.0)
        x = noise * level
    else:
        s = speech.astype(np.float64)
        if len(s) > CLIP_SAMPLES:
            start = (len(s) - CLIP_SAMPLES) // 2
            s = s[start:start + CLIP_SAMPLES]
        s = s * (32768.0 * 10 ** (rng.uniform(*PEAK_DBFS) / 20.0) / max(float(np.abs(s).max()), 1.0))
        x = np.zeros(CLIP_SAMPLES)
        offset = int(rng.integers(0, CLIP_SAMPLES - len(s) + 1))
        x[offset:offset + len(s)] = s
        rms = float(np.sqrt(np.mean(s ** 2)))
        x += noise * rms / 10 ** (rng.uniform(*SNR_DB) / 20.0)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------- the data set

def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cache_key(requests: Sequence[tuple[Any, ...]], synthesizer: str) -> str:
    text = json.dumps({"version": GENERATOR_VERSION, "synthesizer": synthesizer, "chunk": CHUNK,
                       "resampler": ["fft", _PASS_HZ, _STOP_HZ], "requests": list(requests)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_dataset(n_clips: int = 4000, seed: int = 0, *, cache_dir: str | Path | None = None, workers: int | None = None,
                 progress: bool = True, espeak_paths: Any = None) -> KwsData:
    """The data set for ``(n_clips, seed)``: synthesized on the first call, read from the cache afterwards.

    :param cache_dir: where the synthesized words are kept (default :func:`default_cache_dir`).
    :param workers: synthesis processes (default: the CPUs this process may use).
    :param espeak_paths: a :func:`.synth.locate` result (default: the ``espeakng-loader`` package's).
    :raises ConfigError: the cache folder cannot be written.
    :raises EspeakError: eSpeak NG is missing (only when the clips are not cached yet).
    """
    t0 = time.perf_counter()
    cache = check_cache_dir(cache_dir if cache_dir is not None else default_cache_dir())
    specs, train_speakers, test_speakers = plan_clips(n_clips, seed)
    speech_specs = [s for s in specs if s.text]
    requests = [(s.text, s.voice, s.rate, s.pitch, s.pitch_range, s.synth_seed) for s in speech_specs]
    paths = espeak_paths
    file = cache / f"kws-{n_clips}-{seed}-{_cache_key(requests, 'espeak-ng')}.npz"
    words: list[np.ndarray] | None = None
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                flat, offsets = z["speech"], z["offsets"]
                synthesizer = str(z["synthesizer"])
            if len(offsets) == len(requests) + 1:
                words = [flat[offsets[i]:offsets[i + 1]] for i in range(len(requests))]
        except (OSError, ValueError, KeyError):
            words = None  # a damaged cache file is written again
    from_cache = words is not None
    if words is None:
        from .synth import locate

        paths = paths or locate()
        synthesizer = paths.version
        words = _synthesize(requests, paths, workers or _cpus(), progress)
        offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, speech=np.concatenate(words), offsets=offsets, synthesizer=np.array(synthesizer))
        os.replace(tmp, file)
    speech = dict(zip((s.index for s in speech_specs), words, strict=True))
    empty = np.zeros(0, np.int16)
    audio = np.stack([render_clip(s, speech.get(s.index, empty), seed) for s in specs])
    return KwsData(audio=audio, labels=np.array([s.label for s in specs], np.int64),
                   test=np.array([s.test for s in specs], bool), specs=specs, train_speakers=tuple(train_speakers),
                   test_speakers=tuple(test_speakers), cache_file=file, from_cache=from_cache,
                   seconds=time.perf_counter() - t0, synthesizer=synthesizer)
