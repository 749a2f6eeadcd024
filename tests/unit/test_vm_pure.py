"""The pure core of VM qubes: the agent channel's wire format, the QEMU
command line, the initramfs (cpio writer, module order), kernel and disk
bookkeeping, and the runner's small helpers. No QEMU, no root, no network."""

from __future__ import annotations

import json
import lzma
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.agent import channel as ch
from qlite.agent import frames
from qlite.errors import EngineError, InvalidValue
from qlite.paths import Paths
from qlite.vm import disks, initramfs, kernel, runner
from qlite.vm.initramfs import AGENT_PORT, INIT_SCRIPT, Entry
from qlite.vm.qemu_args import HOTPLUG_PORTS, TAP, NetConfig, VmConfig, hotplug_bus, kernel_cmdline, qemu_argv

# -- channel: framing ----------------------------------------------------------------------

frames_st = st.lists(
    st.tuples(st.sampled_from(sorted(ch.TYPES)), st.integers(0, ch.MAX_CHANNEL), st.binary(max_size=300)), max_size=15
)


@settings(max_examples=300, deadline=None)
@given(frames=frames_st, data=st.data())
def test_frames_round_trip_split_anywhere(frames, data):
    wire = b"".join(ch.encode(k, c, p) for k, c, p in frames)
    ends = [0]
    for _, _, p in frames:
        ends.append(ends[-1] + ch.HEADER.size + len(p))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    d, out, prev = ch.Decoder(), [], 0
    for c in [*cuts, len(wire)]:
        out += d.feed(wire[prev:c])
        prev = c
        assert out == frames[: len(out)] and d.pending == c - ends[len(out)]  # a partial frame waits
    assert out == frames and d.pending == 0


@pytest.mark.parametrize(
    ("kind", "channel", "size", "error"),
    [
        (0x00, 0, 0, "unknown frame type"),
        (0x1D, 0, 0, "unknown frame type"),
        (0xFF, 0, 0, "unknown frame type"),
        (ch.DATA, 0, ch.MAX_PAYLOAD + 1, "limit"),
        (ch.CLOSE, -1, 0, "out of range"),
        (ch.CLOSE, ch.MAX_CHANNEL + 1, 0, "out of range"),
        (ch.DATA, ch.MAX_CHANNEL, ch.MAX_PAYLOAD, None),
        (ch.CLOSE, 0, 0, None),
    ],
)
def test_bad_frames_rejected_both_ways(kind, channel, size, error):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    if error is None:
        assert ch.Decoder().feed(ch.encode(kind, channel, payload)) == [(kind, channel, payload)]
        return
    with pytest.raises(ch.ChannelError, match=error):
        ch.encode(kind, channel, payload)
    if "range" not in error:  # a header is enough: the decoder does not wait for the payload
        with pytest.raises(ch.ChannelError, match=error):
            ch.Decoder().feed(ch.HEADER.pack(kind, channel, size))


@pytest.mark.parametrize("size", [0, 1, ch.MAX_PAYLOAD, ch.MAX_PAYLOAD + 1, 3 * ch.MAX_PAYLOAD - 1])
def test_chunks_fit_frames(size):
    data = os.urandom(size)
    parts = ch.chunks(data)
    assert b"".join(parts) == data and len(parts) == max(1, -(-size // ch.MAX_PAYLOAD))
    assert all(len(p) <= ch.MAX_PAYLOAD for p in parts) and all(parts[:-1])
    assert ch.chunks(b"") == [b""]  # an empty DATA frame means end of stream


# -- channel: JSON messages and exec requests -----------------------------------------


def test_encode_json_round_trip():
    assert ch.encode(ch.STDOUT, 3, b"ab") == b"\x13" + b"\x00\x00\x00\x03" + b"\x00\x00\x00\x02" + b"ab"
    wire = ch.encode_json(ch.EXIT, 4, {"code": 3, "message": "é"})
    [(kind, channel, payload)] = ch.Decoder().feed(wire)
    assert (kind, channel, payload) == (ch.EXIT, 4, b'{"code":3,"message":"\\u00e9"}')
    assert ch.decode_json(payload) == {"code": 3, "message": "é"}


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"not json", b"{", b"[1]", b"42", b'"s"', b"null"])
def test_decode_json_rejects(payload):
    with pytest.raises(ch.ChannelError, match="malformed message"):
        ch.decode_json(payload)


