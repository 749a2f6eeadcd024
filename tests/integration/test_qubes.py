"""App qubes on the real podman service and runsc: the filesystem model,
lifecycle, limits, prefs, features, tags, clone and remove."""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

LS_KEYS = {"name", "class", "state", "label", "template", "netvm", "mode", "netpath"}


@pytest.fixture(scope="module")
def work(home):
    home.run("create", "work", "--label", "blue")
    yield "work"
    home.run("remove", "--force", "work", check=False)


def state(home, name: str) -> str:
    return next(r["state"] for r in home.json("ls") if r["name"] == name)


def test_ls_json_has_the_contract_keys(home, work):
    rows = home.json("ls")
    assert isinstance(rows, list) and rows
    for row in rows:
        assert LS_KEYS <= set(row), row
        assert row["mode"] in ("container", "vm")
        assert row["netpath"] in ("netstack", "host-netns", "none")
        assert row["state"] in ("Running", "Halted", "Paused", "Transient")
    by_name = {r["name"]: r for r in rows}
    assert by_name["work"]["class"] == "AppVM"
    assert by_name["work"]["template"] == "debian-12"
    assert by_name["work"]["label"] == "blue"
    assert by_name["work"]["netvm"] == "dom0"
    assert by_name["debian-12"]["class"] == "TemplateVM"
    assert by_name["debian-12"]["netvm"] is None


def test_private_data_survives_and_volatile_data_does_not(home, work):
    home.run("run", work, "--", "sh", "-c", "echo keep > ~/kept; echo gone > /tmp/t")
    home.run("run", "-u", "root", work, "--", "sh", "-c", "echo v > /var/log/v; echo r > /run/r")
    assert state(home, work) == "Running"
    home.run("shutdown", "--wait", work)
    assert state(home, work) == "Halted"
    home.run("start", work)
    assert home.run("run", work, "--", "cat", "/home/user/kept", "/rw/home/user/kept").stdout == "keep\nkeep\n"
    gone = home.run("run", work, "--", "sh", "-c", "ls /tmp/t /var/log/v /run/r", check=False)
    assert gone.returncode != 0 and "No such file" in gone.stderr


def test_root_filesystem_is_read_only_even_for_root(home, work):
    for user in ("user", "root"):
        proc = home.run("run", "-u", user, work, "--", "sh", "-c", "echo x > /etc/qlite-probe", check=False)
        assert proc.returncode != 0, user
        assert "Read-only file system" in proc.stderr or "Permission denied" in proc.stderr
    assert home.run("run", "-u", "root", work, "--", "sh", "-c", "touch /probe", check=False).returncode != 0


def test_commands_run_as_user_unless_root_is_asked(home, work):
    assert home.run("run", work, "--", "id", "-un").stdout == "user\n"
    assert home.run("run", "-u", "root", work, "--", "id", "-un").stdout == "root\n"
    # /home is the template's link to /rw/home: the shell keeps the name it
    # was given, getcwd(3) says where the link leads.
    assert home.run("run", work, "--", "sh", "-c", "pwd").stdout == "/home/user\n"
    assert home.run("run", work, "--", "/bin/pwd").stdout == "/rw/home/user\n"


def test_it_is_gvisor_and_limits_apply(home):
    home.run("create", "small", "--label", "green", "--memory", "256", "--vcpus", "1")
    try:
        assert home.run("run", "small", "--", "cat", "/proc/version").stdout.startswith("Linux version 4.4.0")
        mem_kib = int(home.run("run", "small", "--", "awk", "/MemTotal/ {print $2}", "/proc/meminfo").stdout)
        assert mem_kib == 256 * 1024
        prefs = home.json("prefs", "small")
        # The types of ls --json: numbers, not strings.
        assert prefs["memory"] == 256 and prefs["vcpus"] == 1
    finally:
        home.run("remove", "--force", "small")


def test_a_running_qubes_new_memory_and_vcpus_take_effect_at_its_next_start(home):
    """podman cannot change a running gVisor sandbox's limits (runsc has no
    'update'), so qlite says the change waits for the next start, as it
    does for netvm; a halted qube's change needs no word."""
    home.run("create", "sized", "--label", "green", "--memory", "256", "--vcpus", "1")
    try:
        quiet = home.run("prefs", "sized", "memory", "300")
        assert quiet.stderr == ""
        home.run("start", "sized")

        def mem_kib() -> int:
            return int(home.run("run", "sized", "--", "awk", "/MemTotal/ {print $2}", "/proc/meminfo").stdout)

        assert mem_kib() == 300 * 1024
        for prop, value in (("memory", "400"), ("vcpus", "2")):
            told = home.run("prefs", "sized", prop, value)
            assert f"sized is running: its new {prop} takes effect at its next start" in told.stderr
            assert "runsc has no 'update'" in told.stderr
            assert home.json("prefs", "sized")[prop] == int(value)
        label = home.run("prefs", "sized", "label", "orange")  # takes effect at once
        assert label.stderr == ""
        assert mem_kib() == 300 * 1024  # still the old limit...
        home.run("shutdown", "--wait", "sized")
        home.run("start", "sized")
        assert mem_kib() == 400 * 1024  # ...until the next start
    finally:
        home.run("remove", "--force", "sized")


