"""qrexec-style RPC between real qubes: the broker in qlite daemon, Qubes
policy, asks, the guest tools and the standard services."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest

pytestmark = pytest.mark.integration

ASK_TIMEOUT = 4


@pytest.fixture(scope="module")
def rpc(home):
    """work and vault running, under a daemon with a short ask timeout."""
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": str(ASK_TIMEOUT)})
    home.run("create", "work", "--label", "blue")
    home.run("create", "vault", "--label", "black", "--netvm", "none")
    home.run("start", "work", "vault")
    (home.path / "policy.d").mkdir(exist_ok=True)
    yield home
    home.run("daemon", "stop")


def admin_policy(home, name: str, text: str) -> None:
    (home.path / "policy.d" / name).write_text(textwrap.dedent(text))


def drop_policy(home, name: str) -> None:
    (home.path / "policy.d" / name).unlink(missing_ok=True)


def pending(home) -> list[dict]:
    return home.json("policy", "ask")


def wait_for_ask(home, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asks = pending(home)
        if asks:
            return asks[0]
        time.sleep(0.2)
    raise AssertionError("no question appeared")


def in_background(home, qube: str, script: str) -> subprocess.Popen:
    return home.popen("run", qube, "--", "sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def audit(home) -> list[dict]:
    return home.json("log", "rpc", "-n", "500")


# -- file copy ------------------------------------------------------------------------


def test_copy_asks_and_lands_in_qubesincoming(rpc):
    home = rpc
    home.run("run", "work", "--", "sh", "-c", "mkdir -p docs/sub && echo one > docs/a && echo two > docs/sub/b")
    p = in_background(home, "work", "qlite-copy-to-vm vault docs; echo rc=$?")
    ask = wait_for_ask(home)
    assert ask["source"] == "work" and ask["service"] == "qubes.Filecopy" and ask["target"] == "vault"
    assert "vault" in ask["choices"] and ask["default_target"] is None
    home.run("policy", "ask", str(ask["id"]), "allow", "vault")
    out, err = p.communicate(timeout=60)
    assert "rc=0" in out, out + err
    listing = home.run("run", "vault", "--", "sh", "-c", "cd ~/QubesIncoming/work && cat docs/a docs/sub/b").stdout
    assert listing == "one\ntwo\n"
    assert home.run("run", "work", "--", "test", "-e", "docs/a", check=False).returncode == 0


def test_move_deletes_the_source_after_a_copy(rpc):
    home = rpc
    home.run("run", "work", "--", "sh", "-c", "echo moving > m.txt")
    p = in_background(home, "work", "qlite-move-to-vm vault m.txt; echo rc=$?")
    home.run("policy", "ask", str(wait_for_ask(home)["id"]), "allow", "vault")
    out, err = p.communicate(timeout=60)
    assert "rc=0" in out, out + err
    assert home.run("run", "vault", "--", "cat", "QubesIncoming/work/m.txt").stdout == "moving\n"
    assert home.run("run", "work", "--", "test", "-e", "m.txt", check=False).returncode == 1


def test_ask_answered_no_and_left_to_time_out(rpc):
    home = rpc
    home.run("run", "work", "--", "sh", "-c", "echo x > n.txt")
    p = in_background(home, "work", "qlite-copy-to-vm vault n.txt; echo rc=$?")
    home.run("policy", "ask", str(wait_for_ask(home)["id"]), "deny")
    out, _ = p.communicate(timeout=60)
    assert "rc=126" in out
    started = time.monotonic()
    p = in_background(home, "work", "qlite-copy-to-vm vault n.txt; echo rc=$?")
    wait_for_ask(home)
    out, _ = p.communicate(timeout=60)
    assert "rc=126" in out
    assert time.monotonic() - started >= ASK_TIMEOUT
    assert pending(home) == []
    reasons = [r.get("reason", "") for r in audit(home) if r.get("decision") == "deny"]
    assert any("said no" in r for r in reasons) and any("in time" in r for r in reasons)
    assert home.run("run", "vault", "--", "test", "-e", "QubesIncoming/work/n.txt", check=False).returncode == 1


def test_answering_with_a_target_policy_does_not_offer_is_refused(rpc):
    home = rpc
    p = in_background(home, "work", "echo y > o.txt; qlite-copy-to-vm vault o.txt; echo rc=$?")
    ask = wait_for_ask(home)
    bad = home.run("policy", "ask", str(ask["id"]), "allow", "dom0", check=False)
    assert bad.returncode == 125 and "not allowed" in bad.stderr
    home.run("policy", "ask", str(ask["id"]), "deny")
    assert "rc=126" in p.communicate(timeout=60)[0]


# -- open in a disposable -----------------------------------------------------------


def test_open_in_dvm_works_out_of_the_box(rpc):
    """The README's example, before anyone configured a program in
    default-dvm: the file is shown on the caller's terminal (stderr), and
    the call succeeds with no terminal at all."""
    home = rpc
    assert home.run("run", "default-dvm", "--", "test", "-e", ".config/qlite/open-program", check=False).returncode == 1
    home.run("run", "work", "--", "sh", "-c", "printf 'line one\\nline two\\n' > notes.txt")
    proc = home.run("run", "work", "--", "qlite-open-in-dvm", "notes.txt", input="")
    assert "notes.txt (shown as text" in proc.stderr and "line one\nline two\n" in proc.stderr
    assert home.run("run", "work", "--", "cat", "notes.txt").stdout == "line one\nline two\n"  # unchanged
    assert not any(r["class"] == "DispVM" for r in home.json("ls"))


def test_open_in_dvm_writes_the_edit_back(rpc):
    home = rpc
    # (In --view-only mode the file is read-only there, so the edit fails.)
    program = "sh -c 'echo edited-in-$(hostname) >> \"$1\" || true' edit"
    home.run(
        "run",
        "default-dvm",
        "--",
        "sh",
        "-c",
        "mkdir -p ~/.config/qlite && cat > ~/.config/qlite/open-program",
        input=program + "\n",
    )
    home.run("shutdown", "default-dvm")
    home.run("run", "work", "--", "sh", "-c", "echo original > doc.txt")
    out = home.run("run", "work", "--", "sh", "-c", "qlite-open-in-dvm doc.txt; echo rc=$?; cat doc.txt").stdout
    assert "rc=0" in out and "original\nedited-in-disp" in out
    view = home.run(
        "run", "work", "--", "sh", "-c", "qlite-open-in-dvm --view-only doc.txt; echo rc=$?; cat doc.txt"
    ).stdout
    assert "rc=0" in view and view.count("edited-in-disp") == 1  # nothing written back
    # The disposables went with their calls.
    assert not any(r["class"] == "DispVM" for r in home.json("ls"))
    assert not any(home.disposable_leftovers().values())
    done = [r for r in audit(home) if r.get("service") == "qubes.OpenInVM" and r.get("decision") == "allow"]
    assert done and all(r["resolved"] == "@dispvm:default-dvm" for r in done)


# -- refusals and errors ----------------------------------------------------------------


def test_denied_call_exits_126(rpc):
    home = rpc
    proc = home.run("run", "work", "--", "qrexec-client-vm", "vault", "qubes.VMShell", check=False, input="id\n")
    assert proc.returncode == 126
    assert "90-default.policy" in proc.stderr


def test_unknown_service_exits_127(rpc):
    home = rpc
    admin_policy(home, "30-test.policy", "test.Missing * work vault allow\n")
    try:
        proc = home.run("run", "work", "--", "qrexec-client-vm", "vault", "test.Missing", check=False)
        assert proc.returncode == 127, proc.stderr
    finally:
        drop_policy(home, "30-test.policy")


def test_service_gets_its_environment_and_stdio(rpc):
    home = rpc
    admin_policy(home, "30-test.policy", "test.Echo +hello work vault allow user=root\n")
    service = (
        "#!/bin/sh\n"
        'echo "from=$QREXEC_REMOTE_DOMAIN arg=$QREXEC_SERVICE_ARGUMENT full=$QREXEC_SERVICE_FULL_NAME '
        'user=$(id -un)"\ntr a-z A-Z\necho to-stderr >&2\nexit 7\n'
    )
    home.run(
        "run",
        "-u",
        "root",
        "vault",
        "--",
        "sh",
        "-c",
        "mkdir -p /run/qubes-rpc && cat > /run/qubes-rpc/test.Echo && chmod 755 /run/qubes-rpc/test.Echo",
        input=service,
    )
    try:
        proc = home.run(
            "run", "work", "--", "qrexec-client-vm", "vault", "test.Echo+hello", input="quiet\n", check=False
        )
        assert proc.returncode == 7
        assert proc.stdout == "from=work arg=hello full=test.Echo+hello user=root\nQUIET\n"
        assert "to-stderr" in proc.stderr
        # The argument is part of the policy decision.
        other = home.run("run", "work", "--", "qrexec-client-vm", "vault", "test.Echo+bye", check=False)
        assert other.returncode == 126
    finally:
        drop_policy(home, "30-test.policy")


SPOOF = textwrap.dedent("""
    import json, socket, struct, sys
    def frame(kind, payload):
        return struct.pack(">BI", kind, len(payload)) + payload
    def call(first):
        s = socket.socket(socket.AF_UNIX)
        s.connect("/run/qlite/rpc.sock")
        s.sendall(first)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out = []
        while len(data) >= 5:
            kind, n = struct.unpack(">BI", data[:5])
            out.append([kind, data[5:5 + n].decode(errors="replace")])
            data = data[5 + n:]
        return out
    req = {"version": 1, "target": "@default", "service": "test.Spoof", "argument": "", "source": "vault"}
    cases = {
        "spoof": frame(1, json.dumps(req).encode()),
        "bad-type": frame(0x42, b"x"),
        "oversized": struct.pack(">BI", 1, 10_000_000) + b"x" * 100,
        "not-json": frame(1, b"{not json"),
        "not-object": frame(1, b"[1, 2]"),
        "big-request": frame(1, json.dumps({"service": "x" * 5000}).encode()),
        "bad-service": frame(1, json.dumps({"service": "../etc/passwd", "target": "work"}).encode()),
        "truncated": struct.pack(">BI", 1, 50) + b"{",
    }
    print(json.dumps({k: call(v) for k, v in cases.items()}))
