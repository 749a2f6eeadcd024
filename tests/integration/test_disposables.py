"""Disposables on the real podman service and runsc: stdio and exit codes
pass through, nothing is left behind, and crashes are reaped."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

GVISOR_KERNEL = "Linux version 4.4.0"  # what gVisor's Sentry reports


def nothing_left(home) -> None:
    left = home.disposable_leftovers()
    assert not any(left.values()), left
    # App qubes' containers exist only while they run; none should be running.
    assert home.leftovers()["containers"] == []


def disposable_rows(home) -> list[dict]:
    return [r for r in home.json("ls") if r["class"] == "DispVM"]


def test_proc_version_is_gvisor_and_nothing_is_left(home):
    proc = home.run("run", "--disposable", "--", "cat", "/proc/version")
    assert proc.stdout.startswith(GVISOR_KERNEL), proc.stdout
    assert proc.returncode == 0
    nothing_left(home)
    assert disposable_rows(home) == []


def test_exit_code_passes_through(home):
    proc = home.run("run", "--disposable", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert proc.returncode == 3
    assert proc.stdout == "out\n"
    assert proc.stderr == "err\n"
    nothing_left(home)


def test_stdin_passes_through_and_binary_is_intact(home):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    proc = home.run("run", "--disposable", "--", "sh", "-c", "cat; echo done >&2", input=data)
    assert proc.stdout == data
    assert proc.stderr == b"done\n"


def test_command_that_stops_reading_stdin_early(home):
    """The command exits while qlite still has stdin to send: no traceback,
    its output arrives, and its exit code passes through."""
    data = b"x" * (32 << 20)
    proc = home.run("run", "--disposable", "--", "sh", "-c", "head -c1; exit 5", input=data, check=False)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == b"x"
    assert b"Traceback" not in proc.stderr
    nothing_left(home)


def test_output_larger_than_input_does_not_deadlock(home):
    data = bytes(range(256)) * (8 << 10)  # 2 MiB in, ~2.7 MiB of base64 out
    proc = home.run("run", "--disposable", "--", "base64", "-w0", input=data, timeout=120)
    import base64

    assert base64.b64decode(proc.stdout) == data


def test_runs_as_user_in_home_and_root_with_u(home):
    assert home.run("run", "--disposable", "--", "sh", "-c", "id -un; pwd").stdout == "user\n/home/user\n"
    assert home.run("run", "--disposable", "-u", "root", "--", "id", "-u").stdout == "0\n"


def test_inherits_private_data_from_the_disposable_template(home):
    home.run("run", "default-dvm", "--", "sh", "-c", "echo from-dvm > ~/seed")
    home.run("shutdown", "default-dvm")
    out = home.run("run", "--disposable", "--", "sh", "-c", "cat ~/seed; echo changed > ~/seed").stdout
    assert out == "from-dvm\n"
    # The disposable wrote to its own copy: the template's data is unchanged.
    assert home.run("run", "default-dvm", "--", "cat", "/home/user/seed").stdout == "from-dvm\n"
    home.run("shutdown", "default-dvm")


def test_offline_disposable_template_gives_loopback_only(home):
    home.run("create", "dvm-off", "--label", "gray", "--netvm", "none", "--prop", "template_for_dispvms=True")
    try:
        out = home.run("run", "--dvm", "dvm-off", "--", "cat", "/proc/net/dev").stdout
        assert "lo:" in out and "eth0" not in out
        online = home.run("run", "--disposable", "--", "cat", "/proc/net/dev").stdout
        assert "eth0" in online
    finally:
        home.run("remove", "dvm-off")
    nothing_left(home)


def test_failed_command_still_destroys_everything(home):
    proc = home.run("run", "--disposable", "--", "/no/such/program", check=False)
    assert proc.returncode != 0
    nothing_left(home)
    assert disposable_rows(home) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_destroys_the_disposable(home, sig, code):
    p = home.popen(
        "run",
        "--disposable",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert p.stdout.readline() == b"started\n"
        assert len(disposable_rows(home)) == 1
        p.send_signal(sig)
        assert p.wait(timeout=60) == code
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    nothing_left(home)
    assert disposable_rows(home) == []


def test_kill_9_leftovers_are_reaped_but_live_disposables_are_not(home):
    live = home.popen(
        "run", "--disposable", "--", "sh", "-c", "echo live; sleep 120", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    victim = home.popen(
        "run",
        "--disposable",
        "--",
        "sh",
        "-c",
        "echo victim; sleep 120",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert live.stdout.readline() == b"live\n"
        assert victim.stdout.readline() == b"victim\n"
        before = home.leftovers()
        assert len(before["containers"]) == 2
        victim.kill()  # SIGKILL: no chance to clean up
        victim.wait(timeout=30)
        assert len(home.leftovers()["containers"]) == 2  # the victim's container is still there

        rows = home.json("ls")  # the next qlite command reaps
        disp = [r["name"] for r in rows if r["class"] == "DispVM"]
        assert len(disp) == 1, rows
        left = home.leftovers()
        assert len(left["containers"]) == 1
        assert disp[0] in left["containers"][0]
        assert live.poll() is None  # the live disposable still runs
        live.send_signal(signal.SIGTERM)
        assert live.wait(timeout=60) == 143
    finally:
        for p in (live, victim):
            if p.poll() is None:
                p.kill()
                p.wait()
    home.run("reconcile")
    nothing_left(home)


def test_parallel_disposables_do_not_interfere(home):
    procs = [
        home.popen(
            "run",
            "--disposable",
            "--",
            "sh",
            "-c",
            f"echo {i}; exit {i}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        results.append((p.returncode, out))
    assert results == [(i, f"{i}\n".encode()) for i in range(6)]
    nothing_left(home)
    assert disposable_rows(home) == []


def test_disposable_is_listed_while_it_runs(home):
    p = home.popen(
        "run", "--disposable", "--", "sh", "-c", "echo up; sleep 60", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert p.stdout.readline() == b"up\n"
        rows = disposable_rows(home)
        assert len(rows) == 1
        row = rows[0]
        assert row["name"].startswith("disp") and row["name"][4:].isdigit()
        assert row["state"] == "Running"
        assert row["template"] == "default-dvm"
        assert row["label"] == home.json("prefs", "default-dvm")["label"]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    nothing_left(home)


def test_tty_mode_runs_under_a_pty(home):
    """-t needs a terminal on our side: drive qlite under script(1). (gVisor
    hands the sandbox a host-backed terminal, so tty(1) cannot name it, but
    isatty holds.)"""
    script = "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; exit 4"
    cmd = f"{shlex.quote(sys.executable)} -m qlite run -t --disposable -- sh -c '{script}'"
    proc = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True,
        text=True,
        env=home.env,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert "is-a-tty" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 4
    nothing_left(home)
