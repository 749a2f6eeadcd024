"""A Qube becomes a ContainerSpec (domain/spec.py) and then podman's specgen
body (engines/podman.py:specgen). Both steps are pure."""

from __future__ import annotations

import pytest

from qlite.domain.model import DEFAULT_PIDS_LIMIT, Qube
from qlite.domain.spec import (
    IDLE_COMMAND,
    container_name,
    engine_labels,
    network_name,
    qube_container_spec,
    volume_name,
)
from qlite.engines.base import ContainerSpec, Mount
from qlite.engines.podman import label_filters, specgen

HH = "0123456789"
MIB = 1024 * 1024


def qube(**kw) -> Qube:
    base = dict(name="work", klass="AppVM", label="blue", template="debian-12")
    base.update(kw)
    return Qube(**base)


def build(q: Qube, **kw) -> ContainerSpec:
    args = dict(home_hash=HH, image="img0", network="none")
    args.update(kw)
    return qube_container_spec(q, **args)


def test_names():
    assert container_name(HH, "work") == f"qlite-{HH}-work"
    assert volume_name(HH, "work") == f"qlite-{HH}-work-private"
    assert network_name(HH, "work") == f"qlite-{HH}-work"


@pytest.mark.parametrize(
    ("kind", "owner", "expected"),
    [
        ("app", None, {"qlite.qube": "work", "qlite.kind": "app", "qlite.home": HH}),
        ("private", None, {"qlite.qube": "work", "qlite.kind": "private", "qlite.home": HH}),
        ("net", None, {"qlite.qube": "work", "qlite.kind": "net", "qlite.home": HH}),
        ("disp", "42:1000", {"qlite.qube": "work", "qlite.kind": "disp", "qlite.home": HH, "qlite.owner": "42:1000"}),
    ],
)
def test_engine_labels(kind, owner, expected):
    assert engine_labels(HH, "work", kind, owner) == expected


# -- Qube -> ContainerSpec -----------------------------------------------------

SPEC_CASES = [
    pytest.param(
        qube(),
        {},
        dict(
            labels={"qlite.qube": "work", "qlite.kind": "app", "qlite.home": HH},
            network="none",
            memory_mib=400,
            vcpus=2,
            user="root",
            workdir="/",
            command=IDLE_COMMAND,
        ),
        id="app-defaults",
    ),
    pytest.param(
        qube(memory=600, maxmem=2048, vcpus=4),
        {"network": f"qlite-{HH}-work"},
        dict(
            network=f"qlite-{HH}-work",
            memory_mib=2048,
            vcpus=4,
        ),
        id="maxmem-wins-and-network",
    ),
    pytest.param(
        qube(memory=512), {"user": "user"}, dict(memory_mib=512, user="user", workdir="/rw/home/user"), id="as-user"
    ),
    pytest.param(
        qube(name="disp123", klass="DispVM", owner="77:12345"),
        {"command": ("sh", "-c", "id"), "user": "user", "stdin_open": True, "tty": True},
        dict(
            name=f"qlite-{HH}-disp123",
            labels={"qlite.qube": "disp123", "qlite.kind": "disp", "qlite.home": HH, "qlite.owner": "77:12345"},
            command=("sh", "-c", "id"),
            stdin_open=True,
            tty=True,
            hostname="disp123",
        ),
        id="disposable",
    ),
]


@pytest.mark.parametrize(("q", "kwargs", "expected"), SPEC_CASES)
def test_qube_container_spec(q, kwargs, expected):
    spec = build(q, **kwargs)
    for key, value in expected.items():
        assert getattr(spec, key) == value, key
    # Invariants of every qube container.
    assert spec.read_only is True
    assert spec.init is True
    assert spec.pids_limit == DEFAULT_PIDS_LIMIT
    assert spec.image == "img0"
    assert spec.hostname == q.name
    assert spec.env["QLITE_QUBE"] == q.name
    assert spec.name == container_name(HH, q.name)


def test_spec_mounts():
    spec = build(qube())
    by_target = {m.target: m for m in spec.mounts}
    assert len(by_target) == len(spec.mounts)
    assert by_target["/rw"] == Mount(type="volume", source=volume_name(HH, "work"), target="/rw")
    for path in ("/tmp", "/run", "/var/tmp", "/var/log"):
        assert by_target[path].type == "tmpfs"
        assert not by_target[path].read_only
    # /home is the template's link into /rw: nothing of the qube's own
    # volume is a bind source the host resolves.
    assert set(by_target) == {"/rw", "/tmp", "/run", "/var/tmp", "/var/log"}
    assert not by_target["/rw"].read_only


def test_no_bind_source_is_writable_by_the_qube():
    """The RPC directory is bound read-only (the qube cannot replace its
    socket); the devices directory is read-only on the host's side."""
    spec = build(qube(), rpc_source="/h/run/rpc/work", devices_source="/h/run/devices/work")
    binds = {m.target: m for m in spec.mounts if m.type == "bind"}
    assert binds["/run/qlite"].read_only
    assert set(binds) == {"/run/qlite", "/mnt/removable"}


@pytest.mark.parametrize(
    ("user", "workdir", "pwd"),
    [
        ("user", "/rw/home/user", "/home/user"),
        ("root", "/", None),
        ("alice", "/rw/home/user", "/home/user"),
    ],
)
def test_workdir_follows_user(user, workdir, pwd):
    spec = build(qube(), user=user)
    assert spec.workdir == workdir
    assert spec.env.get("PWD") == pwd