def test_tty_exec_in_a_running_qube(home, work):
    """-t on an app qube goes through podman exec with a terminal; drive
    qlite under script(1) so that it has one."""
    inner = "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; exit 6"
    cmd = f"{shlex.quote(sys.executable)} -m qlite run -t {work} -- sh -c '{inner}'"
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
    assert proc.returncode == 6


def test_exit_code_and_stdin_pass_through(home, work):
    proc = home.run("run", work, "--", "sh", "-c", "tr a-z A-Z; exit 7", input="hello\n", check=False)
    assert proc.returncode == 7 and proc.stdout == "HELLO\n"


def podman_execs(home) -> int:
    log = home.path / "run" / "podman-events.log"
    return sum('"Status":"exec"' in line for line in log.read_text().splitlines())


def test_a_command_in_a_running_qube_goes_straight_to_runsc(home, work):
    """Without a terminal, qlite runs ``runsc exec`` into the sandbox itself
    rather than through a podman exec session; a terminal still uses podman."""
    home.run("start", work, "--skip-if-running")
    before = podman_execs(home)
    proc = home.run("run", work, "--", "sh", "-c", "id -un; pwd; echo $HOME; cat; exit 9", input="in\n", check=False)
    assert (proc.returncode, proc.stdout) == (9, "user\n/home/user\n/home/user\nin\n")
    assert home.run("run", "-u", "root", work, "--", "sh", "-c", "id -un; pwd").stdout == "root\n/\n"
    missing = home.run("run", work, "--", "/no/such/program", check=False)
    assert missing.returncode == 127 and "no such file" in missing.stderr.lower()
    assert podman_execs(home) == before


def test_run_starts_the_qube_unless_told_not_to(home, work):
    home.run("shutdown", work)
    proc = home.run("run", "--no-autostart", work, "--", "true", check=False)
    assert proc.returncode == 125 and "not running" in proc.stderr
    assert state(home, work) == "Halted"
    home.run("run", work, "--", "true")
    assert state(home, work) == "Running"


def test_start_twice_and_pause(home, work):
    home.run("start", "--skip-if-running", work)
    again = home.run("start", work, check=False)
    assert again.returncode == 125 and "already running" in again.stderr
    home.run("pause", work)
    assert state(home, work) == "Paused"
    home.run("unpause", work)
    assert state(home, work) == "Running"
    home.run("kill", work)
    assert state(home, work) == "Halted"


def test_network_follows_netvm(home):
    home.run("create", "offline", "--label", "black", "--netvm", "none")
    try:
        assert home.json("prefs", "offline")["netvm"] is None
        row = next(r for r in home.json("ls") if r["name"] == "offline")
        assert row["netvm"] is None and row["netpath"] == "none"
        dev = home.run("run", "offline", "--", "cat", "/proc/net/dev").stdout
        assert "lo:" in dev and "eth0" not in dev
        home.run("shutdown", "offline")
        home.run("prefs", "offline", "netvm", "dom0")
        assert "eth0" in home.run("run", "offline", "--", "cat", "/proc/net/dev").stdout
        assert (
            home.leftovers()["networks"] == [f"qlite-{home.hash}-offline"]
            or f"qlite-{home.hash}-offline" in home.leftovers()["networks"]
        )
    finally:
        home.run("remove", "--force", "offline")
    assert f"qlite-{home.hash}-offline" not in home.leftovers()["networks"]


def test_engine_objects_carry_the_contract_labels(home, work):
    home.run("start", "--skip-if-running", work)
    ctr = f"qlite-{home.hash}-{work}"
    fmt = (
        '{{index .Config.Labels "qlite.qube"}} {{index .Config.Labels "qlite.kind"}} '
        '{{index .Config.Labels "qlite.home"}} {{.OCIRuntime}}'
    )
    out = subprocess.run(["podman", "inspect", "--format", fmt, ctr], capture_output=True, text=True).stdout.split()
    assert out == [work, "app", home.hash, "qlite-runsc"]
    vol = subprocess.run(
        ["podman", "volume", "inspect", "--format", "{{.Labels}}", f"{ctr}-private"], capture_output=True, text=True
    ).stdout
    assert f"qlite.qube:{work}" in vol and "qlite.kind:private" in vol and f"qlite.home:{home.hash}" in vol


