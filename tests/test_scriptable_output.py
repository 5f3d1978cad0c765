"""Scriptable output (issue 11, items 6, 7 and 10): ``--json`` is one JSON value on stdout and nothing else, one
schema per command whatever the input (docs/cli-json.md is the contract, checked key by key here); a crash is exit
2 with one line; progress bars go to stderr, only on a terminal and never with ``--quiet``; memory advice names
layers (module paths) and is written to ``--report-dir`` also when packing is refused; activations in PSRAM are
warned about with their bytes and readers."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lnn_core.cli import main

ROOT = Path(__file__).resolve().parents[1]

MODULE = textwrap.dedent("""
    import os
    from torch import nn


    class Noisy(nn.Module):
        '''Prints while it is traced, in Python and on file descriptor 1 (what torch's C++ graph dumps do).'''

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
            self.head = nn.Linear(16 * 16 * 16, 4)

        def forward(self, x):
            print("graph dump from forward")
            os.write(1, b"fd-level graph dump\\n")
            return self.head(self.body(x).flatten(1))


    def small():
        return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU())
""")


def _cal(side: int) -> list[str]:
    """``--calibrate`` with samples of a (1, side, side) input, saved in the current folder (export and verify
    refuse a model whose activation scales never saw data)."""
    import numpy as np

    path = f"cal{side}.npy"
    np.save(path, np.random.default_rng(0).random((4, 1, side, side), dtype=np.float32))
    return ["--calibrate", path]


def _schemas() -> dict[str, dict[str, str]]:
    """The tables of docs/cli-json.md: command -> key -> type."""
    text = (ROOT / "docs" / "cli-json.md").read_text(encoding="utf-8")
    out: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        command = section.splitlines()[0].strip()
        rows = re.findall(r"^\| ([a-z_0-9]+) \| ([a-z\\|]+) \|", section, flags=re.M)
        out[command] = {k: t.replace("\\|", "|") for k, t in rows if k != "key"}
    return out


_TYPES = {"bool": bool, "int": int, "number": (int, float), "str": str, "list": list, "object": dict}


def _conforms(data: dict, command: str) -> None:
    schema = _schemas()[command]
    assert set(data) == set(schema), f"{command}: keys {sorted(set(data) ^ set(schema))} differ from docs/cli-json.md"
    for key, kind in schema.items():
        value = data[key]
        if kind == "any":
            continue
        allowed = kind.split("|")
        if value is None:
            assert "null" in allowed, f"{command}: {key} is null"
            continue
        types = tuple(t for a in allowed if a != "null" for t in (_TYPES[a] if isinstance(_TYPES[a], tuple)
                                                                  else (_TYPES[a],)))
        assert isinstance(value, types) and not (bool not in types and isinstance(value, bool)), (command, key, value)


@pytest.fixture
def noisy(tmp_path, monkeypatch):
    (tmp_path / "lnn_first_noisy.py").write_text(MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # factories import from the current folder
    sys.modules.pop("lnn_first_noisy", None)
    yield tmp_path
    sys.modules.pop("lnn_first_noisy", None)


def _json_only(capfd, code_expected, argv):
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == code_expected, err
    return json.loads(out), err  # the whole of stdout parses: nothing else is there


def test_json_stdout_holds_only_the_result_while_the_model_prints(noisy, capfd):
    data, err = _json_only(capfd, 0, ["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--json"])
    assert "graph dump from forward" in err and "fd-level graph dump" in err  # moved, not lost
    _conforms(data, "lnn check")
    data, err = _json_only(capfd, 0, ["verify", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--json",
                                           *_cal(16)])
    assert "fd-level graph dump" in err and data["ok"] is True
    _conforms(data, "lnn verify")
    assert all(set(t) >= {"name", "shape", "exponent", "equal"} for t in data["tensors"])
    # without --json the model's prints stay where they were
    assert main(["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16"]) == 0
    out = capfd.readouterr().out
    assert "graph dump from forward" in out and "fits: yes" in out


def test_check_has_one_schema_for_onnx_files_and_factories(noisy, capfd):
    assert main(["export", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "-o", "n.onnx", *_cal(16)]) == 0
    capfd.readouterr()
    for argv, code in ((["check", "n.onnx"], 0), (["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16"], 0),
                       (["check", "n.onnx", "--share-mem", "4K"], 1),
                       (["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--share-mem", "4K"], 1)):
        data, _ = _json_only(capfd, code, [*argv, "--json"])
        _conforms(data, "lnn check")
        assert data["ok"] is (code == 0) and data["fits"] is (code == 0)
        if code:  # the layers to shrink, by module path, with their bytes
            layers = {r["layer"] for r in data["memory"]["offenders"]}
            assert layers & {"body.0", "body.2", "head"} and all(r["bytes"] > 0 for r in data["memory"]["offenders"])


def test_pack_schema_on_success_and_refusal_and_reports_when_refused(noisy, capfd):
    assert main(["export", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "-o", "n.onnx", *_cal(16)]) == 0
    capfd.readouterr()
    data, _ = _json_only(capfd, 0, ["pack", "n.onnx", "-o", "n.bin", "--json"])
    _conforms(data, "lnn pack")
    assert data["ok"] and data["bytes"] == Path("n.bin").stat().st_size
    data, _ = _json_only(capfd, 1, ["pack", "n.onnx", "-o", "n.bin", "--share-mem", "4K", "--report-dir", "rep",
                                    "--json"])
    _conforms(data, "lnn pack")
    assert not data["ok"] and data["rule_id"] == "csk60xx.memory.share_mem_bytes" and data["limit"] == 4096
    assert sorted(Path(p).name for p in data["reports"]) == ["memory.json", "memory.txt"]
    report = json.loads(Path("rep/memory.json").read_text())
    assert report["offenders"] == data["offenders"] and report["offenders"][0]["bytes"] >= report["offenders"][-1][
        "bytes"]
    text = Path("rep/memory.txt").read_text()
    assert "packing refused" in text and "body.0" in text and "what to shrink first" in text
    # the text output says the same
    assert main(["pack", "n.onnx", "-o", "n.bin", "--share-mem", "4K"]) == 1
    err = capfd.readouterr().err
    assert "largest there:" in err and "head: prefetch" in err and "--share-mem of at least" in err


def test_activations_in_psram_are_a_warning_with_bytes_and_readers(noisy, capfd):
    assert main(["export", "lnn_first_noisy:small", "--input-shape", "1,1,128,128", "-o", "s.onnx", *_cal(128)]) == 0
    capfd.readouterr()
    assert main(["pack", "s.onnx", "-o", "s.bin", "--share-mem", "48K"]) == 0
    out, err = capfd.readouterr()
    assert "warning: 65536 bytes of activations spill to PSRAM" in err and "graph input" in err
    assert re.search(r"read by q_input\w*", err) and "warning" not in out
    data, _ = _json_only(capfd, 0, ["pack", "s.onnx", "-o", "s.bin", "--share-mem", "48K", "--json"])
    assert data["spills"] == [{"tensor": "input_1", "layer": "input", "bytes": 65536, "read_by": data["spills"][0][
        "read_by"]}] and data["spills"][0]["read_by"]
    data, _ = _json_only(capfd, 0, ["check", "s.onnx", "--share-mem", "48K", "--json"])
    assert data["memory"]["spills"][0]["bytes"] == 65536


def test_check_summary_says_one_thing(noisy, capfd):
    assert main(["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--share-mem", "4K"]) == 1
    out = capfd.readouterr().out
    assert "fits True" not in out and "fits: yes" not in out
    assert out.strip().splitlines()[-1] == "fits: NO (1 rule error, the memory plan does not fit)"
    assert "memory: does not fit" in out and "body.0: activation" in out


def test_run_and_plugins_json_conform(noisy, capfd):
    import numpy as np

    assert main(["export", "lnn_first_noisy:small", "--input-shape", "1,1,16,16", "-o", "s.onnx", *_cal(16)]) == 0
    assert main(["pack", "s.onnx", "-o", "s.bin"]) == 0
    np.save("x.npy", np.zeros((1, 1, 16, 16), np.float32))
    capfd.readouterr()
    data, _ = _json_only(capfd, 0, ["run", "s.bin", "x.npy", "-o", "y.npy", "--json"])
    _conforms(data, "lnn run")
    data, _ = _json_only(capfd, 0, ["plugins", "--json"])
    assert isinstance(data, list) and data
    for entry in data:
        _conforms(entry, "lnn plugins")


def test_a_crash_is_exit_2_with_one_line(capfd):
    import types

    from lnn_core import hookimpl
    from lnn_core.testing import isolated_host

    plugin = types.ModuleType("boom_first")

    @hookimpl
    def lnn_register_commands(registry):
        registry.add("boom", "crashes", lambda p: p.add_argument("--json", action="store_true"),
                     lambda args, host: 1 // 0)

    plugin.lnn_register_commands = lnn_register_commands
    host = isolated_host([plugin])
    assert main(["boom", "--json"], host=host) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("lnn boom: internal error in plugin") and "ZeroDivisionError" in err and "hint:" in err


def _on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run ``lnn`` with stderr on a pseudo-terminal (so tqdm draws) and stdout on a pipe."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "lnn_core.cli", *argv], stdout=subprocess.PIPE, stderr=slave,
                            env=env, cwd=os.getcwd())
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read().decode()
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_and_quiet_silences_it(noisy):
    assert main(["export", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "-o", "n.onnx", *_cal(16)]) == 0
    code, out, err = _on_a_terminal(["pack", "n.onnx", "-o", "n.bin", "--json"])
    assert code == 0 and json.loads(out)["ok"] and "lnn pack n.onnx" in err  # the bar, on stderr only
    code, out, err = _on_a_terminal(["pack", "n.onnx", "-o", "n.bin", "--json", "--quiet"])
    assert code == 0 and json.loads(out)["ok"] and "lnn pack" not in err
    code, out, err = _on_a_terminal(["check", "n.onnx", "-q"])
    assert code == 0 and "lnn check" not in err and out.strip().endswith("fits: yes")
    code, out, err = _on_a_terminal(["check", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--json"])
    assert code == 0 and json.loads(out)["ok"] and "lnn check lnn_first_noisy:Noisy" in err
    code, out, err = _on_a_terminal(["verify", "lnn_first_noisy:Noisy", "--input-shape", "1,1,16,16", "--json",
                                     "-q", *_cal(16)])
    assert code == 0 and json.loads(out)["ok"] and "lnn verify" not in err
