"""The type checker over qlite (its TUI included) and over the guest tools
as a template build lays them out (with the modules qlite shares with
them): clean, so a wrong type fails CI like a failing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qlite.core.guest import GUEST_PACKAGE, assemble

REPO = Path(__file__).resolve().parents[2]


def mypy(*targets: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--no-incremental",
            "--cache-dir",
            "/dev/null",
            *targets,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_qlite_type_checks():
    done = mypy("qlite", cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_guest_tools_type_check(tmp_path):
    tree = assemble(REPO / "guest", tmp_path / "guest")
    done = mypy(str(GUEST_PACKAGE.parent / "qlite_guest"), cwd=tree)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_type_error_fails_the_check(tmp_path):
    (tmp_path / "bad.py").write_text("def f(x: int) -> str:\n    return x\n")
    assert mypy("bad.py", cwd=tmp_path).returncode == 1
