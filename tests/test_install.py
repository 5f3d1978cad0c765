"""The Dockerfile builds the environment of the README's first command: its install line is that command's, word for
word, and its default command runs ``lnn demo`` from the same venv. (No Docker daemon runs in CI, so the file is
checked here, not built.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_first_command() -> list[str]:
    """The first line of the README's first ``sh`` block, split at ``&&``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no sh block"
    first = block.group(1).strip().splitlines()[0]
    return [part.strip() for part in first.split("&&")]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def test_dockerfile_runs_the_readme_first_command():
    readme = _readme_first_command()
    assert readme[-1].endswith("lnn demo"), readme
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [arg for word, arg in steps if word == "RUN"]
    # every part of the README's command but the last (running the demo) is the install RUN, in order
    install = [part.strip() for part in runs[-1].split("&&")]
    assert install == readme[:-1]
    # the default command is the README's last part, run from the same working folder as the install
    cmd = dict(steps)["CMD"]
    assert " ".join(json.loads(cmd)) == readme[-1]
    assert ("COPY", ". .") in steps and dict(steps)["WORKDIR"].startswith("/")
    # anything before the install only adds the system packages a slim image lacks (the C compiler for cffi)
    for extra in runs[:-1]:
        assert all(shlex.split(part)[0] in ("apt-get", "rm") for part in extra.split("&&")), extra


def test_requirements_pin_torch_like_the_readme():
    reqs = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "torch==2.13.0" in reqs
    tox = (ROOT / "tox.ini").read_text(encoding="utf-8")
    assert "torch==2.13.0" in tox  # the test environments run the torch the Dockerfile installs