""")


def test_spoofing_and_malformed_frames_are_refused_and_the_broker_goes_on(rpc):
    home = rpc
    admin_policy(home, "30-test.policy", "test.Spoof * vault @default allow target=dom0\n")
    try:
        # vault may make this call (dom0 has no such service: 127)...
        assert (
            home.run("run", "vault", "--", "qrexec-client-vm", "@default", "test.Spoof", check=False).returncode == 127
        )
        out = json.loads(home.run("run", "work", "--", "python3", "-c", SPOOF).stdout)
        # ...work, claiming to be vault, is still work, and work may not.
        kind, payload = out["spoof"][0]
        assert kind == 0x03 and json.loads(payload)["result"] == "deny"
        records = [r for r in audit(home) if r.get("service") == "test.Spoof" and r.get("decision") == "deny"]
        assert records and {r["source"] for r in records} == {"work"}
        for case in ("bad-type", "oversized", "not-json", "not-object", "big-request", "bad-service", "truncated"):
            frames = out[case]
            assert frames, case
            kind, payload = frames[-1]
            assert kind == 0x07, (case, frames)
            assert json.loads(payload)["message"], case
        # The broker still serves every qube.
        assert home.run("run", "vault", "--", "qrexec-client-vm", "@default", "qubes.GetDate").returncode == 0
        assert home.run("run", "work", "--", "qrexec-client-vm", "@default", "qubes.GetDate").returncode == 0
    finally:
        drop_policy(home, "30-test.policy")


def test_a_broken_policy_denies_every_call_and_lint_says_where(rpc):
    home = rpc
    admin_policy(home, "20-broken.policy", "qubes.GetDate * @anyvm @anyvm allow target=dom0\nthis is not a rule\n")
    try:
        proc = home.run("run", "work", "--", "qrexec-client-vm", "@default", "qubes.GetDate", check=False)
        assert proc.returncode == 126
        lint = home.run("policy", "lint", check=False)
        assert lint.returncode == 1
        assert "20-broken.policy:2:" in lint.stdout
    finally:
        drop_policy(home, "20-broken.policy")
    assert home.run("policy", "lint").stdout.strip() == "policy OK"


# -- the other services -------------------------------------------------------------------


def test_vmshell_in_a_disposable_and_getdate(rpc):
    home = rpc
    out = home.run(
        "run",
        "work",
        "--",
        "qrexec-client-vm",
        "@dispvm",
        "qubes.VMShell",
        input="hostname; id -un; exit 3\n",
        check=False,
    )
    assert out.returncode == 3
    name, user = out.stdout.split()
    assert name.startswith("disp") and user == "user"
    assert not any(r["class"] == "DispVM" for r in home.json("ls"))
    date = home.run("run", "vault", "--", "qrexec-client-vm", "@default", "qubes.GetDate").stdout
    assert date.startswith(time.strftime("%Y-", time.gmtime()))


def test_vmexec_runs_an_encoded_command(rpc):
    home = rpc
    out = home.run("run", "work", "--", "qrexec-client-vm", "@dispvm", "qubes.VMExec+echo+a--b+c-2Fd")
    assert out.stdout == "a-b c/d\n"


def test_connect_tcp_reaches_a_port_in_another_qube(rpc):
    home = rpc
    admin_policy(home, "30-tcp.policy", "qubes.ConnectTCP +8444 work vault allow\n")
    try:
        home.run(
            "run",
            "vault",
            "--",
            "sh",
            "-c",
            "nohup python3 -c \"import socket\ns=socket.socket();s.bind(('127.0.0.1',8444));s.listen(4)\n"
            "while True:\n    c,_=s.accept();c.sendall(b'vault says hi\\n');c.close()\" >/dev/null 2>&1 &",
        )
        script = (
            "qlite-connect-tcp 9444:vault:8444 >/dev/null 2>&1 & pid=$!; "
            "for i in $(seq 50); do python3 -c \"import socket,sys;s=socket.create_connection(('127.0.0.1',9444),1);"
            'd=s.recv(64).decode().strip();print(d);sys.exit(0 if d else 1)" 2>/dev/null && break; sleep 0.2; done;'
            "kill $pid"
        )
        assert "vault says hi" in home.run("run", "work", "--", "sh", "-c", script).stdout
        denied = home.run("run", "work", "--", "qrexec-client-vm", "vault", "qubes.ConnectTCP+22", check=False)
        assert denied.returncode == 126
    finally:
        drop_policy(home, "30-tcp.policy")


# -- tools ----------------------------------------------------------------------------------


def test_policy_eval_explains_a_decision(rpc):
    home = rpc
    result = home.json("policy", "eval", "qubes.Filecopy", "work", "vault")
    assert result["action"] == "ask" and "vault" in result["choices"]
    assert result["rule"].endswith("90-default.policy:21") or "90-default.policy:" in result["rule"]
    result = home.json("policy", "eval", "qubes.VMShell", "work", "@dispvm")
    assert result["action"] == "allow" and result["target"] == "@dispvm:default-dvm"
    result = home.json("policy", "eval", "qubes.VMShell", "work", "vault")
    assert result["action"] == "deny"
    admin_policy(home, "30-user.policy", "qubes.Filecopy * work vault deny\n")
    try:
        result = home.json("policy", "eval", "qubes.Filecopy", "work", "vault")
        assert result["action"] == "deny" and "30-user.policy:1" in result["rule"]
    finally:
        drop_policy(home, "30-user.policy")


def test_every_decision_is_in_the_audit_log(rpc):
    home = rpc
    home.run("run", "work", "--", "qrexec-client-vm", "@default", "qubes.GetDate")  # allow, done
    home.run("run", "work", "--", "qrexec-client-vm", "vault", "qubes.VMShell", check=False)  # deny
    home.run(
        "run",
        "work",
        "--",
        "python3",
        "-c",  # error: a bad first frame
        "import socket;s=socket.socket(socket.AF_UNIX);s.connect('/run/qlite/rpc.sock');"
        "s.sendall(bytes([9,0,0,0,0]));s.recv(100)",
    )
    p = in_background(home, "work", "echo z > q.txt; qlite-copy-to-vm vault q.txt")  # asking
    home.run("policy", "ask", str(wait_for_ask(home)["id"]), "deny")
    p.communicate(timeout=60)
    records = audit(home)
    decisions = {r.get("decision") for r in records}
    assert {"allow", "deny", "asking", "done", "error"} <= decisions
    text = home.run("log", "rpc").stdout
    assert "work -> vault qubes.Filecopy" in text