def test_decode_json_rejects_deep_nesting():
    with pytest.raises(ch.ChannelError):
        ch.decode_json(b"[" * 50000)  # fits in one frame; a guest can send it


DEFAULTS = {"user": "root", "cwd": "/", "env": {}, "tty": False}


@pytest.mark.parametrize(
    ("req", "want"),
    [
        ({"argv": ["ls"]}, {"argv": ["ls"], **DEFAULTS}),
        ({"argv": [""], "tty": 0}, {"argv": [""], **DEFAULTS}),
        (
            {
                "kind": "exec",
                "argv": ["sh", "-c", "x"],
                "user": "user",
                "cwd": "/home/user",
                "env": {"A": "1"},
                "tty": True,
            },
            {"argv": ["sh", "-c", "x"], "user": "user", "cwd": "/home/user", "env": {"A": "1"}, "tty": True},
        ),
        *[
            (bad, None)
            for bad in (
                {},
                {"argv": []},
                {"argv": "ls"},
                {"argv": None},
                {"argv": ["ls", 1]},
                {"argv": [b"ls"]},
                {"argv": ["ls"], "user": 0},
                {"argv": ["ls"], "cwd": None},
                {"argv": ["ls"], "env": ["A=1"]},
                {"argv": ["ls"], "env": {"A": 1}},
                {"argv": ["ls"], "env": {"A": None}},
            )
        ],
    ],
)
def test_validate_exec(req, want):
    if want is None:
        with pytest.raises(ch.ChannelError):
            ch.validate_exec(req)
    else:
        assert ch.validate_exec(req) == want


# -- QEMU command line ----------------------------------------------------------------------

NET = NetConfig(ip="10.137.0.5/24", gateway="10.137.0.1", dns=("10.137.0.1", "9.9.9.9"), mac="02:00:0a:89:00:05")


def cfg(machine="microvm", accel="kvm", net=None, extra=()):
    return VmConfig(
        name="work",
        machine=machine,
        accel=accel,
        memory_mib=512,
        vcpus=2,
        kernel="/k/vmlinuz",
        initrd="/k/initrd.img",
        root_overlay="/r/root.qcow2",
        private_disk="/v/private.img",
        qmp_socket="/r/qmp.sock",
        agent_socket="/r/agent-qemu.sock",
        console_log="/r/console.log",
        pidfile="/r/qemu.pid",
        net=net,
        extra_append=tuple(extra),
    )


