"""scripts/venv.sh installs into ./venv only what is not there yet, in either order of the README's commands.

Runs the real script in a copy of the repository's requirement files, with a stand-in
``venv/bin/python`` that records each ``pip install`` instead of installing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.harness import REPO

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../installs.log"
"""


def checkout(tmp_path: Path) -> Path:
    """A directory with the requirement files, pyproject.toml, scripts/venv.sh and a stand-in venv."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "venv.sh", tmp_path / "scripts" / "venv.sh")
    for path in [*REPO.glob("requirements*.txt"), REPO / "pyproject.toml"]:
        shutil.copy2(path, tmp_path / path.name)
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text("")
    return tmp_path


def source_venv(root: Path, requirements: str | None) -> list[str]:
    """Source scripts/venv.sh as scripts/test (no REQUIREMENTS) or scripts/start does; the installs so far."""
    prefix = f"REQUIREMENTS={requirements} " if requirements else ""
    subprocess.run(["bash", "-c", f"{prefix}source scripts/venv.sh"], cwd=root, check=True, timeout=30,
                   capture_output=True)
    log = root / "venv" / "installs.log"
    return log.read_text().splitlines() if log.exists() else []


def test_start_after_test_installs_nothing(tmp_path):
    """The full dev install (a superset) satisfies scripts/start's requirements.txt."""
    root = checkout(tmp_path)
    assert len(source_venv(root, None)) == 1  # scripts/test: requirements-dev.txt
    assert len(source_venv(root, "requirements.txt")) == 1  # scripts/start: nothing more
    assert len(source_venv(root, None)) == 1


def test_test_after_start_installs_only_the_superset_once(tmp_path):
    """After scripts/start, scripts/test installs the dev requirements once; neither command installs again."""
    root = checkout(tmp_path)
    installs = source_venv(root, "requirements.txt")
    assert len(installs) == 1 and installs[0].endswith("-r requirements.txt")
    installs = source_venv(root, None)
    assert len(installs) == 2 and installs[1].endswith("-r requirements-dev.txt")
    assert len(source_venv(root, "requirements.txt")) == 2
    assert len(source_venv(root, None)) == 2


def test_a_changed_pin_is_installed_again(tmp_path):
    """Editing any requirements file makes the next command install again, once."""
    root = checkout(tmp_path)
    source_venv(root, None)
    with open(root / "requirements.txt", "a") as file:
        file.write("# a changed pin\n")
    assert len(source_venv(root, "requirements.txt")) == 2
    assert len(source_venv(root, None)) == 3  # the dev stamp is stale too
    assert len(source_venv(root, "requirements.txt")) == 3
