"""Removable drives on real loop devices, with the daemon's pyudev watcher
reading real kernel uevents, and real container and VM qubes."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WAIT_S = 90


@dataclass
class Drive:
    image: Path
    fs_uuid: str
    loop: str = ""

    @property
    def name(self) -> str:
        return self.loop.removeprefix("/dev/")

    def uevent(self, action: str) -> None:
        Path(f"/sys/block/{self.name}/uevent").write_text(f"{action}\n")


class Drives:
    """Loop devices holding small ext4 filesystems; all detached at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.drives: list[Drive] = []

    def new(self, marker: str) -> Drive:
        tree = self.workdir / f"tree-{len(self.drives)}"
        tree.mkdir()
        (tree / "marker").write_text(marker)
        (tree / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (tree / "run.sh").chmod(0o755)
        d = Drive(self.workdir / f"drive-{len(self.drives)}.img", str(uuid.uuid4()))
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                f"qlt{len(self.drives)}",
                "-U",
                d.fs_uuid,
                "-d",
                str(tree),
                str(d.image),
                "16M",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        d.loop = subprocess.run(
            ["losetup", "-f", "--show", str(d.image)], check=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        self.drives.append(d)
        return d

    def destroy(self) -> None:
        for d in self.drives:
            subprocess.run(["umount", "-l", d.loop], capture_output=True, timeout=30)
            subprocess.run(["losetup", "-d", d.loop], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def dev(home):
    home.run("daemon", "stop")
    home.run("daemon", "start")
    home.run("create", "box", "--label", "orange", "--netvm", "none")
    home.run("create", "other", "--label", "gray", "--netvm", "none")
    home.run("start", "box", "other")
    yield home
    home.run("daemon", "stop")


@pytest.fixture(scope="module")
def drives(home):
    d = Drives(home.path)
    yield d
    d.destroy()


def listed(home, name: str) -> dict:
    return next(r for r in home.json("device", "list") if r["name"] == name)


def state(home, qube: str) -> str:
    return next(r["state"] for r in home.json("ls") if r["name"] == qube)


def wait_for(what: str, check, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def in_qube(home, qube: str, script: str, user: str = "user", check: bool = True):
    return home.run("run", "-u", user, qube, "--", "sh", "-c", script, check=check)


def test_list_shows_identity_size_and_who_has_it(dev, drives):
    d = drives.new("one")
    row = listed(dev, d.name)
    assert (row["fs_uuid"], row["fs_type"], row["label"]) == (d.fs_uuid, "ext4", "qlt0")
    assert row["size"] == 16 * 1024 * 1024 and row["ident"] == f"uuid:{d.fs_uuid}"
    assert row["attached_to"] is None and row["host_mounts"] == []


def test_attach_read_only_to_a_container_qube_then_detach(dev, drives):
    d = drives.drives[0]
    dev.run("device", "attach", "box", d.name, "--ro")
    assert listed(dev, d.name)["attached_to"] == "box"
    assert in_qube(dev, "box", f"cat /mnt/removable/{d.name}/marker").stdout == "one"
    write = in_qube(dev, "box", f"echo x > /mnt/removable/{d.name}/new", user="root", check=False)
    assert write.returncode != 0 and "Read-only" in write.stderr
    # noexec unless asked otherwise
    run = in_qube(dev, "box", f"/mnt/removable/{d.name}/run.sh", check=False)
    assert run.returncode != 0 and "ran" not in run.stdout
    # One qube at a time.
    busy = dev.run("device", "attach", "other", d.name, check=False)
    assert busy.returncode != 0 and "already attached to box" in busy.stderr
    dev.run("device", "detach", d.name)
    assert listed(dev, d.name)["attached_to"] is None
    gone = in_qube(dev, "box", f"cat /mnt/removable/{d.name}/marker", check=False)
    assert gone.returncode != 0


def test_attach_read_write_keeps_what_the_qube_wrote(dev, drives):
    d = drives.drives[0]
    refused = dev.run("device", "attach", "other", d.name, "--exec", check=False)
    assert refused.returncode != 0 and "always noexec" in refused.stderr
    dev.run("device", "attach", "other", d.name)
    in_qube(dev, "other", f"echo written > /mnt/removable/{d.name}/new", user="root")
    dev.run("shutdown", "other")  # releases the device
    dev.run("start", "other")
    dev.run("device", "attach", "box", d.name, "--ro")
    try:
        assert in_qube(dev, "box", f"cat /mnt/removable/{d.name}/new").stdout == "written\n"
    finally:
        dev.run("shutdown", "box")
        dev.run("start", "box")
    assert listed(dev, d.name)["attached_to"] is None


def test_a_device_the_host_has_mounted_is_refused_and_nothing_changes(dev, drives, tmp_path):
    d = drives.new("two")
    subprocess.run(["mount", "-o", "ro", d.loop, str(tmp_path)], check=True, timeout=30)
    try:
        refused = dev.run("device", "attach", "box", d.name, check=False)
        assert refused.returncode != 0 and "mounted on the host" in refused.stderr
        assert listed(dev, d.name)["attached_to"] is None
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True, timeout=30)
    unknown = dev.run("device", "attach", "box", "loop999", check=False)
    assert unknown.returncode != 0 and "no such block device" in unknown.stderr


def test_shutdown_releases_the_device(dev, drives):
    d = drives.drives[1]
    dev.run("device", "attach", "other", d.name)
    dev.run("shutdown", "other")
    assert listed(dev, d.name)["attached_to"] is None
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(dev.path / "run" / "devices" / "other") not in mounts


def test_a_required_device_that_is_absent_stops_the_start(dev):
    dev.run("create", "needs", "--label", "red", "--netvm", "none")
    dev.run("device", "assign", "needs", f"uuid:{uuid.uuid4()}", "--required")
    refused = dev.run("start", "needs", check=False)
    assert refused.returncode != 0 and "requires device" in refused.stderr
    assert state(dev, "needs") == "Halted"
    dev.run("remove", "needs")


def test_a_paired_qube_follows_its_drive(dev, drives):
    d = drives.new("paired")
    dev.run("create", "pq", "--label", "purple", "--netvm", "none")
    dev.run("device", "pair", "pq", "--fs-uuid", d.fs_uuid)
    # Inserted: the qube starts with the drive's data.
    d.uevent("add")
    wait_for("pq to start", lambda: state(dev, "pq") == "Running")
    wait_for("the drive in pq", lambda: listed(dev, d.name)["attached_to"] == "pq")
    assert in_qube(dev, "pq", f"cat /mnt/removable/{d.name}/marker").stdout == "paired"
    in_qube(dev, "pq", "echo volatile > /tmp/state")
    # Yanked without eject: stopped promptly, not hung, and the loss is reported.
    d.uevent("remove")
    wait_for("pq to stop", lambda: state(dev, "pq") == "Halted", timeout=30)
    assert listed(dev, d.name)["attached_to"] is None
    events = [json.loads(ln) for ln in (dev.path / "log" / "devices.jsonl").read_text().splitlines()]
    assert any(e["event"] == "removed" and e["qube"] == "pq" and e.get("unsafe") for e in events)
    # Re-inserted: a fresh instance.
    d.uevent("add")
    wait_for("pq to start again", lambda: state(dev, "pq") == "Running")
    wait_for("the drive in pq again", lambda: listed(dev, d.name)["attached_to"] == "pq")
    assert in_qube(dev, "pq", "cat /tmp/state 2>/dev/null || echo fresh").stdout == "fresh\n"
    # Eject: synced, stopped, unmounted.
    in_qube(dev, "pq", f"echo saved > /mnt/removable/{d.name}/saved", user="root")
    dev.run("device", "eject", d.name)
    assert state(dev, "pq") == "Halted" and listed(dev, d.name)["attached_to"] is None
    subprocess.run(["fsck.ext4", "-n", d.loop], check=True, capture_output=True, timeout=60)


def test_two_paired_qubes_at_once(dev, drives):
    a, b = drives.new("a"), drives.new("b")
    for qube, d in (("pa", a), ("pb", b)):
        dev.run("create", qube, "--label", "blue", "--netvm", "none")
        dev.run("device", "pair", qube, "--fs-uuid", d.fs_uuid)
        d.uevent("add")
    wait_for("both to start", lambda: state(dev, "pa") == state(dev, "pb") == "Running")
    wait_for(
        "both drives in",
        lambda: listed(dev, a.name)["attached_to"] == "pa" and listed(dev, b.name)["attached_to"] == "pb",
    )
    a.uevent("remove")
    wait_for("pa to stop", lambda: state(dev, "pa") == "Halted", timeout=30)
    assert state(dev, "pb") == "Running"
    assert in_qube(dev, "pb", f"cat /mnt/removable/{b.name}/marker").stdout == "b"
    dev.run("device", "eject", b.name)
    assert state(dev, "pb") == "Halted"


def test_a_vm_qube_gets_an_assigned_drive_as_a_block_device_at_boot(dev, drives):
    d = drives.drives[0]
    dev.run("create", "vmd", "--label", "green", "--mode", "vm", "--netvm", "none")
    dev.run("device", "assign", "vmd", f"uuid:{d.fs_uuid}", "--ro")
    dev.run("start", "vmd", timeout=600)
    try:
        assert listed(dev, d.name)["attached_to"] == "vmd"
        out = in_qube(
            dev, "vmd", "mkdir -p /mnt/d && mount -o ro /dev/vdc /mnt/d && cat /mnt/d/marker", user="root"
        ).stdout
        assert out == "one"
        busy = dev.run("device", "attach", "box", d.name, check=False)
        assert busy.returncode != 0 and "already attached to vmd" in busy.stderr
    finally:
        dev.run("shutdown", "vmd", timeout=120)
    assert listed(dev, d.name)["attached_to"] is None
    dev.run("remove", "vmd")