def opt(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("machine", ["microvm", "q35"])
@pytest.mark.parametrize("net", [None, NET], ids=["no-net", "net"])
@pytest.mark.parametrize(("accel", "cpu"), [("kvm", "host"), ("tcg", "max")])
def test_qemu_argv(machine, net, accel, cpu):
    argv = qemu_argv("/usr/bin/qemu", cfg(machine, accel, net))
    assert opt(argv, "-cpu") == [cpu]
    devices, suffix = opt(argv, "-device"), "-device" if machine == "microvm" else "-pci"
    assert argv[0] == "/usr/bin/qemu" and opt(argv, "-append") == [kernel_cmdline(cfg(machine, accel, net))]
    virtio = [d.split(",")[0] for d in devices if d.startswith("virtio-")]
    assert virtio == [f"virtio-blk{suffix}", f"virtio-blk{suffix}", f"virtio-serial{suffix}"] + (
        [f"virtio-net{suffix}"] if net else []
    )
    assert opt(argv, "-drive") == [
        "id=root,file=/r/root.qcow2,format=qcow2,if=none,discard=unmap",
        "id=private,file=/v/private.img,format=raw,if=none,discard=unmap",
    ]
    assert f"{virtio[0]},drive=root" in devices and f"{virtio[1]},drive=private" in devices
    assert opt(argv, "-chardev") == ["socket,id=agent,path=/r/agent-qemu.sock,server=on,wait=off"]
    assert f"virtserialport,chardev=agent,name={AGENT_PORT}" in devices
    assert opt(argv, "-kernel") == ["/k/vmlinuz"] and opt(argv, "-initrd") == ["/k/initrd.img"]
    assert opt(argv, "-qmp") == ["unix:/r/qmp.sock,server=on,wait=off"] and opt(argv, "-pidfile") == ["/r/qemu.pid"]
    assert opt(argv, "-serial") == ["file:/r/console.log"] and opt(argv, "-m") == ["512"]
    assert opt(argv, "-smp") == ["2"] and "-nodefaults" in argv and "-no-reboot" in argv
    assert opt(argv, "-name") == ["qlite-work,process=qlite-work"]  # runner's qemu_pid marker is "qlite-work,"
    ports = [d for d in devices if d.startswith("pcie-root-port")]
    if machine == "q35":
        assert opt(argv, "-machine") == [f"q35,accel={accel}"]
        assert ports == [
            f"pcie-root-port,id={hotplug_bus(i)},chassis={i + 1},slot={i + 1}" for i in range(HOTPLUG_PORTS)
        ]
        assert len({hotplug_bus(i) for i in range(HOTPLUG_PORTS)}) == HOTPLUG_PORTS
    else:
        assert opt(argv, "-machine") == [f"microvm,acpi=on,rtc=on,accel={accel}"] and ports == []
    if net:
        assert opt(argv, "-netdev") == [f"tap,id=net0,ifname={TAP},script=no,downscript=no"]
        assert f"virtio-net{suffix},netdev=net0,mac={NET.mac}" in devices
    else:
        assert "-netdev" not in argv and not any("netdev" in d for d in devices)


@pytest.mark.parametrize("machine", ["pc", "", "Q35", "microvm,acpi=off"])
def test_unknown_machine_raises(machine):
    with pytest.raises(ValueError, match="unknown machine"):
        qemu_argv("qemu", cfg(machine))


@pytest.mark.parametrize(
    ("config", "present", "absent"),
    [
        (cfg("microvm"), ["console=ttyS0", "panic=-1", "qlite.name=work", "pci=off"], ["qlite.ip=", "qlite.gw="]),
        (cfg("q35"), ["console=ttyS0", "qlite.name=work"], ["pci=off", "qlite.ip=", "qlite.dns="]),
        (
            cfg("q35", net=NET),
            ["qlite.ip=10.137.0.5/24", "qlite.gw=10.137.0.1", "qlite.dns=10.137.0.1,9.9.9.9"],
            ["pci=off"],
        ),
        (
            cfg("microvm", net=NetConfig("10.0.0.2/16", "10.0.0.1", (), "02:00:00:00:00:01")),
            ["qlite.ip=10.0.0.2/16", "qlite.gw=10.0.0.1", "pci=off"],
            ["qlite.dns="],
        ),
    ],
)
def test_kernel_cmdline(config, present, absent):
    words = kernel_cmdline(config).split(" ")
    assert all(w in words for w in present), words
    assert not any(w.startswith(a) for w in words for a in absent), words


def test_extra_append_comes_last_and_init_reads_every_qlite_word():
    words = kernel_cmdline(cfg(net=NET, extra=("debug", "x=1"))).split(" ")
    assert words[-2:] == ["debug", "x=1"]
    for key in {w.split("=")[0] for w in words if w.startswith("qlite.")}:
        assert f"arg {key}" in INIT_SCRIPT, key  # what the host passes, init must read


# -- initramfs ----------------------------------------------------------------------------


def read_cpio(blob: bytes) -> list[tuple[str, int, bytes, int]]:
    """(name, mode, data, ino) of each newc member, checking the layout."""
    out, pos = [], 0
    while True:
        assert pos % 4 == 0 and blob[pos : pos + 6] == b"070701", pos
        f = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, _nlink, _mtime, size, *_, namesize, check = f
        assert (uid, gid, check) == (0, 0, 0)
        name_end = pos + 110 + namesize
        name = blob[pos + 110 : name_end]
        assert name.endswith(b"\0") and b"\0" not in name[:-1]
        pos = name_end + (-name_end % 4)
        assert blob[name_end:pos] == b"\0" * (pos - name_end)
        data, pad_end = blob[pos : pos + size], pos + size + (-size % 4)
        assert len(data) == size and blob[pos + size : pad_end] == b"\0" * (pad_end - pos - size)
        pos = pad_end
        if name == b"TRAILER!!!\0":
            assert pos == len(blob) and size == 0
            return out
        out.append((name[:-1].decode(), mode, data, ino))


entries_st = st.lists(
    st.builds(
        Entry,
        st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
            lambda p: p != "TRAILER!!!"
        ),
        st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFREG | 0o755, stat.S_IFDIR | 0o755]),
        st.binary(max_size=40),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(entries_st)
