"""The pure ContainerSpec -> docker SDK create arguments translation."""

from __future__ import annotations

import pytest

from qlite.engines.base import ContainerSpec, Mount
from qlite.engines.docker import create_args, default_runtime, has_labels, image_ref, label_filters

IMAGE_ID = "20c45533d36d54ef4b9e27e3dc8462aec18abb625b48d5ba4c9235e5fd43cf0d"


def spec(**kw) -> ContainerSpec:
    base = {
        "name": "qlite-h-work",
        "image": "localhost/qlite/debian-12:1",
        "command": ("sleep", "infinity"),
        "labels": {"qlite.qube": "work"},
    }
    return ContainerSpec(**{**base, **kw})


# (case, spec, runtime, expected container kwargs (subset), expected host config kwargs (exact))
CASES = [
    (
        "minimal: read-only, no network, init, default runtime",
        spec(),
        "runsc",
        {
            "name": "qlite-h-work",
            "image": "localhost/qlite/debian-12:1",
            "command": ["sleep", "infinity"],
            "labels": {"qlite.qube": "work"},
            "stdin_open": False,
            "tty": False,
            "hostname": None,
            "user": None,
            "working_dir": None,
            "environment": None,
        },
        {"read_only": True, "init": True, "network_mode": "none", "mounts": [], "runtime": "runsc"},
    ),
    (
        "empty runtime leaves the engine's default",
        spec(),
        "",
        {},
        {"read_only": True, "init": True, "network_mode": "none", "mounts": []},
    ),
    (
        "the spec's runtime wins over the default",
        spec(runtime="runsc-build"),
        "runsc",
        {},
        {"read_only": True, "init": True, "network_mode": "none", "mounts": [], "runtime": "runsc-build"},
    ),
    (
        "the spec's runtime applies when there is no default",
        spec(runtime="runsc-build"),
        "",
        {},
        {"read_only": True, "init": True, "network_mode": "none", "mounts": [], "runtime": "runsc-build"},
    ),
    (
        "named network, writable root, no init",
        spec(network="qlite-h-work", read_only=False, init=False),
        "",
        {},
        {"read_only": False, "init": False, "network_mode": "qlite-h-work", "mounts": []},
    ),
    (
        "limits: memory in bytes, vcpus in nano-CPUs, pids",
        spec(memory_mib=400, vcpus=2, pids_limit=4096),
        "",
        {},
        {
            "read_only": True,
            "init": True,
            "network_mode": "none",
            "mounts": [],
            "mem_limit": 400 * 1024 * 1024,
            "nano_cpus": 2_000_000_000,
            "pids_limit": 4096,
        },
    ),
    (
        "process: user, workdir, env, hostname, stdin, tty",
        spec(user="user", workdir="/home/user", env={"QLITE_QUBE": "work"}, hostname="work", stdin_open=True, tty=True),
        "",
        {
            "user": "user",
            "working_dir": "/home/user",
            "environment": {"QLITE_QUBE": "work"},
            "hostname": "work",
            "stdin_open": True,
            "tty": True,
        },
        {"read_only": True, "init": True, "network_mode": "none", "mounts": []},
    ),
    (
        "an empty command keeps the image's own",
        spec(command=()),
        "",
        {"command": None},
        {"read_only": True, "init": True, "network_mode": "none", "mounts": []},
    ),
    (
        "a bare image id is made explicit",
        spec(image=IMAGE_ID),
        "",
        {"image": f"sha256:{IMAGE_ID}"},
        {"read_only": True, "init": True, "network_mode": "none", "mounts": []},
    ),
    (
        "mounts: volume, bind, tmpfs with options",
        spec(
            mounts=(
                Mount(type="volume", source="qlite-h-work-private", target="/rw"),
                Mount(type="bind", source="/var/lib/v/home/user", target="/home/user"),
                Mount(type="tmpfs", target="/tmp", options=("mode=1777",)),
                Mount(type="tmpfs", target="/run", options=("mode=755", "size=64m")),
            )
        ),
        "",
        {},
        {
            "read_only": True,
            "init": True,
            "network_mode": "none",
            "mounts": [
                {"Type": "volume", "Source": "qlite-h-work-private", "Target": "/rw", "ReadOnly": False},
                {"Type": "bind", "Source": "/var/lib/v/home/user", "Target": "/home/user", "ReadOnly": False},
            ],
            "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777", "/run": "rw,nosuid,nodev,mode=755,size=64m"},
        },
    ),
    (
        "mount options with a Mount API equivalent",
        spec(
            mounts=(
                Mount(type="volume", source="v", target="/data", read_only=True, options=("nocopy",)),
                Mount(type="bind", source="/src", target="/dst", options=("ro", "rslave")),
                Mount(type="bind", source="/src2", target="/dst2", read_only=True, options=("rw",)),
            )
        ),
        "",
        {},
        {
            "read_only": True,
            "init": True,
            "network_mode": "none",
            "mounts": [
                {
                    "Type": "volume",
                    "Source": "v",
                    "Target": "/data",
                    "ReadOnly": True,
                    "VolumeOptions": {"NoCopy": True},
                },
                {
                    "Type": "bind",
                    "Source": "/src",
                    "Target": "/dst",
                    "ReadOnly": True,
                    "BindOptions": {"Propagation": "rslave"},
                },
                {"Type": "bind", "Source": "/src2", "Target": "/dst2", "ReadOnly": False},
            ],
        },
    ),
]


