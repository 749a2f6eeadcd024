"""The host's podman drop-in: what it says, and when it leaves CNI alone."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from qlite.doctor import OK, WARN, check_host_podman
from qlite.paths import Paths
from qlite.runtime.config import render_dropin
from qlite.runtime.hostpodman import HostPodman, dropin_state, install_dropin, read_host


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(
        tmp_path / "home", host_lib_dir=tmp_path / "lib", podman_dropin=tmp_path / "containers.conf.d" / "50-qlite.conf"
    )


@pytest.mark.parametrize("network", [True, False])
def test_dropin_registers_the_runtimes_and_selects_netavark(paths, network):
    conf = tomllib.loads(render_dropin(paths, network))
    assert conf["engine"]["runtimes"] == {
        "qlite-runsc": [str(paths.host_lib_dir / "runsc-qube")],
        "qlite-runsc-build": [str(paths.host_lib_dir / "runsc-build")],
    }
    assert conf.get("network", {}).get("network_backend") == ("netavark" if network else None)
    # Nothing else of the host's configuration is changed.
    assert set(conf) <= {"engine", "network"} and set(conf["engine"]) == {"runtimes"}


def write_conflist(d: Path, filename: str, name: str | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / filename).write_text(json.dumps({"cniVersion": "0.4.0", **({"name": name} if name else {})}))


@pytest.mark.parametrize(
    ("confs", "plugins", "record", "networks", "in_use"),
    [
        # A stock Debian 12: podman's default network only, no plugins.
        ([("87-podman-bridge.conflist", "podman")], False, "cni", (), False),
        ([("87-podman-bridge.conflist", "podman")], False, "", (), False),
        ([], False, "netavark", (), False),
        # CNI that works, and podman recorded it: its containers use it.
        ([("87-podman-bridge.conflist", "podman")], True, "cni", (), True),
        ([], True, "netavark", (), False),
        # The user's own CNI networks.
        ([("87-podman-bridge.conflist", "podman"), ("10-mine.conflist", "mine")], False, "cni", ("mine",), True),
        ([("20-x.conflist", None)], False, "", ("20-x",), True),
    ],
)
def test_read_host(tmp_path, confs, plugins, record, networks, in_use):
    cni = tmp_path / "cni"
    cni.mkdir()
    for filename, name in confs:
        write_conflist(cni, filename, name)
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    if plugins:
        (plugin_dir / "bridge").write_text("")
    rec = tmp_path / "defaultNetworkBackend"
    if record:
        rec.write_text(record)
    host = read_host(cni, (plugin_dir,), rec)
    assert host.cni_networks == networks
    assert bool(host.cni_in_use) is in_use


def test_an_unreadable_conflist_still_counts(tmp_path):
    cni = tmp_path / "cni"
    cni.mkdir()
    (cni / "30-broken.conflist").write_text("{not json")
    assert read_host(cni, (), tmp_path / "none").cni_networks == ("30-broken",)


FREE = HostPodman((), False, "cni")
IN_USE = HostPodman(("mine",), False, "cni")


@pytest.mark.parametrize(
    ("host", "force", "netavark"),
    [
        (FREE, False, True),
        (IN_USE, False, False),
        (IN_USE, True, True),
        (FREE, True, True),
    ],
)
def test_install_dropin(paths, host, force, netavark):
    result = install_dropin(paths, force=force, host=host)
    assert result.changed and result.netavark is netavark
    assert bool(result.held_back) is not netavark
    assert paths.podman_dropin.read_text() == render_dropin(paths, netavark)
    assert paths.podman_dropin.stat().st_mode & 0o777 == 0o644
    assert dropin_state(paths) == (True, netavark)
    assert install_dropin(paths, force=force, host=host).changed is False


def test_doctor_says_where_the_host_stands(paths):
    assert check_host_podman(paths, FREE).status == WARN  # nothing installed yet
    install_dropin(paths, host=IN_USE)
    check = check_host_podman(paths, IN_USE)
    assert check.status == WARN and "mine" in check.detail and "--force" in check.fix
    install_dropin(paths, host=FREE)
    assert check_host_podman(paths, FREE).status == OK
    paths.podman_dropin.write_text("# edited by hand\n")
    assert check_host_podman(paths, FREE).status == WARN