# -- ContainerSpec -> specgen -----------------------------------------------------


def test_specgen_from_a_qube_spec():
    body = specgen(build(qube(memory=500), network=f"qlite-{HH}-work", user="user"))
    assert body["name"] == f"qlite-{HH}-work"
    assert body["image"] == "img0"
    assert body["command"] == ["sleep", "infinity"]
    assert body["read_only_filesystem"] is True
    assert body["init"] is True
    assert body["user"] == "user"
    assert body["work_dir"] == "/rw/home/user"
    assert body["hostname"] == "work"
    assert body["env"] == {"QLITE_QUBE": "work", "PWD": "/home/user"}
    assert body["labels"] == {"qlite.qube": "work", "qlite.kind": "app", "qlite.home": HH}
    assert body["volumes"] == [{"Name": f"qlite-{HH}-work-private", "Dest": "/rw", "Options": ["rw"]}]
    mounts = {m["destination"]: m for m in body["mounts"]}
    assert "/home/user" not in mounts
    modes = {"/tmp": "mode=1777", "/var/tmp": "mode=1777", "/run": "mode=755", "/var/log": "mode=755"}
    for path, mode in modes.items():
        assert mounts[path]["type"] == "tmpfs"
        assert mounts[path]["source"] == "tmpfs"
        assert mode in mounts[path]["options"]
        assert {"rw", "nosuid", "nodev"} <= set(mounts[path]["options"])
    assert body["netns"] == {"nsmode": "bridge"}
    assert body["Networks"] == {f"qlite-{HH}-work": {}}
    assert body["resource_limits"] == {
        "memory": {"limit": 500 * MIB},
        "cpu": {"period": 100_000, "quota": 200_000},
        "pids": {"limit": DEFAULT_PIDS_LIMIT},
    }
    assert "oci_runtime" not in body


def spec(**kw) -> ContainerSpec:
    base = dict(name="c", image="i", command=("true",), labels={"a": "b"})
    base.update(kw)
    return ContainerSpec(**base)


@pytest.mark.parametrize(
    ("kw", "check"),
    [
        pytest.param(
            {"network": "none"}, lambda b: b["netns"] == {"nsmode": "none"} and "Networks" not in b, id="no-network"
        ),
        pytest.param(
            {"network": "qnet"},
            lambda b: b["netns"] == {"nsmode": "bridge"} and b["Networks"] == {"qnet": {}},
            id="named-network",
        ),
        pytest.param({"memory_mib": 1}, lambda b: b["resource_limits"]["memory"] == {"limit": MIB}, id="memory-1"),
        pytest.param(
            {"memory_mib": 4096}, lambda b: b["resource_limits"]["memory"]["limit"] == 4096 * MIB, id="memory-4096"
        ),
        pytest.param(
            {"vcpus": 1}, lambda b: b["resource_limits"]["cpu"] == {"period": 100_000, "quota": 100_000}, id="vcpus-1"
        ),
        pytest.param({"vcpus": 8}, lambda b: b["resource_limits"]["cpu"]["quota"] == 800_000, id="vcpus-8"),
        pytest.param({"pids_limit": 99}, lambda b: b["resource_limits"] == {"pids": {"limit": 99}}, id="pids"),
        pytest.param({}, lambda b: "resource_limits" not in b, id="no-limits"),
        pytest.param({"read_only": False}, lambda b: b["read_only_filesystem"] is False, id="rw-root"),
        pytest.param({"init": False}, lambda b: b["init"] is False, id="no-init"),
        pytest.param(
            {"stdin_open": True, "tty": True}, lambda b: b["stdin"] is True and b["terminal"] is True, id="interactive"
        ),
        pytest.param({}, lambda b: b["stdin"] is False and b["terminal"] is False, id="not-interactive"),
        pytest.param({"runtime": "qlite-runsc"}, lambda b: b["oci_runtime"] == "qlite-runsc", id="runtime"),
        pytest.param(
            {},
            lambda b: not ({"user", "work_dir", "hostname", "env", "oci_runtime"} & set(b)),
            id="optional-fields-omitted",
        ),
        pytest.param(
            {"mounts": (Mount(type="volume", source="v", target="/d", read_only=True, options=("z",)),)},
            lambda b: b["volumes"] == [{"Name": "v", "Dest": "/d", "Options": ["ro", "z"]}],
            id="ro-volume",
        ),
        pytest.param(
            {"mounts": (Mount(type="bind", source="/s", target="/d", read_only=True),)},
            lambda b: (
                b["mounts"] == [{"destination": "/d", "type": "bind", "source": "/s", "options": ["rbind", "ro"]}]
            ),
            id="ro-bind",
        ),
    ],
)
def test_specgen_table(kw, check):
    assert check(specgen(spec(**kw)))


def test_specgen_copies_rather_than_aliases():
    s = spec(labels={"a": "b"}, env={"K": "V"})
    body = specgen(s)
    body["labels"]["x"] = "y"
    body["env"]["X"] = "Y"
    assert s.labels == {"a": "b"} and s.env == {"K": "V"}


def test_specgen_refuses_unknown_mount_types():
    with pytest.raises(ValueError):
        specgen(spec(mounts=(Mount(type="nfs", target="/x"),)))


def test_label_filters_are_sorted_json():
    assert label_filters({"qlite.qube": "w", "qlite.home": "h"}) == '{"label": ["qlite.home=h", "qlite.qube=w"]}'
