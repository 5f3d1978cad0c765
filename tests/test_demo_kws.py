"""``lnn demo kws --quick`` end to end: synthesized clips, MFCC, DS-CNN float -> constrain -> QAT -> export -> pack ->
the C simulator on every test clip -> lnn.verify, bit-exact; the CRNN and its streaming; and the demo command's
routing and errors."""

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
    row, crnn = res["models"]
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
    # the CRNN: float only until the GRU op family exists, then the same flow as the DS-CNN
    assert crnn["model"] == "crnn" and 0.0 <= crnn["float_accuracy"] <= 100.0
    if crnn["int8_blocked"]:
        assert "GRU" in crnn["int8_blocked"] and (out / "kws_crnn_float.pt").is_file()
    else:
        assert crnn["bit_exact"] and crnn["simulator_equals_eval"] and crnn["spilled_to_psram"] == 0
    st = res["streaming"]
    assert [w["word"] for w in st["words"]] == ["happy", "left", "house", "seven", "stop", "bird"]
    assert st["voice"].split("+")[1] in d["test_voice_names"]
    assert "float" in st["runs"] and (out / "stream.png").stat().st_size > 10_000 and (out / "sentence.wav").is_file()
    for run in st["runs"].values():  # (one epoch of a few hundred clips: the firings themselves are not judged here)
        assert set(run) >= {"firings", "detected", "missed", "false_firings", "ok"}
    if not crnn["int8_blocked"]:
        # the int8 CRNN streamed on the C simulator through its step model (GRU state in and out), the same
        # integers as int8 eval streamed and as the int8 model on the whole sentence at once
        step = crnn["step_model"]
        assert step["bit_exact"] and step["state"] == {"h": "h_n"} and step["state_exponent"] == 8
        assert step["warnings"] == ["csk60xx.gru.vendor_state"] and (out / "kws_crnn_step.bin").is_file()
        assert set(st["runs"]) == {"float", "int8", "sim"} and st["plotted_run"] == "sim"
        assert st["int8_stream_equals_whole"] and st["sim_stream_equals_int8"] and st["sim_stream_equals_whole"]
        assert st["model_steps"] == 124  # 5 s: 249 frames, two per step
        summary = (out / "summary.txt").read_text()
        assert "streamed integers equal int8 eval's stream and the whole sentence's" in summary
        assert "csk60xx.gru.vendor_state" in summary


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


def test_crnn_streamed_step_by_step_equals_the_whole_recording():
    """The CRNN on a whole recording, and fed two frames at a time with its GRU state carried, through the
    streaming front end and detector: the same scores (float rounding apart), the same features exactly."""
    import torch

    from lnn_backend_csk60xx.kws import frontend, stream
    from lnn_backend_csk60xx.kws.models import build_crnn

    torch.manual_seed(0)
    model = build_crnn().eval()
    for p in model.parameters():  # a model whose scores move: random weights, not the zero-mean init alone
        torch.nn.init.normal_(p, std=0.3)
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(3 * 16000) * 2000).astype(np.int16)
    front = frontend.FrontEnd(rng.normal(size=10), rng.uniform(0.5, 2.0, size=10))
    res = stream.stream(audio, front, stream.float_torch_step(model), hop_samples=160)
    x = front.normalize(frontend.mfcc(audio)[None])
    assert np.array_equal(res.features, x[0, 0, :len(res.features)])
    with torch.no_grad():
        whole = model(torch.from_numpy(x))[0].numpy()
    assert whole.shape == res.scores.shape == (149 // 2, 12)
    assert np.abs(whole).max() > 1.0
    np.testing.assert_allclose(res.scores, whole, rtol=0, atol=1e-4)
