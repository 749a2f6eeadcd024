"""Generated runtime config (containers.conf, runsc wrappers), the probe's
OCI bundle and the KVM probe firmware: all pure."""

from __future__ import annotations

import json
import resource
import tomllib
from pathlib import Path

import pytest

from qlite.paths import Paths
from qlite.runtime import config
from qlite.runtime.config import NOFILE_CAP, host_limit, render_all, render_flags, write_runtime_config
from qlite.runtime.kvm import EXIT_OK, firmware, qemu_command
from qlite.runtime.probe import RuntimeProbe, bundle_spec


def probe(netstack: bool = True, platform: str = "systrap", runsc: str = "/opt/gvisor/runsc") -> RuntimeProbe:
    return RuntimeProbe(
        runsc=runsc,
        version="release-20240101.0",
        platform=platform,
        netstack=netstack,
        netstack_error="" if netstack else "kernel too new",
        key="k",
    )


@pytest.mark.parametrize(
    ("netstack", "flag", "netpath"), [(True, "sandbox", "netstack"), (False, "host", "host-netns")]
)
def test_probe_network_flag(netstack, flag, netpath):
    p = probe(netstack)
    assert p.network_flag == flag
    assert p.netpath == netpath


@pytest.mark.parametrize(
    ("template", "p", "expected"),
    [
        ("--platform=${PLATFORM} --network=${NETWORK}", probe(True, "systrap"), "--platform=systrap --network=sandbox"),
        ("--platform=${PLATFORM} --network=${NETWORK}", probe(False, "ptrace"), "--platform=ptrace --network=host"),
        ("# comment\n\n--a\n--b=${PLATFORM}\n", probe(True, "kvm"), "--a --b=kvm"),
        ("--x\n   \n# --not-a-flag\n--y", probe(), "--x --y"),
        ("  --indented\n", probe(), "--indented"),
        ("--x\n  # an indented comment\n--y", probe(), "--x --y"),
    ],
)
def test_render_flags(template, p, expected):
    assert render_flags(template, p) == expected


def test_render_flags_rejects_unknown_placeholders():
    with pytest.raises(KeyError):
        render_flags("--foo=${NOPE}", probe())


def test_render_flags_never_emits_a_shell_comment():
    """The flags land on the wrapper's exec line: a '#' there would comment
    out "$@" and every container would lose its arguments."""
    for mode in ("qube", "build"):
        text = (Paths(Path("/x")).runsc_config_dir / "flags" / mode).read_text()
        assert "#" not in render_flags(text, probe())


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(
        tmp_path / "home", host_lib_dir=tmp_path / "lib", podman_dropin=tmp_path / "containers.conf.d" / "50-qlite.conf"
    )


@pytest.mark.parametrize(("netstack", "network"), [(True, "--network=sandbox"), (False, "--network=host")])
@pytest.mark.parametrize("platform", ["systrap", "ptrace"])
def test_render_all_wrappers(paths, netstack, network, platform):
    files = render_all(paths, probe(netstack, platform))
    qube = files[paths.runsc_wrapper("qube")]
    build = files[paths.runsc_wrapper("build")]
    for text in (qube, build):
        assert text.startswith("#!/bin/sh\n")
        exec_line = [ln for ln in text.splitlines() if ln.startswith("exec ")]
        assert len(exec_line) == 1
        assert exec_line[0].startswith("exec /opt/gvisor/runsc ")
        assert exec_line[0].endswith(' "$@"')
        assert f"--platform={platform}" in exec_line[0]
        assert network in exec_line[0]
        assert "${" not in text and "$$" not in text
    assert "--host-uds=open" in qube
    assert "--overlay2=none" in build
    assert "--overlay2=none" not in qube


def test_render_all_containers_conf(paths):
    files = render_all(paths, probe())
    assert set(files) == {paths.runsc_wrapper("qube"), paths.runsc_wrapper("build"), paths.containers_conf}
    conf = tomllib.loads(files[paths.containers_conf])
    engine = conf["engine"]
    assert engine["runtime"] == "qlite-runsc"
    assert engine["cgroup_manager"] == "cgroupfs"
    assert engine["events_logger"] == "file"
    assert Path(engine["events_logfile_path"]).is_absolute()
    assert Path(engine["events_logfile_path"]).parent == paths.run_dir
    assert engine["runtimes"]["qlite-runsc"] == [str(paths.runsc_wrapper("qube"))]
    assert engine["runtimes"]["qlite-runsc-build"] == [str(paths.runsc_wrapper("build"))]
    for wrapper in engine["runtimes"].values():
        assert Path(wrapper[0]).is_absolute()
    (ulimit,) = [u for u in conf["containers"]["default_ulimits"] if u.startswith("nofile=")]
    soft, hard = (int(x) for x in ulimit.removeprefix("nofile=").split(":"))
    assert soft == hard
    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert host_hard == resource.RLIM_INFINITY or hard <= host_hard
    assert hard <= NOFILE_CAP


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ((1024, 4096), 4096),
        ((1024, 10 * NOFILE_CAP), NOFILE_CAP),
        ((1024, resource.RLIM_INFINITY), NOFILE_CAP),
        ((1024, 1024), 1024),
    ],
)
def test_host_limit(monkeypatch, limits, expected):
    monkeypatch.setattr(config.resource, "getrlimit", lambda _which: limits)
    assert host_limit(resource.RLIMIT_NOFILE, NOFILE_CAP) == expected


