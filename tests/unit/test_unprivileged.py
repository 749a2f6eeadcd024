"""The lifecycle's unit tests need no root: they run here again as an
unprivileged user, over the same fakes and the real volume code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIFECYCLE = [
    "tests/unit/test_qubes.py",
    "tests/unit/test_disposables.py",
    "tests/unit/test_runtimes.py",
    "tests/unit/test_netvm_loops.py",
    "tests/unit/test_identity.py",
    "tests/unit/test_qube_store.py",
    "tests/unit/test_cli_inprocess.py",
]


def test_the_lifecycle_unit_tests_pass_without_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("this run is itself without root: the lifecycle tests above are the proof")
    runuser = shutil.which("runuser")
    assert runuser, "runuser (util-linux) is missing"
    tmp_path.chmod(0o1777)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    proc = subprocess.run(
        [
            runuser,
            "-u",
            "nobody",
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=-rs",
            *LIFECYCLE,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail
