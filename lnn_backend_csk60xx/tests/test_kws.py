"""The keyword demo's torch-free parts: the data plan and its split by voice, the seeded generator and its cache,
the resampler, the MFCC front end against a formula-by-formula reference, and the errors for a missing
synthesizer and an unwritable cache."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lnn_backend_csk60xx.kws import data, frontend, synth
from lnn_core.errors import ConfigError

# ------------------------------------------------------------------------------------------------ the plan


def test_plan_splits_by_voice_and_balances_classes():
    specs, train, test = data.plan_clips(1200, seed=3)
    assert not set(train) & set(test) and len(test) >= 10
    assert sorted(train + test) == sorted(data.VARIANTS)
    speakers = {s.speaker: set() for s in specs if s.text}
    for s in specs:
        if s.text:
            speakers[s.speaker].add(s.test)
            assert s.test == (s.speaker in test)
            assert s.voice.split("+") == [s.voice.split("+")[0], s.speaker]
            assert s.voice.split("+")[0] in data.ACCENTS
    assert all(len(v) == 1 for v in speakers.values())  # no voice in both halves
    labels = np.array([s.label for s in specs])
    assert np.bincount(labels).tolist() == [100] * 12
    is_test = np.array([s.test for s in specs])
    for label in range(12):  # every class on both sides
        assert 0 < is_test[labels == label].sum() < 100
    unknown = {s.text for s in specs if s.label == data.UNKNOWN}
    assert unknown <= set(data.UNKNOWN_WORDS) and not unknown & set(data.KEYWORDS) and len(unknown) > 10
    assert all(s.text == data.LABELS[s.label] for s in specs if s.label < data.UNKNOWN)
    assert all(s.text == "" for s in specs if s.label == data.SILENCE)


def test_plan_follows_the_seed():
    a, b, c = (data.plan_clips(240, seed)[0] for seed in (1, 1, 2))
    assert a == b and a != c


def test_plan_refuses_too_few_clips():
    with pytest.raises(ConfigError) as info:
        data.plan_clips(40, 0)
    assert info.value.option == "clips" and info.value.value == 40


# ------------------------------------------------------------------------------------------------ resampling


@pytest.mark.parametrize("freq", [100.0, 1000.0, 3000.0, 6500.0])
def test_resampler_keeps_tones_in_the_pass_band(freq):
    t = np.arange(22050) / 22050
    y = data.resample_22050_to_16000(np.sin(2 * np.pi * freq * t))
    assert len(y) == 16000
    ref = np.sin(2 * np.pi * freq * np.arange(16000) / 16000)
    assert np.abs(y - ref)[400:-400].max() < 1e-5


def test_resampler_removes_tones_above_8khz():
    t = np.arange(22050) / 22050
    y = data.resample_22050_to_16000(np.sin(2 * np.pi * 9000.0 * t))
    assert np.abs(y[400:-400]).max() < 1e-3  # (the ends see the jump to the zero padding)


# ------------------------------------------------------------------------------------------------ front end


def _reference_mfcc(clip: np.ndarray) -> np.ndarray:
    """The MFCC written out formula by formula (plain DFT sums, per-bin triangle weights, cosine sums)."""
    x = clip.astype(np.float64) / 32768.0
    rate, frame, hop, nfft, n_mels, n_mfcc = 16000, 640, 320, 1024, 40, 10

    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = mel(20.0), mel(7600.0)
    edges = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(nfft // 2 + 1):
            f = k * rate / nfft
            if left < f <= centre:
                weights[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                weights[m, k] = (right - f) / (right - centre)
    n = np.arange(frame)
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / frame) for i in range(frame)])
    k = np.arange(nfft // 2 + 1)[:, None]
    basis = np.exp(-2j * np.pi * k * n[None, :] / nfft)  # the DFT of the zero-padded frame, as a sum
    out = np.zeros((49, n_mfcc))
    for t in range(49):
        seg = x[t * hop:t * hop + frame] * window
        power = np.abs(basis @ seg) ** 2
        logmel = [math.log(float(weights[m] @ power) + 1e-6) for m in range(n_mels)]
        for c in range(n_mfcc):
            scale = math.sqrt(1.0 / n_mels) if c == 0 else math.sqrt(2.0 / n_mels)
            out[t, c] = scale * sum(logmel[j] * math.cos(math.pi * c * (2 * j + 1) / (2 * n_mels))
                                    for j in range(n_mels))
    return out


def _test_clips() -> np.ndarray:
    rng = np.random.default_rng(5)
    t = np.arange(16000) / 16000
    chirp = 8000 * np.sin(2 * np.pi * (200 + 3000 * t) * t) * np.hanning(16000)
    noise = rng.normal(0, 3000, 16000)
    return np.clip(np.stack([chirp, noise, chirp + noise]), -32768, 32767).astype(np.int16)


def test_mfcc_matches_the_formulas():
    clips = _test_clips()
    got = frontend.mfcc(clips)
    assert got.shape == (3, 49, 10) and got.dtype == np.float32
    for clip, feats in zip(clips, got, strict=True):
        ref = _reference_mfcc(clip)
        np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=2e-3 * np.abs(ref).max())


def test_mfcc_of_a_tone_peaks_in_its_mel_band():
    t = np.arange(16000) / 16000
    tone = (10000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
    fb = frontend.mel_filterbank()
    band = int(np.argmax(fb[:, round(1000.0 * 1024 / 16000)]))
    # invert the (orthonormal, truncated) DCT far enough to see the spectral envelope's peak
    envelope = frontend.mfcc(tone)[10] @ frontend.dct_matrix()
    assert abs(int(np.argmax(envelope)) - band) <= 2


def test_front_end_normalizes_with_the_training_statistics(tmp_path):
    clips = _test_clips()
    raw = frontend.mfcc(clips)
    fe = frontend.FrontEnd.fit(raw)
    x = fe(clips)
    assert x.shape == (3, 1, 49, 10) and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(-1, 10).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x.reshape(-1, 10).std(0), 1, atol=1e-3)
    fe.save(tmp_path / "frontend.json")
    again = frontend.FrontEnd.load(tmp_path / "frontend.json")
    assert np.array_equal(again(clips[1]), x[1:2])
    # the command that makes lnn run's input gives the same array
    frontend.write_wav(tmp_path / "c.wav", clips[2])
    assert frontend.main([str(tmp_path / "c.wav"), "-o", str(tmp_path / "x.npy"),
                          "--norm", str(tmp_path / "frontend.json")]) == 0
    assert np.array_equal(np.load(tmp_path / "x.npy"), x[2:3])


def test_front_end_refuses_bad_files(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [0.0] * 3, "std": [1.0] * 3}))
    with pytest.raises(ConfigError) as info:
        frontend.FrontEnd.load(tmp_path / "bad.json")
    assert info.value.option == "norm" and "does not fit" in info.value.headline
    with pytest.raises(ConfigError) as info:
        frontend.FrontEnd.load(tmp_path / "missing.json")
    assert info.value.option == "norm" and "cannot read" in info.value.headline
    frontend.FrontEnd(np.zeros(10), np.ones(10)).save(tmp_path / "good.json")
    (tmp_path / "x.wav").write_bytes(b"RIFF....")
    assert frontend.main([str(tmp_path / "x.wav"), "-o", str(tmp_path / "x.npy"),
                          "--norm", str(tmp_path / "good.json")]) == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: kws front end: cannot read '{tmp_path / 'x.wav'}' as a "
                                              "WAV file")
    frontend.write_wav(tmp_path / "loud.wav", np.zeros(16000, np.int16))
    with open(tmp_path / "loud.wav", "r+b") as f:  # claim 8 kHz in the header
        f.seek(24)
        f.write((8000).to_bytes(4, "little"))
    with pytest.raises(ConfigError) as info:
        frontend.read_wav(tmp_path / "loud.wav")
    assert info.value.option == "wav" and "1 channels, 2 bytes per sample, 8000 Hz" in str(info.value)
    with pytest.raises(ConfigError) as info:
        frontend.mfcc(np.zeros(100, np.int16))
    assert info.value.option == "audio" and info.value.value == 100 and "shorter than one frame" in str(info.value)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_espeak_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import espeakng_loader raises ImportError
    with pytest.raises(synth.EspeakError) as info:
        synth.locate()
    err = info.value
    assert err.headline.startswith("lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG speech "
                                   "synthesizer is not installed")
    assert "pip install espeakng-loader" in err.hint and isinstance(err.cause, ImportError)


def test_missing_espeak_library_and_data(tmp_path):
    with pytest.raises(synth.EspeakError) as info:
        synth.locate(str(tmp_path / "libespeak-ng.so"), str(tmp_path))
    assert info.value.path == str(tmp_path / "libespeak-ng.so") and "pip install espeakng-loader" in info.value.hint
    pytest.importorskip("espeakng_loader")
    with pytest.raises(synth.EspeakError) as info:
        synth.locate(None, str(tmp_path / "no-data"))
    assert info.value.path == str(tmp_path / "no-data") and "voice data" in info.value.headline
    assert info.value.details["actual"] == "no such folder"


def test_missing_espeak_is_reported_before_any_synthesis(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(synth.EspeakError):
        data.load_dataset(48, 0, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_cache_folder(tmp_path, where):
    if where == "file":
        (tmp_path / "f").write_text("")
        path = tmp_path / "f" / "cache"  # a folder cannot be made inside a file, for root neither
    else:
        path = Path("/proc/lnn-kws-cache")  # /proc takes no new folders, for root neither
    with pytest.raises(ConfigError) as info:
        data.load_dataset(48, 0, cache_dir=path, progress=False)
    err = info.value
    assert err.option == "cache-dir" and err.value == str(path)
    assert err.headline == f"lnn demo kws: the data cache folder '{path}' cannot be written"
    assert err.hint == "choose a writable folder with --cache-dir"


# ------------------------------------------------------------------------------------------------ generator


def test_generator_is_seeded_deterministic_and_cached(tmp_path):
    pytest.importorskip("espeakng_loader")
    a = data.load_dataset(60, 7, cache_dir=tmp_path / "a", workers=2, progress=False)
    b = data.load_dataset(60, 7, cache_dir=tmp_path / "b", workers=1, progress=False)
    assert not a.from_cache and not b.from_cache
    assert a.audio.shape == (60, 16000) and a.audio.dtype == np.int16
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.labels, b.labels)
    assert a.cache_file.read_bytes() == b.cache_file.read_bytes()
    c = data.load_dataset(60, 7, cache_dir=tmp_path / "a", progress=False)
    assert c.from_cache and np.array_equal(a.audio, c.audio)
    d = data.load_dataset(60, 8, cache_dir=tmp_path / "a", progress=False)
    assert not d.from_cache and not np.array_equal(a.audio, d.audio)
    # speech where a word was spoken, only noise in silence clips
    speech = a.labels != data.SILENCE
    peaks = np.abs(a.audio.astype(np.int32)).max(axis=1)
    assert peaks[speech].min() > 32768 * 10 ** (-24 / 20) * 0.9
    assert peaks[~speech].max() < 32768 * 10 ** (-30 / 20) * 5
    assert set(np.nonzero(a.test)[0]) == {s.index for s in a.specs if s.test}


def test_kws_data_modules_import_no_torch():
    code = ("import sys\nimport lnn_backend_csk60xx.kws.data, lnn_backend_csk60xx.kws.frontend, "
            "lnn_backend_csk60xx.kws.synth, lnn_backend_csk60xx.kws\n"
            "print(','.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
