"""Issue #10 item 20: ``scripts/serve`` does not reinstall after ``scripts/test``.

``scripts/install`` runs in a scratch copy whose ``.venv/bin/python`` is a stand-in that records
each pip call, so the test sees exactly when the script decides to install.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install", tmp_path / "scripts" / "install")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../pip-calls"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def _install(root: Path, *extra: str) -> list[str]:
    subprocess.run([str(root / "scripts" / "install"), *extra], cwd=root, check=True, capture_output=True, timeout=60)
    calls = root / "pip-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_plain_install_after_the_test_install_does_not_reinstall(tmp_path: Path) -> None:
    root = _scratch(tmp_path)
    calls = _install(root, "test")
    assert len(calls) == 1 and "-e .[test]" in calls[0]
    assert _install(root) == calls  # scripts/serve after scripts/test: nothing to do
    assert _install(root, "test") == calls  # and the test install again: nothing either
    with (root / "constraints.txt").open("a") as fh:
        fh.write("# changed\n")
    calls = _install(root)  # what decides the install changed: install again
    assert len(calls) == 2 and calls[1].endswith("-e .")
    assert len(_install(root, "test")) == 3  # the base stamp does not satisfy an extra
