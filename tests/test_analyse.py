"""``lnn.analyse`` and ``lnn analyse``: weights, float-vs-int8 per layer, and per-layer sensitivity, on the bundled
digits model (a short QAT run) and on small generated layers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scriptable_output import _conforms
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.demo import _train, accuracy, build_model, load_digits_split
from lnn_core import analyse
from lnn_core.cli import main

FACTORY = "lnn_backend_csk60xx.demo:build_model"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits model after a short QAT run, its checkpoint, and the test split as .npz."""
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits_split(0)
    model = lnn.init(build_model())
    _train(model, xtr, ytr, 2, 3e-3, 0, "qat", False)
    folder = tmp_path_factory.mktemp("digits")
    torch.save(model.state_dict(), folder / "qat.pt")
    np.savez(folder / "test.npz", x=xte.numpy(), y=yte.numpy())
    np.save(folder / "test_x.npy", xte.numpy())
    return model, xte, yte, folder


def _fresh(folder):
    model = lnn.init(build_model())
    model.load_state_dict(torch.load(folder / "qat.pt"))
    return model


def test_weights_per_layer_on_digits(digits):
    model, _, _, _ = digits
    report = lnn.analyse.weights(model)  # the package attribute is the module
    assert [r["layer"] for r in report.rows] == ["stem", "conv1", "conv2", "conv3", "fc"]
    for r in report.rows:
        m = model.get_submodule(r["layer"])
        assert r["w_min"] == pytest.approx(float(m.weight.detach().min())) and r["w_max"] == pytest.approx(
            float(m.weight.detach().max()))
        assert r["n_w"] == m.integer_params()["n_w"]  # the grid the export writes
        assert r["int8_clipped"] == 0.0  # the floor rule fits every weight
        assert r["clamp_clipped"] is None and r["bias_clamp_clipped"] is None  # lnn.init: no stage-1 clamps
    assert "conv3" in report.table() and json.loads(report.to_json())["layers"][0]["layer"] == "stem"


def test_weights_clamp_share_and_outliers_of_a_planted_outlier():
    model = lnn.constrain(nn.Sequential(nn.Linear(64, 8)))  # stage 1: weights clamped at 7 x mean|w|
    layer = model.get_submodule("0")
    with torch.no_grad():
        layer.weight.uniform_(-0.1, 0.1)
        layer.weight[3, 5] = 5.0  # far beyond 7 x mean|w| and beyond 4 std
        layer.bias.fill_(0.5)
        layer.bias[0] = 20.0  # beyond the +-8 bias clamp
    (row,) = analyse.weights(model).rows
    assert row["clamp_clipped"] == pytest.approx(1 / 512) and row["bias_clamp_clipped"] == pytest.approx(1 / 8)
    assert row["outliers"] == 1 and row["outlier_share"] == pytest.approx(1 / 512)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=12, max_size=12),
       st.floats(0.5, 4.0))
def test_weights_statistics_match_numpy(values, k):
    model = lnn.init(nn.Sequential(nn.Linear(4, 3)))
    w = torch.tensor(values, dtype=torch.float32).reshape(3, 4)
    with torch.no_grad():
        model.get_submodule("0").weight.copy_(w)
    (row,) = analyse.weights(model, k=k).rows
    a = w.double().numpy()
    assert row["w_std"] == pytest.approx(a.std(), abs=1e-9)
    assert row["outliers"] == (int((np.abs(a - a.mean()) > k * a.std()).sum()) if a.std() > 0 else 0)


def test_layers_agree_on_digits_and_leave_the_model_as_it_was(digits):
    model, x, y, _ = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        int8_out = model(x)
    report = analyse.layers(model, x, y)
    names = [r["layer"] for r in report.rows]
    assert names[0] == "q_input_x" and names[-1] == "fc" and {"stem", "conv1", "conv2", "conv3"} <= set(names)
    assert report.output["top1_int8"] == pytest.approx(accuracy(model, x, y))  # int8 = the model's eval
    assert report.rows[-1]["sqnr_db"] == pytest.approx(report.output["sqnr_db"])  # fc's output is the output
    assert all(r["sqnr_db"] > 10 and r["cosine"] > 0.95 for r in report.rows) and not report.calibrated_here
    assert report.rows[0]["max_error_lsb"] <= 1.0  # the input Quant: at most one LSB of rounding... (half up)
    # nothing changed: parameters, buffers, stages, the eval output
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), int8_out)


def test_a_broken_layer_is_where_agreement_drops_and_ranks_first(digits):
    _, x, y, folder = digits
    model = _fresh(folder)
    model.conv2.out_q.running.fill_(0.05)  # an output grid far too fine: conv2 saturates
    report = analyse.layers(model, x, y, threshold_db=15)
    assert report.first_below == "conv2" and report.largest_drop["layer"] == "conv2"
    sens = analyse.sensitivity(model, x, y)
    assert sens.metric == "top1" and sens.rows[0]["layer"] == "conv2" and sens.rows[0]["delta"] < -5
    assert sens.all_int8 == pytest.approx(accuracy(model, x, y))
    unlabelled = analyse.sensitivity(model, x)
    assert unlabelled.metric == "sqnr_db" and unlabelled.rows[0]["layer"] == "conv2"
    assert all(r["delta"] is None for r in unlabelled.rows) and math.isinf(unlabelled.baseline)


def test_uncalibrated_models_are_calibrated_on_the_data_and_say_so(digits):
    _, x, y, _ = digits
    report = analyse.layers(lnn.init(build_model()), x[:64], y[:64])
    assert report.calibrated_here and report.output["cosine"] > 0.9


@pytest.mark.parametrize("what", ["weights", "layers", "sensitivity"])
def test_cli_tables_json_and_pictures(digits, tmp_path, capfd, what):
    _, _, _, folder = digits
    data = [str(folder / "test.npz")] if what != "weights" else []
    out = tmp_path / "an"
    argv = ["analyse", what, FACTORY, *data, "--checkpoint", str(folder / "qat.pt"), "--out-dir", str(out)]
    assert main([*argv, "--json"]) == 0
    std, _ = capfd.readouterr()
    result = json.loads(std)
    _conforms(result, f"lnn analyse {what}")
    assert json.loads((out / f"{what}.json").read_text())["layers"] == result["layers"]
    pytest.importorskip("matplotlib")
    assert (out / f"{what}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    assert "conv2" in capfd.readouterr().out


def test_cli_takes_npy_without_labels_and_names_bad_data(digits, tmp_path, capfd):
    _, _, _, folder = digits
    assert main(["analyse", "sensitivity", FACTORY, str(folder / "test_x.npy"), "--checkpoint",
                 str(folder / "qat.pt"), "--out-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["metric"] == "sqnr_db"
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((2, 1, 8, 8)))
    assert main(["analyse", "layers", FACTORY, str(tmp_path / "bad.npz"), "--out-dir", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    assert "has no inputs" in err and "inputs" in err and "hint:" in err
