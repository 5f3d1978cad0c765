"""eSpeak NG through ctypes: the speech of the keyword data set (the ``espeakng-loader`` package ships the library
and its voice data, so nothing is downloaded).

The library keeps state between utterances (the pitch flutter's phase, among others) that neither
``espeak_Terminate`` nor a new ``espeak_Initialize`` resets, so the same text gives different samples after
different earlier utterances. The data generator therefore synthesizes each fixed list of utterances in a fresh
process (:mod:`.data`): one :class:`Espeak` per process, created there, never in a parent that forks workers.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnn_core.errors import LnnError

__all__ = ["Espeak", "EspeakError", "SAMPLE_RATE", "INSTALL", "locate"]

SAMPLE_RATE = 22050
INSTALL = "pip install espeakng-loader   (or the demo extra: pip install 'lnn-backend-csk60xx[demo]')"

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(LnnError):
    """The eSpeak NG speech synthesizer cannot be used. Attributes: ``path`` (library or data), ``cause``."""


@dataclass(frozen=True)
class EspeakPaths:
    library: str
    data: str
    version: str


def locate(library_path: str | None = None, data_path: str | None = None) -> EspeakPaths:
    """The library and voice data to use: the given paths, else those of the ``espeakng-loader`` package.

    Loads the library once to prove it is usable (no ``espeak_Initialize``: that is left to the worker processes).

    :raises EspeakError: the package is not installed, the library does not load, or the voice data is missing.
    """
    from pathlib import Path

    version = "given paths"
    if library_path is None or data_path is None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise EspeakError(
                "lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG speech synthesizer is not installed",
                {"needed": "the Python package espeakng-loader (the eSpeak NG library and its voice data)",
                 "cause": f"{type(exc).__name__}: {exc}"},
                f"install it: {INSTALL}", path=None, cause=exc) from exc
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = "espeakng-loader " + dist_version("espeakng-loader")
        except PackageNotFoundError:
            version = "espeakng-loader (unknown version)"
        library_path = library_path or espeakng_loader.get_library_path()
        if data_path is None:
            data_path = str(Path(espeakng_loader.__file__).parent / "espeak-ng-data")
    try:
        lib = ctypes.CDLL(library_path)
    except OSError as exc:
        raise EspeakError(
            f"lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG library '{library_path}' cannot be loaded",
            {"cause": str(exc)}, f"reinstall it: {INSTALL}", path=library_path, cause=exc) from exc
    if not hasattr(lib, "espeak_ng_SetRandSeed"):
        raise EspeakError(
            f"lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG library '{library_path}' is too old",
            {"rule": "eSpeak NG 1.52 or later (espeak_ng_SetRandSeed makes the clips reproducible)",
             "actual": "no espeak_ng_SetRandSeed"}, f"upgrade it: {INSTALL.replace('install', 'install -U', 1)}",
            path=library_path, cause=None)
    if not (Path(data_path) / "phontab").is_file():
        raise EspeakError(
            f"lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG voice data '{data_path}' is missing",
            {"rule": "the folder must hold the compiled voice data (phontab, phondata, en_dict, voices/)",
             "actual": "no phontab in it" if Path(data_path).is_dir() else "no such folder"},
            f"reinstall it: {INSTALL}", path=data_path, cause=None)
    return EspeakPaths(str(library_path), str(data_path), version)


class Espeak:
    """One initialized eSpeak NG in this process (synchronous output, 22,050 Hz int16 audio)."""

    def __init__(self, paths: EspeakPaths) -> None:
        self._lib = ctypes.CDLL(paths.library)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library may call it
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, paths.data.encode(), 0)
        if rate != SAMPLE_RATE:
            raise EspeakError(
                f"lnn demo kws (lnn_backend_csk60xx.kws.synth): eSpeak NG did not start with the data '{paths.data}'",
                {"rule": f"espeak_Initialize returns the sample rate, {SAMPLE_RATE}", "actual": rate},
                f"reinstall it: {INSTALL}", path=paths.data, cause=None)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """``text`` spoken by ``voice`` (``accent+variant``, e.g. ``en-US+f3``) as int16 samples at 22,050 Hz.

        :param rate: words per minute (80..450); :param pitch: 0..100; :param pitch_range: 0..100;
        :param seed: the synthesizer's random seed (its noise sources).
        """
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"lnn demo kws (lnn_backend_csk60xx.kws.synth): eSpeak NG has no voice '{voice}'",
                              {"rule": "the voice data must hold the accent and the variant"},
                              f"reinstall it: {INSTALL}", path=voice, cause=None)
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._lib.espeak_ng_SetRandSeed(int(seed))
        self._chunks = []
        data = text.encode()
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise EspeakError(f"lnn demo kws (lnn_backend_csk60xx.kws.synth): eSpeak NG failed on {text!r}",
                              {"voice": voice, "status": status}, f"reinstall it: {INSTALL}", path=voice, cause=None)
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
