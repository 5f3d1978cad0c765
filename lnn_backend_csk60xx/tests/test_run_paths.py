"""``lnn run`` with output and dump paths that cannot be written: an error naming the path and the option
(exit 2), checked before the model runs, never a traceback (issue 12 item 6)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from _helpers import make_model, tnode
from test_backend_cli import small_model

from lnn_core.cli import main

LONG = "t" * 300


@pytest.fixture
def packed(tmp_path, capsys):
    onnx.save(small_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 2, 6, 6), np.float32))
    assert main(["pack", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bin")]) == 0
    capsys.readouterr()
    return tmp_path


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return code, out, err


@pytest.mark.parametrize("output, why", [
    ("nodir/y.npy", "the folder '{tmp}/nodir' does not exist"),
    ("m.bin/y.npy", "'{tmp}/m.bin' is a file, not a folder"),
    ("afolder", "neither .npy nor .bin"),
    ("afolder.npy", "it is a folder"),
])
def test_unwritable_outputs(packed, output, why, capsys):
    (packed / "afolder").mkdir()
    (packed / "afolder.npy").mkdir()
    code, out, err = _run(["run", str(packed / "m.bin"), str(packed / "x.npy"), "-o", str(packed / output)], capsys)
    assert code == 2 and out == ""
    first = err.splitlines()[0]
    assert first.startswith("ConfigError: ") and why.format(tmp=packed) in first, err
    assert err.rstrip().splitlines()[-1].lstrip().startswith("hint:")


def test_an_output_the_system_refuses(packed, capsys):
    # /proc takes no new files, for root neither
    code, _, err = _run(["run", str(packed / "m.bin"), str(packed / "x.npy"), "-o", "/proc/lnn_y.npy"], capsys)
    assert code == 2 and err.startswith("ConfigError: option -o: cannot write '/proc/lnn_y.npy'"), err


@pytest.mark.parametrize("dump, why", [
    ("m.bin", "it is a file, not a folder"),
    ("m.bin/sub", "the folder cannot be created"),
    ("/proc/lnn_dump", "the folder cannot be created"),
])
def test_unwritable_dump_folders(packed, dump, why, capsys):
    target = dump if dump.startswith("/") else str(packed / dump)
    code, out, err = _run(["run", str(packed / "m.bin"), str(packed / "x.npy"), "-o", str(packed / "y.npy"),
                           "--dump", target], capsys)
    assert code == 2 and err.startswith(f"ConfigError: option --dump: cannot write '{target}': {why}"), err
    assert not (packed / "y.npy").exists()  # refused before the model ran


def test_a_dump_folder_is_created_with_its_parents(packed, capsys):
    code, _, err = _run(["run", str(packed / "m.bin"), str(packed / "x.npy"), "-o", str(packed / "y.npy"),
                         "--dump", str(packed / "a" / "b")], capsys)
    assert code == 0, err
    assert len(json.loads((packed / "a" / "b" / "index.json").read_text())) == 5


def test_a_300_character_tensor_name_is_dumped(tmp_path, capsys):
    nodes = [tnode("Quant", ["x"], [LONG], name="quant", scale_x=4),
             tnode("iqAdd", [LONG, LONG], [LONG + "2"], name="add", scale_x=4, scale_y=4, scale_o=3),
             tnode("Dequant", [LONG + "2"], ["y"], name="deq", scale_o=3)]
    onnx.save(make_model(nodes, {"x": (1, 2, 4, 4)}, {"y": (1, 2, 4, 4)}), tmp_path / "long.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 2, 4, 4), np.float32))
    assert main(["pack", str(tmp_path / "long.onnx"), "-o", str(tmp_path / "long.bin")]) == 0
    code, _, err = _run(["run", str(tmp_path / "long.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                         "--dump", str(tmp_path / "dump")], capsys)
    assert code == 0, err
    index = json.loads((tmp_path / "dump" / "index.json").read_text())
    by_tensor = {v["tensor"]: k for k, v in index.items()}
    assert LONG in by_tensor and LONG + "2" in by_tensor
    a, b = by_tensor[LONG], by_tensor[LONG + "2"]
    assert a != b and len(a) <= 104 and len(b) <= 104  # cut, distinct (a hash of the whole name)
    assert np.array_equal(np.load(tmp_path / "dump" / a), np.full((1, 2, 4, 4), 16, np.int8))


def test_check_of_a_missing_file_is_named_before_its_input_shapes(tmp_path, capsys):
    code, _, err = _run(["check", str(tmp_path / "kws"), "--input-shape", "1,1,8,8"], capsys)
    assert code == 2 and err.startswith(f"ModelFileError: cannot read ONNX file '{tmp_path / 'kws'}': it does not "
                                        "exist") and "package.module:factory" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(packed, capsys):
    ro = packed / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for extra in (["-o", str(ro / "y.npy")], ["-o", str(packed / "y.npy"), "--dump", str(ro / "dump")]):
            code, _, err = _run(["run", str(packed / "m.bin"), str(packed / "x.npy"), *extra], capsys)
            assert code == 2 and "cannot write" in err and "Permission denied" in err, err
    finally:
        ro.chmod(0o700)