def test_cpio_round_trip(entries):
    members = read_cpio(initramfs.cpio_newc(entries))
    assert [(n, m, d) for n, m, d, _ in members] == [(e.path, e.mode, e.data) for e in entries]
    inos = [i for *_, i in members]
    assert 0 not in inos and len(set(inos)) == len(inos)
    assert len(initramfs.cpio_newc([])) == 124  # only the trailer: 110 + "TRAILER!!!\0", padded to 4


@pytest.mark.parametrize(
    ("wanted", "depends", "order"),
    [
        (["a"], {"a": ("b",), "b": ("c",), "c": ()}, ["c", "b", "a"]),
        (["a", "b"], {"a": ("c",), "b": ("c",), "c": ()}, ["c", "a", "b"]),
        (["a"], {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}, ["d", "b", "c", "a"]),
        (["a", "a", "b"], {"a": (), "b": ("a",)}, ["a", "b"]),
        (["virtio_blk", "virtio_pci"], {"virtio_blk": ("virtio",)}, ["virtio_blk"]),  # virtio, virtio_pci built in
        (["x"], {}, []),
        ([], {"a": ()}, []),
        (["a"], {"a": ("a",)}, None),
        (["a"], {"a": ("b",), "b": ("a",)}, None),
        (["z", "a"], {"z": (), "a": ("b",), "b": ("c",), "c": ("a",)}, None),
    ],
)
def test_module_order(wanted, depends, order):
    if order is None:
        with pytest.raises(EngineError, match="loop"):
            initramfs.module_order(wanted, depends)
    else:
        assert initramfs.module_order(wanted, depends) == order


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_module_order_property(data):
    n = data.draw(st.integers(0, 8))
    names = [f"m{i}" for i in range(n)]  # a DAG: deps only on lower numbers; some missing (built in)
    depends = {
        m: tuple(data.draw(st.lists(st.sampled_from(names[:i] + ["builtin"]), max_size=3)))
        for i, m in enumerate(names)
        if data.draw(st.booleans()) or i == n - 1
    }
    wanted = data.draw(st.lists(st.sampled_from(names + ["builtin"]), max_size=5))
    order = initramfs.module_order(wanted, depends)
    assert len(order) == len(set(order)) and set(order) <= set(depends)
    assert {w for w in wanted if w in depends} <= set(order)
    for m in order:
        assert all(order.index(d) < order.index(m) for d in depends[m] if d in depends)


def test_entries_for():
    modules = [("virtio.ko", b"V"), ("virtio_blk.ko", b"B")]
    entries = initramfs.entries_for(b"BUSYBOX", modules)
    by = {e.path: e for e in entries}
    assert by["init"].mode == stat.S_IFREG | 0o755 and by["init"].data == INIT_SCRIPT.encode()
    assert by["bin/busybox"].mode == stat.S_IFREG | 0o755 and by["bin/busybox"].data == b"BUSYBOX"
    assert by["lib/modules/virtio.ko"].data == b"V" and by["lib/modules/virtio_blk.ko"].mode == stat.S_IFREG | 0o644
    assert by["etc/modules.order"].data == b"virtio.ko\nvirtio_blk.ko\n"
    assert all(stat.S_ISDIR(by[d].mode) for d in ("bin", "dev", "etc", "lib/modules", "proc", "sys", "newroot"))
    seen: set[str] = set()
    for e in entries:  # the kernel makes no parent directories: they come first
        parent = e.path.rpartition("/")[0]
        assert not parent or parent in seen, e.path
        seen.add(e.path)
    assert [n for n, *_ in read_cpio(initramfs.cpio_newc(entries))] == [e.path for e in entries]
    assert "/etc/modules.order" in INIT_SCRIPT and '"/lib/modules/$m"' in INIT_SCRIPT
    assert INIT_SCRIPT.startswith("#!/bin/busybox sh\n") and initramfs.AGENT_COMMAND in INIT_SCRIPT


def test_module_bytes(tmp_path):
    raw = os.urandom(3000)
    (tmp_path / "virtio_blk.ko.xz").write_bytes(lzma.compress(raw))
    (tmp_path / "virtio.ko").write_bytes(raw)
    assert initramfs._module_bytes(tmp_path / "virtio_blk.ko.xz") == raw
    assert initramfs._module_bytes(tmp_path / "virtio.ko") == raw


# -- kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-18-cloud-amd64\n", "linux-image-6.1.0-18-cloud-amd64"),
        (
            "linux-image-cloud-amd64\n  PreDepends: dpkg\n  Depends: initramfs-tools\n"
            "  Depends: linux-image-6.12.9-cloud-amd64\n  Depends: linux-image-7-cloud-amd64\n",
            "linux-image-6.12.9-cloud-amd64",
        ),
        ("W: something\nlinux-image-cloud-amd64\n\tDepends:linux-image-x\n", "linux-image-x"),
        ("linux-image-cloud-amd64\n", None),
        ("", None),
        ("linux-image-cloud-amd64\n  Recommends: linux-image-6.1.0-18-cloud-amd64\n  Depends: kmod\n", None),
    ],
)
def test_parse_depends(text, want):
    if want is None:
        with pytest.raises(EngineError, match="apt-get update"):
            kernel.parse_depends(text, "linux-image-cloud-amd64")
    else:
        assert kernel.parse_depends(text, "linux-image-cloud-amd64") == want


V = "6.1.0-18-cloud-amd64"


@pytest.mark.parametrize(
    ("files", "complete"),
    [
        ([f"lib/modules/{V}/", f"boot/vmlinuz-{V}", f"initrd-{V}.img"], True),
        ([f"lib/modules/{V}/", f"boot/vmlinuz-{V}"], False),
        ([f"lib/modules/{V}/", f"initrd-{V}.img"], False),
        (["lib/modules/", f"boot/vmlinuz-{V}", f"initrd-{V}.img"], False),
        ([], False),
    ],
)
def test_kernel_installed(tmp_path, files, complete):
    paths, root = Paths(tmp_path), tmp_path / "vm" / "kernel"
    assert paths.vm_kernel_dir == root
    for f in files:
        (root / f if f.endswith("/") else (root / f).parent).mkdir(parents=True, exist_ok=True)
        if not f.endswith("/"):
            (root / f).write_bytes(b"x")
    want = kernel.Kernel(V, root / "boot" / f"vmlinuz-{V}", root / f"initrd-{V}.img", root / "lib/modules" / V)
    assert kernel.installed(paths) == (want if complete else None)


# -- runner helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "want"),
    [
        ({}, "microvm"),
        ({"vm.machine": "microvm"}, "microvm"),
        ({"vm.machine": "q35"}, "q35"),
        ({"other": "q35"}, "microvm"),
        ({"vm.machine": "pc"}, None),
        ({"vm.machine": ""}, None),
        ({"vm.machine": "Q35"}, None),
        ({"vm.machine": "q35 "}, None),
    ],
)
def test_machine_of(features, want):
    if want is None:
        with pytest.raises(InvalidValue, match="vm.machine"):
            runner.machine_of(features)
    else:
        assert runner.machine_of(features) == want


@pytest.mark.parametrize(
    ("ip", "subnet", "want"),
    [
        ("10.137.0.5", "10.137.0.0/24", "10.137.0.5/24"),
        ("172.16.3.4", "172.16.0.0/16", "172.16.3.4/16"),
        ("fd00::5", "fd00::/64", "fd00::5/64"),
    ],
)
def test_net_config(ip, subnet, want):
    n = runner.net_config(ip, "02:00:00:00:00:05", subnet, "10.137.0.1", ("1.1.1.1",))
    assert n == NetConfig(ip=want, gateway="10.137.0.1", dns=("1.1.1.1",), mac="02:00:00:00:00:05", tap=TAP)


def own_marker() -> str:
    """A word of this process's own command line."""
    return next(a for a in open("/proc/self/cmdline", "rb").read().split(b"\0") if a).decode()


def test_pid_alive(tmp_path):
    pidfile, me, marker = tmp_path / "x.pid", os.getpid(), own_marker()
    assert runner._pid_alive(pidfile, marker) is None  # missing
    pidfile.write_text(f"{me}\n")
    assert runner._pid_alive(pidfile, marker) == me
    assert runner._pid_alive(pidfile, "qlite-not-in-this-cmdline-7f3a") is None
    for garbage in ("", "abc", "12x", "-1"):
        pidfile.write_text(garbage)
        assert runner._pid_alive(pidfile, marker) is None, garbage


# -- disks ------------------------------------------------------------------------------------


def test_root_disks(tmp_path):
    paths = Paths(tmp_path)
    keep, drop = "a1" * 32, "b2" * 32
    assert disks.root_disk_path(paths, keep) == tmp_path / "vm" / "disks" / f"{keep[:20]}.img"
    assert disks.prune_root_disks(paths, {keep}) == []  # no disk dir yet
    paths.vm_disk_dir.mkdir(parents=True)
    for name in (f"{keep[:20]}.img", f"{drop[:20]}.img", "c3c3.img", "x.part", ".lock"):
        (paths.vm_disk_dir / name).write_bytes(b"")
    os.chmod(paths.vm_disk_dir / "c3c3.img", 0o444)  # root disks are read-only
    assert sorted(disks.prune_root_disks(paths, {keep, "d4" * 32})) == [f"{drop[:20]}.img", "c3c3.img"]
    assert sorted(p.name for p in paths.vm_disk_dir.iterdir()) == [".lock", f"{keep[:20]}.img", "x.part"]
    assert disks.private_image("/v/q/_data") == Path("/v/q/_data/private.img")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("processor\t: 0\ncpu MHz\t\t: 2596.148\ncache size\t: 512 KB\n", 2596148),
        ("cpu MHz : 3000\n", 3000000),
        ("cpu MHz : fast\n", None),
        ("cpu MHz : 0.000\n", None),
        ("model name : x\n", None),
        ("", None),
    ],
)
def test_tsc_khz_reads_the_hosts_clock_rate(text, want):
    from qlite.vm.runner import tsc_khz

    assert tsc_khz(text) == want


# -- the JSON codec every frame format uses (json's C half, without re) --------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_frames_json_is_json(value):
    assert frames.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert frames.dumps(value, ascii=False) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert frames.loads(frames.dumps(value)) == json.loads(json.dumps(value))
    assert frames.loads(" \n" + json.dumps(value, indent=2) + "\t ") == json.loads(json.dumps(value))


@pytest.mark.parametrize("text", ["", " ", "NaN", "Infinity", "[1] x", "{", '{"a":1}}', "[1,]", "'a'", '"\\x"'])
def test_frames_json_refuses_what_is_not_one_json_value(text):
    with pytest.raises(ValueError):
        frames.loads(text)


@pytest.mark.parametrize("text", ["{", '{"a" 1}', '"\\x"', '"abc', "[1,", '{"a":}'])
def test_frames_json_reports_a_syntax_error_in_a_fresh_python(text):
    """_json raises json.decoder's class, which it finds only once loaded:
    a Python that never imported json must still get a ValueError."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(frames.__file__).parent)!r})\n"
        "import frames\n"
        "assert 'json.decoder' not in sys.modules\n"
        "try:\n"
        f"    frames.loads({text!r})\n"
        "except ValueError as exc:\n"
        "    print('ValueError', exc)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-SE", "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("ValueError"), done.stdout + done.stderr
