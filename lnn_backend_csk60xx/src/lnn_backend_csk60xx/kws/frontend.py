"""The keyword front end: 49 x 10 MFCC per 1 s clip at 16 kHz ("Hello Edge", Zhang et al. 2017), numpy only.

Why MFCC and not 49 x 40 log-mel: the DS-CNN of "Hello Edge" was sized on 49 x 10 MFCC, whose input is a quarter
of the log-mel matrix (490 values to hand from the DSP to the NPU and to hold in share-memory, and a quarter of
the first layer's work); and keeping only the first ten cepstral coefficients smooths away the harmonics of the
pitch, which is one of the things this data set varies most (and the test voices differ in).

Boundary: this runs on the chip's DSP (or the host), outside the NPU graph. The packed model's input is the
normalized feature matrix ``(1, 1, 49, 10)`` (frames x coefficients), float32, which the model's first Quant op
turns into int8; the same function makes the training data and the ``lnn run`` inputs::

    python -m lnn_backend_csk60xx.kws.frontend clip.wav -o x.npy --norm lnn-demo-kws/frontend.json
    lnn run lnn-demo-kws/kws_dscnn.bin x.npy -o scores.npy

Steps: 40 ms Hann frames every 20 ms (49 frames, no padding), the power spectrum of a 1024-point FFT, 40
triangular mel filters from 20 Hz to 7.6 kHz (HTK mel scale), natural log (floor 1e-6), the orthonormal DCT-II,
the first 10 coefficients, then each coefficient standardized with the training set's mean and standard deviation
(stored in ``frontend.json`` beside the model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lnn_core.errors import ConfigError

__all__ = ["FrontEnd", "StreamingMfcc", "mfcc", "mfcc_of_frames", "mel_filterbank", "dct_matrix", "main"]

SAMPLE_RATE = 16000
FRAME, HOP, NFFT = 640, 320, 1024
N_MELS, N_MFCC = 40, 10
F_MIN, F_MAX = 20.0, 7600.0
LOG_FLOOR = 1e-6


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, nfft: int = NFFT, rate: int = SAMPLE_RATE, fmin: float = F_MIN,
                   fmax: float = F_MAX) -> np.ndarray:
    """Triangular filters on the HTK mel scale, ``(n_mels, nfft // 2 + 1)``, peak 1 at each centre."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(nfft // 2 + 1) * rate / nfft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)


def dct_matrix(n_out: int = N_MFCC, n_in: int = N_MELS) -> np.ndarray:
    """The orthonormal DCT-II, first ``n_out`` rows: ``(n_out, n_in)``."""
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    m = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    m[0] /= np.sqrt(2.0)
    return m


def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)  # periodic Hann


def mfcc_of_frames(frames: np.ndarray) -> np.ndarray:
    """Raw MFCC of ready-cut frames: ``(n, 640)`` float32 samples (scaled by 1/32768) -> ``(n, 10)`` float32.

    The one computation of the front end: :func:`mfcc` (whole clips, many frames per call) and
    :class:`StreamingMfcc` (one hop at a time) both call it, and each output row depends on its own frame alone,
    computed the same way whatever the number of rows: one FFT per frame (numpy 2.2 and older round the FFTs of
    a batch differently from one frame's), and the mel and DCT sums are numpy reductions along the row (a matrix
    product's rounding may depend on how many rows it is given). So framewise and whole-clip features
    are the same numbers.
    """
    bins, weights, starts = _mel_sparse()
    windowed = np.asarray(frames, np.float32) * _window()
    spec = np.empty((len(windowed), NFFT // 2 + 1), np.complex64)
    for i, row in enumerate(windowed):  # frame by frame: numpy 2.2 and older round a batched FFT differently
        spec[i] = np.fft.rfft(row, NFFT)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    mel = np.add.reduceat(power[:, bins] * weights, starts, axis=1)
    logmel = np.log(mel + np.float32(LOG_FLOOR))
    return (logmel[:, None, :] * dct_matrix().astype(np.float32)[None]).sum(axis=2)


def _mel_sparse() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mel filterbank's non-zero weights, filter by filter: (bin indices, weights float32, filter starts)."""
    fb = mel_filterbank()
    rows, cols = np.nonzero(fb)
    return cols, fb[rows, cols].astype(np.float32), np.searchsorted(rows, np.arange(fb.shape[0]))


def mfcc(audio: np.ndarray) -> np.ndarray:
    """Raw MFCC of int16 (or float, same scale) clips: ``(..., 16000)`` -> ``(..., 49, 10)`` float32.

    Samples are scaled by 1/32768; clips of another length give ``1 + (len - 640) // 320`` frames.
    """
    x = np.asarray(audio, dtype=np.float32) / np.float32(32768.0)
    if x.shape[-1] < FRAME:
        raise ConfigError(f"kws front end: a clip of {x.shape[-1]} samples is shorter than one frame",
                          {"rule": f"at least {FRAME} samples (40 ms at 16 kHz)", "actual": x.shape[-1]},
                          "pass 1 s clips at 16 kHz", option="audio", value=x.shape[-1], valid=f">= {FRAME}")
    n_frames = 1 + (x.shape[-1] - FRAME) // HOP
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(FRAME)[None, :]
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty((len(flat), n_frames, N_MFCC), np.float32)
    for i in range(0, len(flat), 32):  # in batches: the framed clips take 125 kB each
        block = flat[i:i + 32, idx]
        out[i:i + 32] = mfcc_of_frames(block.reshape(-1, FRAME)).reshape(len(block), n_frames, N_MFCC)
    return out.reshape(*x.shape[:-1], n_frames, N_MFCC)


class StreamingMfcc:
    """The front end one hop at a time, as the DSP runs it: feed samples as they come, get each frame's MFCC.

    Keeps the last 640 samples; every 320 new samples complete one frame. Over a recording, the frames it gives
    are exactly those of :func:`mfcc` on the whole recording (same frame cuts, same computation per frame).
    """

    def __init__(self) -> None:
        self._buf = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """int16 (or same-scale float) samples -> the raw MFCC ``(n, 10)`` of the n frames they complete."""
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32).ravel() / np.float32(32768.0)])
        n = 0 if len(self._buf) < FRAME else 1 + (len(self._buf) - FRAME) // HOP
        if n == 0:
            return np.zeros((0, N_MFCC), np.float32)
        frames = self._buf[np.arange(n)[:, None] * HOP + np.arange(FRAME)[None, :]]
        self._buf = self._buf[n * HOP:]
        return mfcc_of_frames(frames)


