"""Streaming keyword detection, torch-free parts: the hop-by-hop front end gives the whole recording's features
exactly, the detector's smoothing, threshold and re-arming, the scoring of firings, and the seeded sentence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.kws import data, frontend, stream

KW = {name: i for i, name in enumerate(data.LABELS)}


# ------------------------------------------------------------------------------------------------ front end


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 24000), chunks=st.lists(st.integers(1, 2000), min_size=1))
def test_streamed_features_are_the_whole_recordings(seed, n, chunks):
    audio = (np.random.default_rng(seed).standard_normal(n + 640) * 4000).astype(np.int16)
    whole = frontend.mfcc(audio)
    mf = frontend.StreamingMfcc()
    got, pos, i = [], 0, 0
    while pos < len(audio):
        size = chunks[i % len(chunks)]
        got.append(mf.push(audio[pos:pos + size]))
        pos, i = pos + size, i + 1
    streamed = np.concatenate(got)
    assert streamed.shape == whole.shape == (1 + (len(audio) - 640) // 320, 10)
    assert np.array_equal(streamed, whole)  # the same numbers, not merely close


def test_features_of_a_clip_do_not_depend_on_its_batch():
    clips = (np.random.default_rng(5).standard_normal((7, 16000)) * 3000).astype(np.int16)
    batch = frontend.mfcc(clips)
    for i in range(len(clips)):
        assert np.array_equal(batch[i], frontend.mfcc(clips[i]))


def test_streaming_front_end_waits_for_a_whole_frame():
    mf = frontend.StreamingMfcc()
    assert mf.push(np.zeros(639, np.int16)).shape == (0, 10)
    assert mf.push(np.zeros(1, np.int16)).shape == (1, 10)
    assert mf.push(np.zeros(319, np.int16)).shape == (0, 10)
    assert mf.push(np.zeros(1 + 640, np.int16)).shape == (3, 10)


# ------------------------------------------------------------------------------------------------ detector


def _scores(steps: int, spans: list[tuple[str, int, int, float]]) -> np.ndarray:
    """Scores whose softmax puts ``p`` on the word's class over ``[a, b)`` steps, silence elsewhere."""
    s = np.zeros((steps, 12))
    s[:, data.SILENCE] = 8.0
    for word, a, b, p in spans:
        k = KW[word]
        # p = e^x / (e^x + e^8 + 10): solve for x
        s[a:b, k] = np.log(p * (np.exp(8.0) + 10.0) / (1.0 - p))
    return s


def test_detector_fires_once_per_word_at_the_right_time():
    det = stream.Detector()
    post, smoothed, firings = det.run(_scores(120, [("left", 20, 30, 0.95), ("stop", 70, 78, 0.9)]))
    assert np.allclose(post.sum(axis=1), 1.0)
    assert [f.keyword for f in firings] == ["left", "stop"]
    # fires on the step where the 4-step mean first reaches 0.6: the third step of the word
    assert [f.step for f in firings] == [22, 72]
    assert firings[0].time == pytest.approx((45 * 320 + 640) / 16000)  # the end of frame 45, the step's second
    assert smoothed[22, KW["left"]] >= 0.6 > smoothed[21, KW["left"]]


def test_detector_ignores_short_spikes():
    _, _, firings = stream.Detector().run(_scores(60, [("go", 10, 12, 0.99), ("up", 30, 31, 0.99)]))
    assert firings == []


def test_detector_re_arms_only_after_release_and_refractory():
    det = stream.Detector()
    # one long word: one firing
    assert len(det.run(_scores(100, [("yes", 10, 60, 0.99)]))[2]) == 1
    # the same word twice with a short dip that stays above the release level: one firing
    dip = _scores(100, [("yes", 10, 20, 0.99), ("yes", 20, 23, 0.45), ("yes", 23, 33, 0.99)])
    assert len(det.run(dip)[2]) == 1
    # twice with a real pause, but closer than the refractory time (0.5 s = 12.5 steps): one firing
    assert len(det.run(_scores(100, [("yes", 10, 16, 0.99), ("yes", 21, 27, 0.99)]))[2]) == 1
    # twice, far apart: two
    assert len(det.run(_scores(100, [("yes", 10, 16, 0.99), ("yes", 40, 46, 0.99)]))[2]) == 2


