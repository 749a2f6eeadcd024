"""The agent channel: every container qube's main process is the guest
agent, connected to the daemon through /run/qlite/agent.sock. Root in the
qube can kill it and speak in its place, flood the socket, or try to swap
it. None of that may reach the host, the daemon or another qube."""

from __future__ import annotations

import os
import stat
import textwrap
import time

import pytest

from tests.hostile.conftest import as_root, restart

pytestmark = pytest.mark.integration

# A fake agent, run by root in the qube, detached from the command that
# starts it (that command's session runs on the link the fake replaces).
FAKE_AGENT = """
import json, socket, struct, sys, time
def frame(kind, channel, payload=b""):
    return struct.pack(">BII", kind, channel, len(payload)) + payload
time.sleep(1)  # the command that started this one has ended
s = socket.socket(socket.AF_UNIX)
s.connect("/run/qlite/agent.sock")
# The real agent connects again at once when its link is taken: what the
# impostor sends must come with its greeting.
hello = frame(0x10, 0, json.dumps({"version": 1}).encode())
"""


@pytest.fixture(scope="module")
def daemon(home):
    home.run("daemon", "start", check=False)
    home.run("create", "bystander", "--label", "green")
    home.run("start", "bystander")
    yield home
    home.run("remove", "--force", "bystander", check=False)


def daemon_pid(home) -> int:
    return int((home.path / "run" / "daemon.pid").read_text())


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def daemon_log(home) -> str:
    return (home.path / "log" / "daemon.log").read_text(errors="replace")


def fake_agent(home, qube: str, body: str) -> str:
    """Run the fake agent with BODY in QUBE, detached; its output once it
    has ended and the real agent has its link back."""
    script = FAKE_AGENT + textwrap.dedent(body) + '\nprint("done", flush=True)\n'
    launched = as_root(
        home,
        qube,
        f"cat > /tmp/fake.py <<'EOF'\n{script}\nEOF\nsetsid -f python3 /tmp/fake.py > /tmp/fake.out 2>&1 < /dev/null",
    )
    assert launched.returncode == 0, launched.stderr
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if runs(home, qube):
            out = as_root(home, qube, "cat /tmp/fake.out").stdout
            if "done" in out or "Error" in out:
                return out
        time.sleep(1)
    raise AssertionError(f"the fake agent in {qube} did not finish")


def runs(home, qube: str, tries: int = 40) -> bool:
    """Whether a command runs in QUBE through its agent within ~20 s (the
    real agent reconnects after an impostor's link is dropped)."""
    for _ in range(tries):
        proc = home.run("run", qube, "--", "echo", "ok", check=False, timeout=60)
        if proc.returncode == 0 and proc.stdout.strip() == "ok":
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize(
    "forged",
    [
        'frame(0x12, 2, b"x")',  # stdin: the host's to send
        "frame(0x19, 2, b'{\"signal\": 9}')",  # a signal: the host's to send
        'struct.pack(">BII", 0x7F, 0, 0)',  # no such frame type
        'struct.pack(">BII", 0x13, 2, 0xFFFFFFFF)',  # 4 GiB of stdout announced
    ],
    ids=["stdin", "signal", "unknown-type", "oversized"],
)
def test_a_forged_frame_drops_only_the_forgers_link(daemon, attacker, canary, forged):
    home = daemon
    pid = daemon_pid(home)
    out = fake_agent(
        home,
        attacker,
        f"""
        s.sendall(hello + {forged})
        s.settimeout(10)
        print("closed" if s.recv(1) == b"" else "open")
        """,
    )
    assert out.split() == ["closed", "done"], out
    assert daemon_pid(home) == pid and os.path.exists(f"/proc/{pid}")
    assert f"{attacker}: its agent sent a bad frame" in daemon_log(home)
    assert runs(home, "bystander")
    assert runs(home, attacker)  # the real agent takes its link back


def test_a_flood_on_the_agent_socket_costs_the_daemon_nothing_lasting(daemon, attacker, canary):
    """Hundreds of connections that never greet, and an impostor that sends
    50 MiB of output for channels nobody holds and never reads the pongs
    to its pings: the daemon keeps serving everyone, without growing."""
    home = daemon
    pid = daemon_pid(home)
    before = rss_kib(pid)
    out = fake_agent(
        home,
        attacker,
        """
        idle = []
        for _ in range(300):
            c = socket.socket(socket.AF_UNIX)
            try:
                c.connect("/run/qlite/agent.sock")
            except OSError:
                c.close()
                continue
            idle.append(c)
        junk = frame(0x13, 4242, b"x" * 65536)
        ping = frame(0x1A, 0, b"p" * 64)
        s.settimeout(5)
        sent = 0
        try:
            s.sendall(hello)
            for _ in range(800):
                s.sendall(junk + ping)
                sent += 1
        except OSError:
            pass
        print(sent, len(idle))
        """,
    )
    assert out.split()[-1] == "done", out
    assert runs(home, "bystander")
    after = rss_kib(pid)
    assert after - before < 64 * 1024, f"the daemon grew from {before} KiB to {after} KiB"
    assert runs(home, attacker)


def test_the_agent_socket_cannot_be_swapped_from_inside(daemon, attacker, canary):
    home = daemon
    sock = home.path / "run" / "rpc" / attacker / "agent.sock"
    before = sock.lstat()
    proc = as_root(
        home,
        attacker,
        """
        rm -f /run/qlite/agent.sock && echo removed
        ln -sf / /run/qlite/agent.sock && echo linked
        mount -t tmpfs none /run/qlite && echo mounted
        mv /run/qlite /run/elsewhere && echo moved
        true
        """,
    )
    assert proc.stdout.strip() == "", proc.stdout
    after = sock.lstat()
    assert stat.S_ISSOCK(after.st_mode) and (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)
    assert runs(home, attacker)


def test_a_link_planted_where_the_agent_socket_goes_is_not_followed(daemon, attacker, canary):
    """What a qube that could write its RPC directory would plant: a link
    in place of agent.sock, to a host file. The daemon removes the link and
    binds its own socket; the canary fixture checks nothing was touched."""
    home = daemon
    home.run("shutdown", "--wait", attacker)
    # Once the daemon has seen the qube stop, it removes its sockets: plant after that.
    deadline = time.monotonic() + 30
    while (home.path / "run" / "agents" / f"{attacker}.sock").exists():
        assert time.monotonic() < deadline, "the daemon did not drop the stopped qube's agent socket"
        time.sleep(0.2)
    rpc_dir = home.path / "run" / "rpc" / attacker
    rpc_dir.mkdir(parents=True, exist_ok=True)
    planted = rpc_dir / "agent.sock"
    planted.unlink(missing_ok=True)
    planted.symlink_to(canary.secret)
    assert restart(home, attacker).returncode == 0
    assert runs(home, attacker)
    assert stat.S_ISSOCK(planted.lstat().st_mode)
    assert f"{attacker}: removed a symlink in the place of agent.sock" in daemon_log(home)
