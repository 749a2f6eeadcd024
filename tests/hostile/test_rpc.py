"""F2, F4, F6 and dom0: the RPC socket a qube is given, and the broker
behind it, attacked by root in the qube."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from tests.hostile.conftest import as_root, as_user, restart

pytestmark = pytest.mark.integration

ASK_TIMEOUT = 20


@pytest.fixture(scope="module")
def broker(home):
    """A daemon with a short ask timeout, and a running victim."""
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": str(ASK_TIMEOUT)})
    home.run("create", "victim", "--label", "green")
    home.run("start", "victim")
    yield home
    home.run("remove", "--force", "victim", check=False)
    home.run("daemon", "stop")


def audit(home) -> list[dict]:
    return home.json("log", "rpc", "-n", "1000")


def daemon_alive(home) -> bool:
    return home.run("daemon", "status", check=False).returncode == 0


def getdate_works(home, qube: str) -> bool:
    proc = as_user(home, qube, "qrexec-client-vm @default qubes.GetDate")
    return proc.returncode == 0 and proc.stdout.startswith("20")


def test_f2_a_qube_cannot_reach_another_qubes_socket(broker, canary, attacker):
    """Point the attacker's home at the victim's RPC directory on the host,
    restart, and call as the victim: on main this ran as 'victim'."""
    home = broker
    victim_dir = home.path / "run" / "rpc" / "victim"
    as_root(home, attacker, f"rm -rf /rw/home/user; ln -s {victim_dir} /rw/home/user", check=True)
    assert restart(home, attacker).returncode == 0
    before = len(audit(home))
    spoof = as_user(
        home,
        attacker,
        "ls -la /home/user/ 2>&1; QLITE_RPC_SOCKET=/home/user/rpc.sock qrexec-client-vm @default qubes.GetDate 2>&1",
    )
    assert not spoof.stdout.strip().endswith("+00:00")  # no date came back
    assert all(r.get("source") != "victim" for r in audit(home)[before:])


@pytest.mark.parametrize("plant", ["dir", "nonempty-dir", "symlink", "file", "fifo"])
def test_f4_the_qube_cannot_replace_its_socket(broker, canary, attacker, plant):
    """rm rpc.sock and put something else there: the directory is read-only
    in the qube, and the daemon survives whatever happens."""
    home = broker
    cmd = {
        "dir": "mkdir /run/qlite/rpc.sock",
        "nonempty-dir": "mkdir -p /run/qlite/rpc.sock/x",
        "symlink": f"ln -s {canary.secret} /run/qlite/rpc.sock",
        "file": "echo x > /run/qlite/rpc.sock",
        "fifo": "mkfifo /run/qlite/rpc.sock",
    }[plant]
    out = as_root(home, attacker, f"rm -f /run/qlite/rpc.sock; {cmd}; touch /run/qlite/agent-host.sock")
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert restart(home, attacker).returncode == 0
    time.sleep(3)  # a rescan or two
    assert daemon_alive(home)
    assert getdate_works(home, attacker) and getdate_works(home, "victim")


SLOW = textwrap.dedent("""
    import socket, struct, sys, time
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/qlite/rpc.sock")
    s.settimeout(60)
    frame = struct.pack(">BI", 1, 60) + b"{" * 60
    start = time.monotonic()
    try:
        for b in frame:  # one byte every half second: 32 s for the whole frame
            s.sendall(bytes([b]))
            time.sleep(0.5)
        s.recv(100)
    except OSError:
        pass
    print(round(time.monotonic() - start))
""")

FLOOD = textwrap.dedent("""
    import socket, sys
    held = []
    for _ in range(400):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect("/run/qlite/rpc.sock")
        except OSError:
            break
        held.append(s)
    refused = 0
    for s in held:
        s.settimeout(15)
        try:
            data = s.recv(200)
        except OSError:
            continue
        if b"too many connections" in data:
            refused += 1
    print(len(held), refused)
""")


def test_f6_a_trickled_request_is_cut_off(broker, attacker):
    home = broker
    took = int(as_user(home, attacker, f"python3 -c '{SLOW}'", timeout=120).stdout.split()[-1])
    assert took <= 15  # the 10 s whole-request deadline, not 30 s of trickling
    assert daemon_alive(home) and getdate_works(home, "victim")


def test_f6_a_connection_flood_is_capped_and_others_still_get_through(broker, attacker):
    home = broker
    proc = home.popen("run", attacker, "--", "python3", "-c", FLOOD, stdout=-1, stderr=-1, text=True)
    try:
        time.sleep(3)  # the flood holds its connections open now
        assert getdate_works(home, "victim")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    held, refused = (int(x) for x in out.split())
    assert refused >= 1 and held - refused <= 96, (out, err)
    assert daemon_alive(home)


def test_f6_questions_from_one_qube_are_bounded(broker, attacker):
    home = broker
    procs = [
        home.popen(
            "run", attacker, "--", "sh", "-c", "echo x > f; qlite-copy-to-vm victim f", stdout=-1, stderr=-1, text=True
        )
        for _ in range(7)
    ]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(home.json("policy", "ask")) < 4:
            time.sleep(0.3)
        time.sleep(2)
        pending = [a for a in home.json("policy", "ask") if a["source"] == attacker]
        assert len(pending) == 4
    finally:
        for a in home.json("policy", "ask"):
            home.run("policy", "ask", str(a["id"]), "deny", check=False)
        for p in procs:
            p.communicate(timeout=60)
    too_many = [r for r in audit(home) if "too many questions pending" in r.get("reason", "")]
    assert too_many and all(r["source"] == attacker for r in too_many)


def test_dom0_is_not_anyvm_filecopy_to_dom0_is_denied(broker, canary, attacker):
    home = broker
    proc = as_user(
        home,
        attacker,
        "echo x > f; qrexec-client-vm dom0 qubes.Filecopy < f; "
        "qrexec-client-vm @adminvm qubes.Filecopy < f; echo; qlite-copy-to-vm dom0 f; echo $?",
    )
    assert proc.stdout.split()[-1] == "126"
    decisions = [r for r in audit(home) if r.get("source") == attacker and r.get("service") == "qubes.Filecopy"]
    assert decisions and all(r["decision"] in ("deny", "error") for r in decisions)
    assert not any(p.name.startswith("QubesIncoming") for p in canary.path.iterdir())


def test_calls_still_work_after_the_attacks(broker):
    assert daemon_alive(broker) and getdate_works(broker, "victim")
    assert not any(json.dumps(r).count("Traceback") for r in audit(broker))