def test_containers_conf_follows_a_low_host_limit(monkeypatch, paths):
    monkeypatch.setattr(config.resource, "getrlimit", lambda _which: (512, 2048))
    conf = tomllib.loads(render_all(paths, probe())[paths.containers_conf])
    assert "nofile=2048:2048" in conf["containers"]["default_ulimits"]


def test_write_runtime_config_reports_changes(paths):
    assert write_runtime_config(paths, probe()) is True
    assert write_runtime_config(paths, probe()) is False
    wrapper = paths.runsc_wrapper("qube")
    assert wrapper.stat().st_mode & 0o777 == 0o755
    assert paths.containers_conf.stat().st_mode & 0o777 == 0o644
    assert write_runtime_config(paths, probe(netstack=False)) is True
    assert "--network=host" in wrapper.read_text()
    assert not list(paths.run_dir.glob("*.tmp"))


# -- the runsc probe's bundle ---------------------------------------------------------


def test_bundle_spec():
    spec = bundle_spec(["/bin/true", "x"])
    assert spec["root"] == {"path": "/", "readonly": True}
    assert spec["process"]["args"] == ["/bin/true", "x"]
    kinds = [ns["type"] for ns in spec["linux"]["namespaces"]]
    assert "network" not in kinds  # the probe runs in the netns `unshare --net` made
    assert {"pid", "mount"} <= set(kinds)
    assert json.loads(json.dumps(spec)) == spec


# -- the KVM probe --------------------------------------------------------------------


def test_firmware_layout():
    rom = firmware()
    assert len(rom) == 64 * 1024
    # The reset vector (CS:IP F000:FFF0) is a far jump to F000:0000.
    assert rom[0xFFF0:0xFFF5] == bytes.fromhex("ea000000f0")
    assert rom[0] == 0xFA  # cli: the code starts at offset 0
    assert rom[0xFFF5:] == bytes(11)


def test_firmware_is_deterministic():
    assert firmware() == firmware()


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_qemu_command(accel):
    cmd = qemu_command("/usr/bin/qemu-system-x86_64", "/tmp/fw.bin", accel)
    assert cmd[0] == "/usr/bin/qemu-system-x86_64"
    assert cmd[cmd.index("-machine") + 1] == f"pc,accel={accel}"
    assert cmd[cmd.index("-bios") + 1] == "/tmp/fw.bin"
    assert "-nographic" in cmd and "-nodefaults" in cmd
    assert cmd[cmd.index("-device") + 1] == "isa-debug-exit,iobase=0xf4,iosize=0x04"


def test_exit_ok_is_what_isa_debug_exit_returns_for_0x2a():
    assert EXIT_OK == 0x55


# -- runsc exec straight into a qube's sandbox ----------------------------------------------


def test_runsc_root_is_read_from_the_sandbox_command_line(tmp_path, monkeypatch):
    import builtins

    from qlite.engines import podman

    cases = {
        1: b"runsc-sandbox\0--root=/var/run/runsc\0--platform=systrap\0boot\0",
        2: b"/usr/bin/runsc\0--root\0/run/x\0boot\0",
        3: b"runsc-sandbox\0boot\0",
        4: b"/usr/bin/conmon\0--root=/nope\0",
    }
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if isinstance(path, str) and path.startswith("/proc/") and path.endswith("/cmdline"):
            pid = int(path.split("/")[2])
            if pid not in cases:
                raise FileNotFoundError(path)
            target = tmp_path / f"cmdline-{pid}"
            target.write_bytes(cases[pid])
            return real_open(target, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert [podman._runsc_root(pid) for pid in (1, 2, 3, 4, 5)] == ["/var/run/runsc", "/run/x", None, None, None]


def test_users_runsc_exec_can_take():
    from qlite.engines.podman import KNOWN_USERS, USER_RE

    assert KNOWN_USERS == {"root": "0:0", "user": "1000:1000"}
    assert [bool(USER_RE.fullmatch(u)) for u in ("0", "1000:1000", "alice", "1:x", "", "1" * 10)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("failures", "message", "outcome"),
    [
        pytest.param(0, "", "listed", id="first-time"),
        pytest.param(
            2,
            "podman: list volumes: no volume with name qlite-x-disp1-private found",
            "listed",
            id="a-volume-went-away",
        ),
        pytest.param(1, "podman: list containers: no such container abc", "listed", id="a-container-went-away"),
        pytest.param(5, "podman: list volumes: no volume with name v found", "error", id="gives-up-after-5"),
        pytest.param(1, "podman: list volumes: permission denied", "error", id="other-errors-are-not-retried"),
    ],
)
def test_a_listing_is_asked_again_when_an_object_vanishes_under_it(tmp_path, monkeypatch, failures, message, outcome):
    from qlite.engines.podman import PodmanEngine
    from qlite.errors import EngineError
    from qlite.paths import Paths

    engine = PodmanEngine(Paths(tmp_path))
    calls = []

    def fake_json(method, path, what, ok404=False, **kw):
        calls.append(path)
        if len(calls) <= failures:
            raise EngineError(message)
        return [{"Name": "v", "Labels": {"qlite.home": "h"}, "Mountpoint": "/m"}]

    monkeypatch.setattr(engine, "_json", fake_json)
    monkeypatch.setattr("qlite.engines.podman.time.sleep", lambda _s: None)
    if outcome == "listed":
        assert [v.name for v in engine.list_volumes({"qlite.home": "h"})] == ["v"]
        assert len(calls) == failures + 1
    else:
        with pytest.raises(EngineError):
            engine.list_volumes({"qlite.home": "h"})
