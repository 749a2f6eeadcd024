"""F7: what a hostile sender puts in a qubes.Filecopy stream: modes that
would lock the receiver out or open its files to everyone, and a stream
refused half-way, which must leave nothing behind."""

from __future__ import annotations

import subprocess
import textwrap
import time

import pytest

from tests.hostile.conftest import as_user

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver(home):
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": "30"})
    home.run("create", "receiver", "--label", "green", "--netvm", "none")
    home.run("start", "receiver")
    yield "receiver"
    home.run("remove", "--force", "receiver", check=False)
    home.run("daemon", "stop")


def send(home, qube: str, script: str) -> subprocess.CompletedProcess:
    """Run SCRIPT as root in QUBE, saying yes to the copy it asks for."""
    p = home.popen(
        "run",
        "-u",
        "root",
        qube,
        "--",
        "sh",
        "-c",
        textwrap.dedent(script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        for ask in home.json("policy", "ask"):
            home.run("policy", "ask", str(ask["id"]), "allow", "receiver", check=False)
        time.sleep(0.3)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_f7_sent_modes_are_normalised(home, canary, attacker, receiver):
    sent = send(
        home,
        attacker,
        """
        mkdir -p /tmp/s/locked && echo data > /tmp/s/locked/open && chmod 4777 /tmp/s/locked/open
        chmod 0 /tmp/s/locked && cd /tmp/s && qlite-copy-to-vm receiver locked
    """,
    )
    assert sent.returncode == 0, sent.stderr
    got = as_user(
        home,
        receiver,
        f"cd ~/QubesIncoming/{attacker} && stat -c '%a %n' locked locked/open && cat locked/open",
        check=True,
    )
    assert got.stdout.split("\n")[:3] == ["700 locked", "755 locked/open", "data"]


STREAM = textwrap.dedent("""
    import json, struct, sys
    def entry(h, data=b""):
        b = json.dumps(h).encode()
        sys.stdout.buffer.write(struct.pack(">I", len(b)) + b + data)
    entry({"type": "dir", "name": "deep", "mode": 493, "mtime": 0})
    entry({"type": "dir", "name": "deep/er", "mode": 0, "mtime": 0})
    entry({"type": "file", "name": "deep/er/f", "mode": 511, "size": 5, "mtime": 0}, b"hello")
    entry({"type": "file", "name": "../../escape", "mode": 420, "size": 1, "mtime": 0}, b"x")
""")


def test_f7_a_refused_stream_leaves_nothing_behind(home, canary, attacker, receiver):
    as_user(home, receiver, "rm -rf ~/QubesIncoming", check=True)
    sent = send(home, attacker, f"python3 -c '{STREAM}' | qrexec-client-vm receiver qubes.Filecopy")
    assert '"ok": false' in sent.stdout.replace('"ok":false', '"ok": false'), (sent.stdout, sent.stderr)
    left = as_user(home, receiver, "find ~ -mindepth 1 | sort")
    assert left.stdout == "", left.stdout
