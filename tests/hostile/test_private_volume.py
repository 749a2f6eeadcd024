"""F1 and its relatives: the qube's private volume, every component of the
paths the host lays out in it, and what clone and disposables copy from it."""

from __future__ import annotations

import os
import stat

import pytest

from tests.hostile.conftest import SECRET, as_root, as_user, restart, volume_dir

pytestmark = pytest.mark.integration

# What root in the qube puts where the host expects a directory.
PLANTS = {
    "symlink-to-canary": "ln -s {canary} {p}",
    "symlink-to-qlite-home": "ln -s {home}/run {p}",
    "relative-symlink-up": "ln -s ../../../../../../../../..{canary} {p}",
    "fifo": "mkfifo {p}",
    "file": "echo not-a-dir > {p}",
    "dir-mode-0": "mkdir {p} && chmod 0 {p}",
}


@pytest.mark.parametrize("component", ["/rw/home", "/rw/home/user"])
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_poisoned_home_reaches_nothing_on_the_host(home, canary, attacker, component, plant):
    """F1: replace /rw/home or /rw/home/user, restart, then read and write
    through /home/user as the user and as root."""
    cmd = PLANTS[plant].format(canary=canary.path, home=home.path, p=component)
    as_root(home, attacker, f"rm -rf {component}; mkdir -p $(dirname {component}); {cmd}", check=True)
    started = restart(home, attacker)
    assert started.returncode == 0, started.stderr  # the qube broke only itself
    for who in (as_user, as_root):
        out = who(
            home,
            attacker,
            """
            cat /home/user/secret /home/user/link /home/user/sub/file 2>&1
            ls -la /home/user/ /home/user/run 2>&1
            echo planted > /home/user/planted 2>&1
            chmod 777 /home/user 2>&1; chown 1000 /home/user/secret 2>&1
        """,
        )
        assert SECRET not in out.stdout and "inner" not in out.stdout
        assert "podman.sock" not in out.stdout and "admin.sock" not in out.stdout
    assert not (home.path / "run" / "planted").exists()


def test_the_host_never_follows_a_link_when_it_lays_out_the_volume(home, canary, attacker):
    """On the host's side: what the qube planted is left as it was, and the
    host made nothing behind the link."""
    as_root(home, attacker, f"rm -rf /rw/home; ln -s {canary.path} /rw/home", check=True)
    assert restart(home, attacker).returncode == 0
    vol = volume_dir(home, attacker)
    assert os.readlink(vol / "home") == str(canary.path)
    assert not (canary.path / "user").exists()


POISON = """
    set -e
    ln -s {canary} /rw/home/user/escape
    ln -s {canary}/secret /rw/home/user/secretlink
    ln -s ../../../../../../../../..{canary}/secret /rw/home/user/uplink
    mkfifo /rw/home/user/fifo
    mkdir -p /rw/home/user/d/e && echo mine > /rw/home/user/d/e/f && chmod 0 /rw/home/user/d
    ln -s {canary} /rw/outside
"""


def _check_copy(home, canary, qube: str, user: str = "user") -> None:
    """QUBE's volume holds the poisoned qube's links as links, and nothing
    of the canary."""
    vol = volume_dir(home, qube)
    user = vol / "home" / user
    assert os.readlink(user / "escape") == str(canary.path)
    assert os.readlink(user / "secretlink") == f"{canary.path}/secret"
    assert stat.S_ISLNK((vol / "outside").lstat().st_mode)
    assert not (user / "fifo").exists()  # FIFOs are not copied
    for p in user.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert SECRET not in p.read_text(errors="replace")


def test_clone_of_a_poisoned_qube_copies_links_as_links(home, canary, attacker):
    """The clone carries the poison along as data: links stay links, and
    the clone's own home, a link to the canary, leads nowhere on the host."""
    as_root(home, attacker, POISON.format(canary=canary.path), check=True)
    as_root(home, attacker, f"mv /rw/home/user /rw/home/real && ln -s {canary.path} /rw/home/user", check=True)
    home.run("shutdown", "--wait", attacker)
    clone = f"{attacker}c"
    home.run("clone", attacker, clone)
    try:
        _check_copy(home, canary, clone, user="real")
        assert home.run("start", clone, check=False).returncode == 0
        for who in (as_user, as_root):
            out = who(
                home,
                clone,
                "cat ~/secret /home/real/secretlink /home/real/uplink 2>&1; "
                "echo x > /home/user/planted 2>&1; echo x > /home/real/escape/new 2>&1",
            )
            assert SECRET not in out.stdout
    finally:
        home.run("remove", "--force", clone, check=False)


def test_disposables_of_a_poisoned_disposable_template(home, canary):
    dvm = "atkdvm"
    home.run("create", dvm, "--label", "red", "--prop", "template_for_dispvms=True")
    try:
        poison = POISON.format(canary=canary.path) + f"\nrm -rf /rw/home/user/d; ln -s {canary.path} /rw/home/user/d"
        as_root(home, dvm, poison, check=True)
        home.run("shutdown", "--wait", dvm)
        out = home.run(
            "run",
            "--disposable",
            "--dvm",
            dvm,
            "--",
            "sh",
            "-c",
            "cat ~/secretlink ~/uplink ~/d/secret 2>&1; echo x > ~/escape/planted 2>&1; ls -la ~/d/ 2>&1",
            check=False,
        )
        assert SECRET not in out.stdout
        # The disposable template itself poisoned to the top: /rw/home a link.
        as_root(home, dvm, f"rm -rf /rw/home; ln -s {canary.path} /rw/home", check=True)
        home.run("shutdown", "--wait", dvm)
        out = home.run(
            "run",
            "--disposable",
            "--dvm",
            dvm,
            "-u",
            "root",
            "--",
            "sh",
            "-c",
            "echo x > /home/user/planted 2>&1; cat /home/secret 2>&1",
            check=False,
        )
        assert SECRET not in out.stdout
    finally:
        home.run("remove", "--force", dvm, check=False)
    assert home.disposable_leftovers() == {"containers": [], "volumes": [], "networks": []}


@pytest.mark.parametrize("plant", ["symlink", "dir", "hardlink-inside", "regular-file"])
def test_a_planted_private_disk_never_reaches_qemu(home, canary, attacker, plant):
    """Switching a container qube to VM mode: /rw/private.img must be the
    disk qlite made, never a link to a host file the VM could write. (A FIFO
    made in a container qube stays inside gVisor: the host never sees it.)"""
    cmd = {
        "symlink": f"ln -s {canary.path}/secret /rw/private.img",
        "dir": "mkdir /rw/private.img",
        "hardlink-inside": "echo x > /rw/other && ln /rw/other /rw/private.img",
        "regular-file": "head -c 65536 /dev/zero > /rw/private.img",
    }[plant]
    as_root(home, attacker, cmd, check=True)
    home.run("shutdown", "--wait", attacker)
    home.run("prefs", attacker, "mode", "vm")
    started = home.run("start", attacker, check=False, timeout=600)
    assert started.returncode == 125 and "private.img" in started.stderr
    assert started.stderr.count("\n") == 1
    # Not a disk qlite made: the way back to container mode stays open.
    home.run("prefs", attacker, "mode", "container")
    assert home.run("start", attacker, check=False).returncode == 0
