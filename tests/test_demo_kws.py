"""``lnn demo kws --quick`` end to end: synthesized clips, MFCC, DS-CNN float -> constrain -> QAT -> export -> pack ->
the C simulator on every test clip -> lnn.verify, bit-exact; and the demo command's routing and errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lnn_core.cli import main

pytest.importorskip("espeakng_loader")


def test_quick_demo_end_to_end(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main(["demo", "kws", "--quick", "--out-dir", str(out), "--cache-dir", str(cache), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    d = res["dataset"]
    assert d["clips"] == 360 and d["train_clips"] + d["test_clips"] == 360 and not d["from_cache"]
    assert len(d["train_voice_names"]) == d["train_voices"] and len(d["test_voice_names"]) == d["test_voices"]
    assert not set(d["test_voice_names"]) & set(d["train_voice_names"])
    assert json.loads((out / "summary.json").read_text())["models"] == res["models"]
    (row,) = res["models"]
    assert row["model"] == "dscnn" and row["bit_exact"] and row["simulator_equals_eval"]
    assert row["clips_differing"] == 0 and row["simulator_accuracy"] == row["int8_accuracy"]
    assert row["spilled_to_psram"] == 0 and 0 < row["share_mem_bytes"] <= row["share_mem_limit"]
    assert row["flash_bytes"] == (out / "kws_dscnn.bin").stat().st_size
    for name in ("kws_dscnn.onnx", "kws_dscnn.qdq.onnx", "kws_dscnn_qat.pt", "frontend.json", "summary.txt",
                 "examples/yes.wav", "examples/silence.npy"):
        assert (out / name).is_file(), name
    # an example input through `lnn run` gives the simulator's scores for that clip
    assert main(["run", str(out / "kws_dscnn.bin"), str(out / "examples/yes.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 12)


def test_kws_options_are_refused_by_the_digits_demo(capsys):
    assert main(["demo", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: lnn demo: option --quick belongs to the keyword demo")
    assert "hint: run lnn demo kws --quick" in " ".join(err.split())


def test_kws_demo_without_espeak_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    code = main(["demo", "kws", "--quick", "--out-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("EspeakError: lnn demo kws (lnn_backend_csk60xx.kws.synth): the eSpeak NG speech "
                          "synthesizer is not installed")
    assert "pip install espeakng-loader" in err


def test_kws_demo_with_an_unwritable_cache(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code = main(["demo", "kws", "--quick", "--out-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "f/c")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: lnn demo kws: the data cache folder '{tmp_path}/f/c' "
                                              "cannot be written")