def test_prefs_features_and_tags(home, work):
    home.run("prefs", work, "label", "purple")
    assert home.run("prefs", work, "label").stdout == "purple\n"
    bad = home.run("prefs", work, "label", "pink", check=False)
    assert bad.returncode == 125 and bad.stderr.count("\n") == 1 and "label" in bad.stderr
    assert home.run("prefs", work, "label").stdout == "purple\n"
    home.run("prefs", work, "autostart", "on")
    assert home.json("prefs", work)["autostart"] is True
    assert home.json("prefs", work, "autostart") == {"autostart": True}

    home.run("features", work, "x-color", "teal")
    assert home.run("features", work, "x-color").stdout == "teal\n"
    assert home.json("features", work) == {"x-color": "teal"}
    home.run("features", "-D", work, "x-color")
    assert home.json("features", work) == {}
    home.run("features", "dom0", "preload-dispvm-max", "0")
    assert home.run("features", "dom0", "preload-dispvm-max").stdout == "0\n"

    home.run("tags", work, "add", "alpha", "beta")
    assert home.json("tags", work) == ["alpha", "beta"]
    assert home.run("tags", work, "list", "alpha", check=False).returncode == 0
    assert home.run("tags", work, "list", "gamma", check=False).returncode == 1
    home.run("tags", work, "del", "alpha")
    assert home.json("tags", work) == ["beta"]

    glob = home.json("prefs", "--global")
    assert set(glob) == {"default_template", "default_dispvm", "default_netvm"}
    assert glob["default_template"] == "debian-12" and glob["default_dispvm"] == "default-dvm"
    bad = home.run("prefs", "--global", "default_dispvm", work, check=False)
    assert bad.returncode == 125 and "not a disposable template" in bad.stderr


def test_clone_copies_private_data_and_settings(home, work):
    home.run("run", work, "--", "sh", "-c", "echo cloned-data > ~/c")
    made = home.json("clone", work, "work2")  # --json, as create gives
    try:
        assert made["name"] == "work2" and made["class"] == "AppVM" and LS_KEYS <= set(made)
        assert home.run("run", "work2", "--", "cat", "/home/user/c").stdout == "cloned-data\n"
        home.run("run", "work2", "--", "sh", "-c", "echo changed > ~/c")
        assert home.run("run", work, "--", "cat", "/home/user/c").stdout == "cloned-data\n"
        assert home.json("prefs", "work2")["label"] == home.json("prefs", work)["label"]
    finally:
        home.run("remove", "--force", "work2")


def test_remove_refuses_while_running_then_removes_everything(home):
    home.run("create", "doomed", "--label", "red")
    home.run("start", "doomed")
    busy = home.run("remove", "doomed", check=False)
    assert busy.returncode == 125 and "shut it down first" in busy.stderr
    home.run("shutdown", "doomed")
    home.run("remove", "doomed")
    assert "doomed" not in {r["name"] for r in home.json("ls")}
    left = home.leftovers()
    assert not [n for names in left.values() for n in names if n.startswith(f"qlite-{home.hash}-doomed")]


def test_shutdown_all_stops_every_running_qube(home, work):
    home.run("start", "--skip-if-running", work)
    home.run("shutdown", "--all", "--wait")
    assert all(r["state"] == "Halted" for r in home.json("ls"))


def test_concurrent_writers_do_not_corrupt_the_state(home):
    """Several qlite processes at once (as the CLI, the TUI and the daemon
    will be): every write lands and the store stays consistent."""
    names = [f"par{i}" for i in range(6)]
    procs = [
        home.popen("create", n, "--label", "yellow", stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names
    ]
    procs += [
        home.popen("features", "default-dvm", f"x-par{i}", str(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(6)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    try:
        listed = {r["name"] for r in home.json("ls")}
        assert set(names) <= listed
        feats = home.json("features", "default-dvm")
        assert {k: v for k, v in feats.items() if k.startswith("x-par")} == {f"x-par{i}": str(i) for i in range(6)}
        with sqlite3.connect(home.path / "qlite.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        procs = [home.popen("remove", n) for n in names]
        for p in procs:
            p.wait(timeout=120)
        for i in range(6):
            home.run("features", "-D", "default-dvm", f"x-par{i}")