def test_detector_only_fires_keywords():
    _, _, firings = stream.Detector().run(_scores(60, [("unknown", 5, 50, 0.99)]))
    assert firings == []


def test_scoring_of_firings():
    sentence = stream.Sentence(np.zeros(80000, np.int16), [("happy", 8000, 16000), ("left", 20000, 26000),
                                                           ("stop", 50000, 56000)], "en-US+x")
    hit = stream.Firing(1.7, 0, "left", 0.9)
    late = stream.Firing(56000 / 16000 + 1.2, 0, "stop", 0.9)
    wrong = stream.Firing(0.8, 0, "go", 0.7)
    ok = stream.score_firings(sentence, [hit, stream.Firing(3.6, 0, "stop", 0.8)])
    assert ok["ok"] and ok["detected"] == ["left", "stop"] and ok["false_firings"] == []
    bad = stream.score_firings(sentence, [wrong, hit, late])
    assert not bad["ok"] and bad["missed"] == ["stop"] and bad["false_firings"] == [("go", 0.8), ("stop", 4.7)]


# ------------------------------------------------------------------------------------------------ the sentence


def test_sentence_is_seeded_spoken_by_a_test_voice_and_cached(tmp_path):
    pytest.importorskip("espeakng_loader")
    a = stream.synthesize_sentence(0, clips=480, cache_dir=tmp_path)
    assert a.audio.dtype == np.int16 and a.audio.shape == (80000,)
    assert [w for w, _, _ in a.words] == list(stream.SENTENCE_WORDS)
    assert [w for w, _, _ in a.keywords] == ["left", "stop"]
    starts = [s for _, s, _ in a.words]
    assert starts == sorted(starts) and all(b <= c for (_, _, b), (_, c, _) in zip(a.words, a.words[1:]))
    assert a.words[-1][2] <= 80000
    _, _, test_speakers = data.plan_clips(480, 0)
    assert a.voice.split("+")[1] in test_speakers
    cached = list(tmp_path.glob("sentence-*.npz"))
    assert len(cached) == 1
    b = stream.synthesize_sentence(0, clips=480, cache_dir=tmp_path, espeak_paths=object())  # no synthesis: cache
    assert np.array_equal(a.audio, b.audio) and a.words == b.words
    c = stream.synthesize_sentence(1, clips=480, cache_dir=tmp_path)
    assert not np.array_equal(a.audio, c.audio)


