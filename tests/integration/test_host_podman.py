"""The host's own podman tools see what qlite runs, whichever of the two
ran first on the machine, and the suite's leftover checks read the same
objects qlite makes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import podman_objects

pytestmark = pytest.mark.integration


def host_podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)


def test_the_host_podman_lists_a_running_qubes_objects(home):
    home.run("create", "seen", "--label", "green")
    try:
        home.run("start", "seen")
        name = f"qlite-{home.hash}-seen"
        for args, expected in ((["ps", "-a"], name), (["network", "ls"], name), (["volume", "ls"], f"{name}-private")):
            proc = host_podman(
                *args, "--filter", "label=qlite.qube=seen", "--format", "{{.Names}}" if args[0] == "ps" else "{{.Name}}"
            )
            assert proc.returncode == 0, proc.stderr
            assert expected in proc.stdout.split(), (args, proc.stdout)
            # The host's podman knows qlite's runtime: no "OCI Runtime
            # qlite-runsc ... is not available".
            assert "OCI Runtime" not in proc.stderr and "not available" not in proc.stderr, proc.stderr
        fmt = "{{.OCIRuntime}} {{.State.Status}}"
        assert host_podman("inspect", "--format", fmt, name).stdout.split() == ["qlite-runsc", "running"]
    finally:
        home.run("remove", "--force", "seen")
    assert not any(podman_objects("qlite.qube=seen", f"qlite.home={home.hash}").values())


def test_a_store_whose_podman_recorded_cni_still_uses_netavark(tmp_path):
    """What a fresh machine does when the host's podman CLI runs after qlite
    has built images: it records CNI. The drop-in overrides the record."""
    root = tmp_path / "storage"
    # podman refuses a run root longer than 50 characters.
    runroot = Path(tempfile.mkdtemp(prefix="qlite-rr-", dir="/run"))
    root.mkdir()
    (root / "defaultNetworkBackend").write_text("cni")
    proc = host_podman(
        "--root",
        str(root),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "vfs",
        "info",
        "--format",
        "{{.Host.NetworkBackend}}",
    )
    try:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "netavark"
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_the_leftover_helper_sees_an_object_go(home):
    """The helper every teardown trusts must be able to fail: it reads the
    store qlite writes, so an object removed behind qlite's back is seen to
    go."""
    home.run("create", "gone", "--label", "gray")
    net = f"qlite-{home.hash}-gone"
    try:
        home.run("start", "gone")  # a qube's network is made at its first start
        home.run("shutdown", "--wait", "gone")
        assert net in home.leftovers()["networks"]
        assert f"{net}-private" in home.leftovers()["volumes"]
        proc = host_podman("network", "rm", "-f", net)
        assert proc.returncode == 0, proc.stderr
        assert net not in home.leftovers()["networks"]
    finally:
        home.run("remove", "--force", "gone")
    assert f"{net}-private" not in home.leftovers()["volumes"]