@pytest.mark.parametrize(("case", "given", "runtime", "container", "host"), CASES, ids=[c[0] for c in CASES])
def test_create_args(case, given, runtime, container, host):
    args = create_args(given, runtime)
    assert {k: args.container[k] for k in container} == container
    assert args.host_config == host


def test_create_args_names_every_container_field():
    """Every key is one the SDK's create_container accepts."""
    assert set(create_args(spec(), "").container) == {
        "name",
        "image",
        "command",
        "labels",
        "stdin_open",
        "tty",
        "hostname",
        "user",
        "working_dir",
        "environment",
    }


def test_create_args_does_not_share_the_spec_dicts():
    given = spec(env={"A": "1"})
    args = create_args(given, "")
    args.container["labels"]["x"] = "y"
    args.container["environment"]["B"] = "2"
    assert given.labels == {"qlite.qube": "work"} and given.env == {"A": "1"}


BAD_MOUNTS = [
    (Mount(type="overlay", target="/x", source="y"), "unknown mount type"),
    (Mount(type="bind", source="/a", target="/b", options=("z",)), "bind mount option 'z'"),
    (Mount(type="volume", source="v", target="/b", options=("rslave",)), "volume mount option 'rslave'"),
    (Mount(type="bind", source="/a", target="/b", options=("nocopy",)), "bind mount option 'nocopy'"),
]


@pytest.mark.parametrize(("mount", "message"), BAD_MOUNTS)
def test_create_args_rejects_what_it_cannot_express(mount, message):
    with pytest.raises(ValueError, match=message):
        create_args(spec(mounts=(mount,)), "")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "runsc"),
        ({"QLITE_DOCKER_RUNTIME": ""}, ""),
        ({"QLITE_DOCKER_RUNTIME": "  "}, ""),
        ({"QLITE_DOCKER_RUNTIME": "runsc-kvm"}, "runsc-kvm"),
    ],
)
def test_default_runtime(env, expected):
    assert default_runtime(env) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (IMAGE_ID, f"sha256:{IMAGE_ID}"),
        (f"sha256:{IMAGE_ID}", f"sha256:{IMAGE_ID}"),
        ("20c45533d36d", "20c45533d36d"),
        ("localhost/qlite/debian-12:1", "localhost/qlite/debian-12:1"),
    ],
)
def test_image_ref(ref, expected):
    assert image_ref(ref) == expected


def test_label_filters_are_sorted_pairs():
    assert label_filters({"qlite.qube": "a", "qlite.home": "h"}) == {"label": ["qlite.home=h", "qlite.qube=a"]}


@pytest.mark.parametrize(
    ("found", "wanted", "expected"),
    [
        ({"qlite.home": "h", "qlite.kind": "net"}, {"qlite.home": "h", "qlite.kind": "net"}, True),
        ({"qlite.home": "h", "qlite.kind": "net", "x": "y"}, {"qlite.home": "h"}, True),
        ({"qlite.home": "other", "qlite.kind": "net"}, {"qlite.home": "h", "qlite.kind": "net"}, False),
        ({"qlite.home": "h"}, {"qlite.home": "h", "qlite.kind": "net"}, False),
        (None, {"qlite.home": "h"}, False),
        (None, {}, True),
    ],
)
def test_has_labels_needs_every_label(found, wanted, expected):
    assert has_labels(found, wanted) is expected
