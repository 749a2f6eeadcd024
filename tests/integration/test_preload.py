"""Preloaded disposables with the real daemon, podman and runsc."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.integration

WAIT_S = 60


def ready(home, dvm: str = "default-dvm") -> list[str]:
    return sorted(
        r["name"]
        for r in home.json("ls")
        if r["class"] == "DispVM" and "preloaded" in r["tags"] and r["state"] == "Running"
    )


def wait_ready(home, n: int, dvm: str = "default-dvm") -> list[str]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        names = ready(home, dvm)
        if len(names) == n:
            return names
        time.sleep(0.3)
    raise AssertionError(f"expected {n} preloaded disposables, have {ready(home, dvm)}")


@pytest.fixture(scope="module")
def pool(home):
    home.run("daemon", "stop")
    home.run("features", "dom0", "preload-dispvm-max", "2")
    home.run("daemon", "start")
    yield home
    home.run("features", "-D", "dom0", "preload-dispvm-max")
    deadline = time.monotonic() + WAIT_S
    while ready(home) and time.monotonic() < deadline:
        time.sleep(0.3)
    home.run("daemon", "stop")


def test_the_daemon_keeps_the_pool_full_and_a_member_serves_one_command(pool):
    members = wait_ready(pool, 2)
    # ls shows the members as preloaded, and --json what each costs the host.
    rows = {r["name"]: r for r in pool.json("ls")}
    for name in members:
        assert rows[name]["preloaded"] is True and rows[name]["state"] == "Running"
        assert rows[name]["usage"]["pss_mib"] > 1 and rows[name]["usage"]["processes"] >= 2
    assert all(r["usage"] is None for r in rows.values() if r["state"] != "Running")
    listing = {line.split()[0]: line.split()[1] for line in pool.run("ls").stdout.splitlines()[1:]}
    assert all(listing[name] == "Preloaded" for name in members)
    proc = pool.run(
        "run",
        "--disposable",
        "--",
        "sh",
        "-c",
        "echo $QLITE_QUBE; id -un; pwd; cat; exit 5",
        input="from stdin\n",
        check=False,
    )
    assert proc.returncode == 5, proc.stderr
    name, user, cwd, line = proc.stdout.splitlines()
    assert name in members and (user, cwd, line) == ("user", "/home/user", "from stdin")
    # Never reused: it is destroyed, and the pool is refilled with new ones.
    after = wait_ready(pool, 2)
    assert name not in after
    deadline = time.monotonic() + WAIT_S
    while any(r["name"] == name for r in pool.json("ls")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not any(r["name"] == name for r in pool.json("ls"))


def test_members_run_as_user_or_root_and_keep_stderr_apart(pool):
    wait_ready(pool, 2)
    proc = pool.run("run", "--disposable", "-u", "root", "--", "sh", "-c", "id -u; echo oops >&2")
    assert proc.stdout == "0\n" and proc.stderr.strip().endswith("oops")


def test_a_changed_disposable_template_recycles_the_pool(pool):
    before = wait_ready(pool, 2)
    pool.run("features", "default-dvm", "net.dns-servers", "192.0.2.53")
    try:
        deadline = time.monotonic() + WAIT_S
        while set(ready(pool)) & set(before) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not set(ready(pool)) & set(before)
        now = wait_ready(pool, 2)
        out = pool.run("run", "--disposable", "--", "cat", "/etc/resolv.conf").stdout
        assert "192.0.2.53" in out
        assert now
    finally:
        pool.run("features", "-D", "default-dvm", "net.dns-servers")


def test_a_killed_claimant_leaves_nothing_behind(pool):
    members = wait_ready(pool, 2)
    p = pool.popen("run", "--disposable", "--", "sleep", "60", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT_S
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        # One of the ready members, untagged by the claim: not the
        # replacement the daemon starts meanwhile, untagged until ready.
        rows = [
            r
            for r in pool.json("ls")
            if r["name"] in members and "preloaded" not in r["tags"] and "spent" not in r["tags"]
        ]
        claimed = rows[0]["name"] if rows else None
        time.sleep(0.2)
    assert claimed is not None
    p.kill()
    p.wait(timeout=30)
    pool.run("ls")  # any command reaps what a dead qlite left
    deadline = time.monotonic() + WAIT_S
    while any(r["name"] == claimed for r in pool.json("ls")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not any(r["name"] == claimed for r in pool.json("ls"))


def test_without_the_feature_the_pool_empties_and_disposables_start_cold(pool):
    pool.run("features", "dom0", "preload-dispvm-max", "0")
    try:
        deadline = time.monotonic() + WAIT_S
        while ready(pool) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert ready(pool) == []
        assert pool.run("run", "--disposable", "--", "echo", "cold").stdout == "cold\n"
    finally:
        pool.run("features", "dom0", "preload-dispvm-max", "2")
    wait_ready(pool, 2)