def test_the_int8_crnn_streamed_two_frames_at_a_time_equals_the_whole_recording():
    """The quantized CRNN (eval) as a streaming step, its GRU state carried: the integers of the whole recording."""
    torch = pytest.importorskip("torch")
    import lnn_backend_csk60xx.plugin as backend_plugin
    import lnn_core as lnn
    import lnn_ops_builtin.plugin as ops_plugin
    from lnn_backend_csk60xx.kws.models import build_crnn
    from lnn_backend_csk60xx.kws.stream import int8_torch_step
    from lnn_core.testing import isolated_host

    torch.manual_seed(0)
    m = lnn.init(build_crnn(), host=isolated_host([ops_plugin, backend_plugin]))
    m.train()
    m(torch.randn(4, 1, 20, 10))
    m.eval()
    x = torch.randn(1, 1, 20, 10)
    with torch.no_grad():
        whole = m(x)[0].numpy()
    step, h, parts = int8_torch_step(m), None, []
    for t in range(0, 20, 2):
        y, h = step(x[:, :, t:t + 2].numpy(), h)
        parts.append(y)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_the_int8_crnn_streams_on_the_simulator_with_its_state_carried(tmp_path):
    """The demo's step model of a quantized CRNN (its GRU's h0 a graph input, h_n a graph output, the state at
    2^-8): exported, packed, verified, and streamed through the C simulator two frames per call, it gives the
    integers of the int8 eval model on the whole recording, and so does int8 eval streamed; the final states agree
    too, a state that reaches the int8 limits included, and the vendor runtime's caveat is a pack warning."""
    torch = pytest.importorskip("torch")
    import lnn_backend_csk60xx.plugin as backend_plugin
    import lnn_core as lnn
    import lnn_ops_builtin.plugin as ops_plugin
    from lnn_backend_csk60xx.kws.demo import _export_step_model
    from lnn_backend_csk60xx.kws.models import build_crnn
    from lnn_core.testing import isolated_host

    host = isolated_host([ops_plugin, backend_plugin])
    torch.manual_seed(0)
    float_model = build_crnn()
    for p in float_model.parameters():  # large weights: a GRU state that saturates at the int8 limits
        torch.nn.init.normal_(p, std=0.3)
    m = lnn.init(build_crnn(), host=host)
    m.load_state_dict(float_model.state_dict(), strict=False)
    m.train()
    m(torch.randn(4, 1, 20, 10))
    m.eval()
    x = torch.randn(1, 1, 40, 10)
    step = _export_step_model("crnn", m, x[:, :, :10], tmp_path, host, 2)
    row = step["row"]
    assert row["state"] == {"h": "h_n"} and row["state_exponent"] == 8 and row["bit_exact"]
    assert row["warnings"] == ["csk60xx.gru.vendor_state"]
    assert row["flash_bytes"] == (tmp_path / "kws_crnn_step.bin").stat().st_size
    with torch.no_grad():
        whole = m(x)[0].numpy()
    results = {}
    for kind, run in (("sim", stream.simulator_step(step["step_sim"])), ("int8", stream.int8_torch_step(m))):
        state, parts = None, []
        for t in range(0, 40, 2):
            y, state = run(x[:, :, t:t + 2].numpy(), state)
            parts.append(np.asarray(y).reshape(-1, 12))
        results[kind] = (np.concatenate(parts), np.asarray(state["h"] if kind == "sim" else state).reshape(-1))
    np.testing.assert_array_equal(results["sim"][0], whole)
    np.testing.assert_array_equal(results["int8"][0], whole)
    np.testing.assert_array_equal(results["sim"][1], results["int8"][1])
    h = results["sim"][1] * 256
    assert np.array_equal(h, np.round(h)) and (h.max() == 127 or h.min() == -128)
    # a stream restarted from a saved state goes on as the first one
    run = stream.simulator_step(step["step_sim"])
    _, saved = run(x[:, :, :2].numpy(), None)
    again, _ = stream.simulator_step(step["step_sim"])(x[:, :, 2:4].numpy(), saved)
    np.testing.assert_array_equal(np.asarray(again).reshape(-1, 12), whole[1:2])


def test_qat_projection_keeps_the_gru_within_the_chips_input_alignment():
    """The demo's projection after each QAT step: a GRU whose W_ih grew past 127 * 2^(n_i - 11) is clipped back,
    so n_i + n_iw >= 11 (csk60xx.gru.in_alignment) and the exported model passes the check."""
    torch = pytest.importorskip("torch")
    import lnn_backend_csk60xx.plugin as backend_plugin
    import lnn_core as lnn
    import lnn_ops_builtin.plugin as ops_plugin
    from lnn_backend_csk60xx.kws.demo import _gru_alignment
    from lnn_backend_csk60xx.kws.models import build_crnn, build_dscnn
    from lnn_core.testing import isolated_host

    host = isolated_host([ops_plugin, backend_plugin])
    torch.manual_seed(0)
    m = lnn.init(build_crnn(), host=host)
    m.train()
    m(torch.randn(4, 1, 20, 10) * 4)
    with torch.no_grad():
        m.gru.weight_ih_l0.mul_(40.0)
    m.eval()
    (p,) = m.gru.integer_params()
    assert p["n_i"] + p["n_iw"] < 11
    assert any(v.rule_id == "csk60xx.gru.in_alignment" for v in lnn.check(m, torch.zeros(1, 1, 20, 10),
                                                                          host=host).violations)
    _gru_alignment(m)()
    (p,) = m.gru.integer_params()
    assert p["n_i"] + p["n_iw"] == 11  # clipped to the bound exactly: the largest weights stay as large as allowed
    assert not any(v.rule_id == "csk60xx.gru.in_alignment" for v in lnn.check(m, torch.zeros(1, 1, 20, 10),
                                                                              host=host).violations)
    assert _gru_alignment(lnn.init(build_dscnn(), host=host)) is None
