"""The default install, as the README's first command leaves it: no
QLITE_HOME set, the admin policy in /etc/qlite/policy.d. The broker must
read that directory too, though the CLI starts it with QLITE_HOME set.

This module works in the default home (setup.sh made it), with qubes of its
own that it removes, and puts back whatever it changed: the managed policy
file, and the daemon and podman service if they were not running."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

POLICY = Path("/etc/qlite/policy.d/40-splitgpg.policy")


def qlite(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QLITE_HOME", "QLITE_ENGINE")}
    proc = subprocess.run(
        [sys.executable, "-m", "qlite", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"qlite {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def default_home():
    if not Path("/var/lib/qlite/qlite.db").exists():
        pytest.fail("the default install is missing: .ci/run runs setup.sh first")
    policy_before = POLICY.read_bytes() if POLICY.exists() else None
    # A daemon that was running may be an older qlite's: this test needs
    # this checkout's broker, and starts it again afterwards.
    daemon_was = qlite("daemon", "stop", check=False).stdout.strip() == "stopped"
    service_was = qlite("service", "status", check=False).returncode == 0
    tag = secrets.token_hex(3)
    names = {"vault": f"sgvault{tag}", "client": f"sgclient{tag}"}
    try:
        yield names
    finally:
        qlite("shutdown", "--wait", *names.values(), check=False)
        for name in names.values():
            qlite("remove", "--force", name, check=False)
        if policy_before is None:
            POLICY.unlink(missing_ok=True)
        else:
            POLICY.write_bytes(policy_before)
        qlite("daemon", "stop", check=False)
        if daemon_was:
            qlite("daemon", "start", check=False)
        if not service_was:
            qlite("service", "stop", check=False)


def test_split_gpg_signs_on_the_default_install(default_home):
    vault, client = default_home["vault"], default_home["client"]
    qlite("create", client, "--label", "blue")
    qlite("splitgpg", "setup", vault, "--client", client)
    assert f"{client}  {vault}" in POLICY.read_text()
    fpr = qlite("splitgpg", "gen-key", vault, "--name", "Default Install", "--email", "d@qlite.test").stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "QLITE_HOME"}
    signer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qlite",
            "run",
            client,
            "--",
            "sh",
            "-c",
            f"echo hello | qlite-gpg --batch -u {fpr} --clearsign",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: result.append(signer.communicate(timeout=180)))
    reader.start()
    deadline = time.monotonic() + 180
    asked = False
    while reader.is_alive() and time.monotonic() < deadline:
        for ask in json.loads(qlite("policy", "ask", "--json").stdout or "[]"):
            if ask["source"] == client:
                qlite("policy", "ask", str(ask["id"]), "allow", vault)
                asked = True
        reader.join(0.3)
    reader.join(5)
    out, err = result[0]
    assert asked, "the admin policy's ask never reached the broker"
    assert signer.returncode == 0, err
    assert "BEGIN PGP SIGNED MESSAGE" in out and "hello" in out
