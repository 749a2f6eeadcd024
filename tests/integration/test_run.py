"""``qlite run`` as scripts and people use it, on the real podman service
and runsc: exit 127 and 126 with podman's one line when the command cannot
run, and Ctrl-C that stops the command in the qube (SIGINT, then SIGTERM,
then SIGKILL), on every path a command takes: runsc exec into an app qube,
podman exec with -t, a new disposable, and a preloaded one."""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

MARK = "sleep 29"  # what the interrupted commands run, found by pgrep -f


@pytest.fixture(scope="module")
def work(home):
    home.run("create", "work", "--label", "blue", "--netvm", "none")
    home.run("start", "work")
    yield "work"
    home.run("remove", "--force", "work", check=False)


def left_in(home, qube: str) -> list[str]:
    """The processes of an interrupted command still running in QUBE."""
    proc = home.run("run", qube, "--", "pgrep", "-a", "-f", MARK, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.splitlines()


def disposables(home) -> list[str]:
    return [r["name"] for r in home.json("ls") if r["class"] == "DispVM"]


def read_line(stream, timeout: float = 60) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the command did not start"
    return stream.readline()


def interrupt(
    p: subprocess.Popen, sig: int = signal.SIGINT, group: bool = False, timeout: float = 30
) -> tuple[int, float]:
    """Send SIG to qlite (or, as a terminal's Ctrl-C does, to its whole
    process group); its exit code and how long it took to end."""
    start = time.monotonic()
    if group:
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    try:
        code = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError("qlite did not end after the interrupt") from None
    return code, time.monotonic() - start


def running(home, qube: str) -> None:
    """Wait (bounded) until MARK runs in QUBE. A shell prints "started" and
    then forks MARK: a Ctrl-C in between would reach the shell alone (as
    at a terminal), and dash, which waits for its child before it acts on
    SIGINT, would then wait for the whole sleep."""
    deadline = time.monotonic() + 30
    while not left_in(home, qube):
        assert time.monotonic() < deadline, f"{MARK} never ran in {qube}"
        time.sleep(0.1)


def started(home, *args: str, **kw) -> subprocess.Popen:
    """qlite ARGS, a run of sh -c 'echo "started $QLITE_QUBE"; ...MARK...',
    once MARK runs in that qube."""
    p = home.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    line = read_line(p.stdout)
    assert line.startswith(b"started "), (line, p.stderr.read1() if p.poll() is not None else b"")
    p.qube = line.split()[1].decode()
    running(home, p.qube)
    return p


def under_script(home, command: str) -> subprocess.Popen:
    """qlite with a terminal: COMMAND under script(1)."""
    return subprocess.Popen(
        ["script", "-qec", command, "/dev/null"],
        env=home.env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


QLITE = f"{shlex.quote(sys.executable)} -m qlite"


# -- 127 and 126 -----------------------------------------------------------------------------


CANNOT_RUN = [
    (["no-such-command", "arg"], 127, "qlite: no-such-command: executable file not found in $PATH"),
    (["/no/such/program"], 127, "qlite: /no/such/program: no such file or directory"),
    (["/etc/passwd"], 126, "qlite: /etc/passwd: permission denied (not an executable file)"),
    (["/tmp"], 126, "qlite: /tmp: is a directory"),
]


@pytest.mark.parametrize(("cmd", "code", "message"), CANNOT_RUN)
def test_an_app_qube_answers_127_and_126_as_podman_does(home, work, cmd, code, message):
    proc = home.run("run", work, "--", *cmd, check=False)
    assert (proc.returncode, proc.stderr, proc.stdout) == (code, message + "\n", "")


@pytest.mark.parametrize(("cmd", "code", "message"), CANNOT_RUN[:3])
def test_a_new_disposable_answers_127_and_126_as_podman_does(home, cmd, code, message):
    proc = home.run("run", "--disposable", "--", *cmd, check=False)
    assert (proc.returncode, proc.stderr, proc.stdout) == (code, message + "\n", "")
    assert disposables(home) == []


def test_with_a_terminal_too(home, work):
    for cmd, code, message in CANNOT_RUN[:3]:
        p = under_script(home, f"{QLITE} run -t {work} -- {shlex.join(cmd)}; echo rc=$?")
        out, _ = p.communicate(timeout=120)
        assert message.encode() in out and f"rc={code}".encode() in out, out


def test_a_command_that_runs_keeps_its_own_exit_code(home, work):
    assert home.run("run", work, "--", "sh", "-c", "exit 127", check=False).returncode == 127
    assert home.run("run", work, "--", "sh", "-c", "exit 126", check=False).stderr == ""
    assert home.run("run", work, "--", "false", check=False).returncode == 1


# -- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_command_in_an_app_qube(home, work):
    p = started(home, "run", work, "--", "sh", "-c", f'echo "started $QLITE_QUBE"; {MARK}')
    code, took = interrupt(p)
    assert code == 128 + signal.SIGINT and took < 5
    assert left_in(home, work) == []


def test_ctrl_c_from_a_terminal_reaches_the_whole_command(home, work):
    """A terminal sends SIGINT to qlite's process group: the command (a
    shell and its child) stops, and qlite's own helpers do not die first."""
    p = started(
        home,
        "run",
        work,
        "--",
        "sh",
        "-c",
        f'echo "started $QLITE_QUBE"; {MARK}; echo not-reached',
        start_new_session=True,
    )
    code, took = interrupt(p, group=True)
    assert code == 128 + signal.SIGINT and took < 5
    assert b"not-reached" not in p.stdout.read()
    assert left_in(home, work) == []


def test_a_command_that_handles_ctrl_c_exits_as_it_chooses(home, work):
    p = started(
        home, "run", work, "--", "sh", "-c", f"trap 'echo cleaned up; exit 3' INT; echo \"started $QLITE_QUBE\"; {MARK}"
    )
    code, took = interrupt(p)
    assert code == 3 and took < 5
    assert p.stdout.read() == b"cleaned up\n"  # its output after the interrupt still arrives
    assert left_in(home, work) == []


def test_a_command_that_ignores_ctrl_c_gets_sigterm(home, work):
    p = started(home, "run", work, "--", "sh", "-c", f"trap '' INT; echo \"started $QLITE_QUBE\"; {MARK}")
    code, took = interrupt(p)
    assert code == 128 + signal.SIGTERM and 3 < took < 20
    assert left_in(home, work) == []


def test_ctrl_c_with_a_terminal(home, work):
    """-t goes through podman exec: SIGINT to qlite still reaches the command."""
    p = under_script(home, f"exec {QLITE} run -t {work} -- sh -c 'echo started; {MARK}'")
    assert read_line(p.stdout).strip() == b"started"
    running(home, work)
    qlite = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(qlite) == 1
    start = time.monotonic()
    os.kill(int(qlite[0]), signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT and time.monotonic() - start < 5
    assert left_in(home, work) == []


def test_ctrl_c_stops_the_command_in_a_new_disposable(home):
    p = started(
        home,
        "run",
        "--disposable",
        "--",
        "sh",
        "-c",
        f"trap 'echo bye; exit 4' INT; echo \"started $QLITE_QUBE\"; {MARK}",
    )
    code, took = interrupt(p)
    assert code == 4 and took < 10
    assert p.stdout.read() == b"bye\n"
    assert disposables(home) == [] and not any(home.disposable_leftovers().values())
    p = started(home, "run", "--disposable", "--", "sh", "-c", f'echo "started $QLITE_QUBE"; {MARK}')
    code, took = interrupt(p)
    assert code == 128 + signal.SIGINT and took < 10
    assert disposables(home) == [] and not any(home.disposable_leftovers().values())


# -- preloaded disposables ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(home):
    home.run("daemon", "stop")
    home.run("features", "dom0", "preload-dispvm-max", "1")
    home.run("daemon", "start")
    yield home
    home.run("features", "-D", "dom0", "preload-dispvm-max")
    deadline = time.monotonic() + 60
    while disposables(home) and time.monotonic() < deadline:
        time.sleep(0.3)
    home.run("daemon", "stop")


def wait_preloaded(home) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = [
            r["name"] for r in home.json("ls") if r["class"] == "DispVM" and r["preloaded"] and r["state"] == "Running"
        ]
        if ready:
            return ready[0]
        time.sleep(0.3)
    raise AssertionError("no preloaded disposable appeared")


def gone(home, member: str) -> bool:
    """A preloaded member is used once, then destroyed (bounded wait)."""
    deadline = time.monotonic() + 60
    while member in disposables(home) and time.monotonic() < deadline:
        time.sleep(0.3)
    return member not in disposables(home)


def test_a_preloaded_disposable_answers_127_and_126(pool):
    for cmd, code, message in CANNOT_RUN[:3]:
        member = wait_preloaded(pool)
        proc = pool.run("run", "--disposable", "--", *cmd, check=False)
        assert (proc.returncode, proc.stderr) == (code, message + "\n")
        assert gone(pool, member)  # the command went to the preloaded one


def test_ctrl_c_stops_the_command_in_a_preloaded_disposable(pool):
    member = wait_preloaded(pool)
    p = started(pool, "run", "--disposable", "--", "sh", "-c", f'echo "started $QLITE_QUBE"; {MARK}')
    code, took = interrupt(p)
    assert code == 128 + signal.SIGINT and took < 5
    assert p.qube == member  # it ran in the preloaded one
    assert gone(pool, member)