@dataclass(frozen=True)
class FrontEnd:
    """MFCC plus the per-coefficient standardization learned on the training clips."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray) -> FrontEnd:
        """The standardization of raw :func:`mfcc` features ``(..., 49, 10)`` (the training clips')."""
        feats = np.asarray(raw, dtype=np.float64).reshape(-1, N_MFCC)
        return cls(feats.mean(axis=0), np.maximum(feats.std(axis=0), 1e-3))

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw :func:`mfcc` features ``(N, 49, 10)`` -> model inputs ``(N, 1, 49, 10)`` float32."""
        return ((np.asarray(raw) - self.mean) / self.std)[:, None].astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Model inputs: ``(N, 16000)`` -> ``(N, 1, 49, 10)`` float32 (one clip ``(16000,)`` -> ``(1, 1, 49, 10)``)."""
        audio = np.asarray(audio)
        return self.normalize(mfcc(audio.reshape(-1, audio.shape[-1])))

    def to_json(self) -> dict[str, object]:
        return {"features": "mfcc", "sample_rate": SAMPLE_RATE, "frame": FRAME, "hop": HOP, "nfft": NFFT,
                "n_mels": N_MELS, "n_mfcc": N_MFCC, "f_min": F_MIN, "f_max": F_MAX, "log_floor": LOG_FLOOR,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FrontEnd:
        try:
            data = json.loads(Path(path).read_text())
            mean, std = np.array(data["mean"], np.float64), np.array(data["std"], np.float64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"kws front end: cannot read the normalization file '{path}'",
                              {"cause": f"{type(exc).__name__}: {exc}"},
                              "pass the frontend.json that lnn demo kws wrote beside the model",
                              option="norm", value=str(path), valid=None) from exc
        if mean.shape != (N_MFCC,) or std.shape != (N_MFCC,) or not np.all(std > 0):
            raise ConfigError(f"kws front end: the normalization file '{path}' does not fit this front end",
                              {"rule": f"{N_MFCC} means and {N_MFCC} positive standard deviations",
                               "actual": f"{mean.shape[0] if mean.ndim else 0} means, std {std.tolist()}"},
                              "pass the frontend.json that lnn demo kws wrote beside the model",
                              option="norm", value=str(path), valid=None)
        return cls(mean, std)


def read_wav(path: str | Path) -> np.ndarray:
    """A mono 16-bit 16 kHz WAV file as int16 samples, cut or zero-padded to 1 s."""
    import wave

    try:
        with wave.open(str(path), "rb") as f:
            params = (f.getnchannels(), f.getsampwidth(), f.getframerate())
            data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(f"kws front end: cannot read '{path}' as a WAV file", {"cause": str(exc)},
                          "pass a mono 16-bit PCM WAV file at 16 kHz", option="wav", value=str(path),
                          valid=None) from exc
    if params != (1, 2, SAMPLE_RATE):
        raise ConfigError(f"kws front end: '{path}' is not mono 16-bit audio at 16 kHz",
                          {"rule": "1 channel, 2 bytes per sample, 16000 Hz",
                           "actual": f"{params[0]} channels, {params[1]} bytes per sample, {params[2]} Hz"},
                          "convert it first, e.g. sox in.wav -r 16000 -c 1 -b 16 out.wav", option="wav",
                          value=str(path), valid=None)
    return np.pad(data[:SAMPLE_RATE], (0, max(0, SAMPLE_RATE - len(data))))


def write_wav(path: str | Path, audio: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(np.asarray(audio, dtype="<i2").tobytes())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lnn_backend_csk60xx.kws.frontend clip.wav -o x.npy --norm frontend.json``."""
    p = argparse.ArgumentParser(prog="python -m lnn_backend_csk60xx.kws.frontend",
                                description="the keyword model's input (1, 1, 49, 10) from a 1 s 16 kHz WAV file")
    p.add_argument("wav")
    p.add_argument("-o", "--output", required=True, help="the .npy file to write (input of lnn run)")
    p.add_argument("--norm", required=True, help="frontend.json written by lnn demo kws")
    args = p.parse_args(argv)
    try:
        x = FrontEnd.load(args.norm)(read_wav(args.wav))
        np.save(args.output, x)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ConfigError: kws front end: cannot write '{args.output}': {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {x.shape[2]} frames x {x.shape[3]} MFCC")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
