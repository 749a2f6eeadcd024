"""The docker engine, driven for real against podman's Docker-compatible API.

qlite's podman service serves that API on its own socket, so these tests run
the docker SDK against ``unix://$QLITE_HOME/run/podman.sock``. Its default
runtime is qlite's runsc wrapper already, and podman 4.3's compat API ignores
HostConfig.Runtime anyway, so the engine is told to name no runtime
(QLITE_DOCKER_RUNTIME=""). Every object carries ``qlite.home=<hash>`` so that
the home fixture's teardown finds whatever a failing test left behind; the
images the image tests make carry unique names and are removed by them.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import tarfile
import tempfile
import termios
from pathlib import Path

import pytest

from qlite.engines.base import ContainerSpec, Mount, Stdio
from qlite.engines.docker import DockerEngine
from qlite.errors import EngineError, EngineUnavailable
from qlite.paths import Paths

pytestmark = pytest.mark.integration

GVISOR_KERNEL = b"Linux version 4.4.0"
QUBE = "dk-test"


@pytest.fixture(scope="module")
def sock(home) -> str:
    # setup started the service, but it stops itself when idle.
    home.run("service", "start")
    return f"unix://{home.path / 'run' / 'podman.sock'}"


@pytest.fixture(scope="module")
def engine(home, sock) -> DockerEngine:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QLITE_DOCKER_RUNTIME", "")
        eng = DockerEngine(Paths(home.path), sock)
    assert eng.runtime == ""
    return eng


@pytest.fixture(scope="module")
def image(home) -> str:
    rows = home.json("template", "list")
    (row,) = [r for r in rows if r["name"] == "debian-12"]
    return row["image_id"]


def labels(home, kind: str, qube: str = QUBE) -> dict[str, str]:
    return {"qlite.home": home.hash, "qlite.qube": qube, "qlite.kind": kind}


def name(home, suffix: str) -> str:
    return f"qlite-{home.hash}-{QUBE}-{suffix}"


class Captured:
    """Real files for a command's stdio (pump writes to file descriptors)."""

    def __init__(self, stdin: bytes | None = None, tty: bool = False):
        self._files = []
        self.stdin = self._file(stdin) if stdin is not None else None
        self.stdout = self._file(b"")
        self.stderr = self._file(b"")
        self.stdio = Stdio(stdin=self.stdin, stdout=self.stdout, stderr=self.stderr, tty=tty)

    def _file(self, data: bytes):
        f = tempfile.TemporaryFile()
        f.write(data)
        f.seek(0)
        self._files.append(f)
        return f

    def out(self) -> bytes:
        self.stdout.seek(0)
        return self.stdout.read()

    def err(self) -> bytes:
        self.stderr.seek(0)
        return self.stderr.read()

    def close(self) -> None:
        for f in self._files:
            f.close()


def sized_pty(rows: int, cols: int):
    """A pseudo-terminal of a known size, its slave end as a file for stdin."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, os.fdopen(slave, "rb", buffering=0)


# A command that waits (bounded) until the terminal has the size the client
# sent through the resize call, then prints it.
WAIT_FOR_SIZE = 'for i in $(seq 50); do [ "$(stty size)" = "33 111" ] && break; sleep 0.1; done; stty size'


def test_version(engine):
    assert engine.version()


def test_unreachable_engine_is_reported(home, tmp_path):
    eng = DockerEngine(Paths(home.path), f"unix://{tmp_path / 'nothing.sock'}")
    with pytest.raises(EngineUnavailable, match="cannot reach the Docker engine"):
        eng.version()


def test_volumes(engine, home):
    vname = name(home, "vol")
    lab = labels(home, "private")
    try:
        vol = engine.create_volume(vname, lab)
        assert vol.name == vname and vol.labels == lab and vol.mountpoint
        assert engine.inspect_volume(vname) == vol
        assert [v.name for v in engine.list_volumes(lab)] == [vname]
        assert engine.list_volumes({**lab, "qlite.kind": "other"}) == []
        with pytest.raises(EngineError):
            engine.create_volume(vname, lab)
    finally:
        engine.remove_volume(vname)
    assert engine.inspect_volume(vname) is None
    assert engine.list_volumes(lab) == []
    engine.remove_volume(vname)  # already gone: not an error


def test_networks(engine, home):
    nname = name(home, "net")
    lab = labels(home, "net")
    try:
        net = engine.create_network(nname, lab, internal=True)
        assert net.name == nname and net.labels == lab and net.internal and net.subnets
        assert engine.list_networks(lab) == [net]
        assert engine.list_networks({**lab, "qlite.qube": "someone-else"}) == []
    finally:
        engine.remove_network(nname)
    assert engine.list_networks(lab) == []
    engine.remove_network(nname)  # already gone: not an error


def test_missing_objects(engine, home):
    assert engine.inspect_container(name(home, "nothing")) is None
    engine.remove_container(name(home, "nothing"))
    assert engine.inspect_image("localhost/qlite-test/nothing:1") is None
    assert engine.inspect_image("ab" * 32) is None
    engine.remove_image("localhost/qlite-test/nothing:1")
    with pytest.raises(EngineError, match="docker: start"):
        engine.start(name(home, "nothing"))
    with pytest.raises(EngineError):
        engine.create_container(
            ContainerSpec(
                name=name(home, "noimage"),
                image="localhost/qlite-test/nothing:1",
                command=("true",),
                labels=labels(home, "app"),
            )
        )
    assert engine.inspect_container(name(home, "noimage")) is None


def test_attach_and_start_passes_stdio_and_exit_code(engine, home, image):
    vname, cname = name(home, "rw"), name(home, "run")
    vol = engine.create_volume(vname, labels(home, "private"))
    io_ = Captured(stdin=b"hello from stdin\n")
    script = (
        "tr a-z A-Z; echo to-stderr >&2; "
        "touch /etc/qlite-probe 2>/dev/null || echo root-is-read-only; "
        "grep -q ' /tmp tmpfs ' /proc/mounts && echo tmp-is-tmpfs; "
        "stat -c %a /tmp; echo $QLITE_QUBE $(hostname) $(id -un) $(pwd); "
        "echo kept > /rw/file; exit 3"
    )
    spec = ContainerSpec(
        name=cname,
        image=image,
        command=("sh", "-c", script),
        labels=labels(home, "disp"),
        hostname="dk-host",
        user="root",
        workdir="/rw",
        env={"QLITE_QUBE": QUBE},
        read_only=True,
        mounts=(
            Mount(type="volume", source=vname, target="/rw"),
            Mount(type="tmpfs", target="/tmp", options=("mode=1777",)),
        ),
        network="none",
        memory_mib=256,
        vcpus=1,
        pids_limit=256,
        init=True,
        stdin_open=True,
    )
    cid = ""
    try:
        cid = engine.create_container(spec)
        info = engine.inspect_container(cid)
        assert info is not None and info.id == cid and info.name == cname and info.state == "created"
        assert info.labels["qlite.home"] == home.hash and info.labels["qlite.kind"] == "disp"
        assert info.image_id == image
        assert [c.id for c in engine.list_containers(labels(home, "disp"))] == [cid]

        code = engine.attach_and_start(cid, io_.stdio)

        assert code == 3
        assert io_.out() == (
            b"HELLO FROM STDIN\nroot-is-read-only\ntmp-is-tmpfs\n1777\n" + f"{QUBE} dk-host root /rw\n".encode()
        )
        assert io_.err() == b"to-stderr\n"
        assert (Path(vol.mountpoint) / "file").read_bytes() == b"kept\n"
        assert engine.inspect_container(cid).state == "exited"
        assert b"HELLO FROM STDIN" in b"".join(engine.logs(cid))
    finally:
        io_.close()
        engine.remove_container(cid or cname)
        engine.remove_volume(vname)
    assert engine.inspect_container(cname) is None
    assert engine.list_containers(labels(home, "disp")) == []


def test_attach_with_a_tty_resizes_it(engine, home, image):
    cname = name(home, "tty")
    master, stdin = sized_pty(33, 111)
    io_ = Captured(tty=True)
    io_.stdio.stdin = stdin
    spec = ContainerSpec(
        name=cname,
        image=image,
        command=("sh", "-c", f"{WAIT_FOR_SIZE}; exit 7"),
        labels=labels(home, "disp"),
        network="none",
        stdin_open=True,
        tty=True,
    )
    try:
        cid = engine.create_container(spec)
        assert engine.attach_and_start(cid, io_.stdio) == 7
        assert io_.out() == b"33 111\r\n"  # \r\n: the output went through a terminal
    finally:
        io_.close()
        stdin.close()
        os.close(master)
        engine.remove_container(cname)


@pytest.fixture(scope="module")
def idle(engine, home, image):
    """A running qube-like container: sleep infinity under an init."""
    cname = name(home, "idle")
    spec = ContainerSpec(
        name=cname,
        image=image,
        command=("sleep", "infinity"),
        labels=labels(home, "app"),
        network="none",
        init=True,
        read_only=True,
        mounts=(Mount(type="tmpfs", target="/tmp", options=("mode=1777",)),),
    )
    cid = engine.create_container(spec)
    try:
        engine.start(cid)
        yield cid
    finally:
        engine.remove_container(cid)
    assert engine.inspect_container(cname) is None


def test_exec_as_user_with_stdin(engine, idle):
    assert engine.inspect_container(idle).state == "running"
    io_ = Captured(stdin=b"piped input\n")
    try:
        code = engine.exec(
            idle,
            ["sh", "-c", "id -un; pwd; echo $GREETING; tr a-z A-Z; echo oops >&2; exit 4"],
            io_.stdio,
            user="user",
            workdir="/tmp",
            env={"GREETING": "hi"},
        )
        assert code == 4
        assert io_.out() == b"user\n/tmp\nhi\nPIPED INPUT\n"
        assert io_.err() == b"oops\n"
    finally:
        io_.close()


def test_exec_without_stdin_gets_eof(engine, idle):
    io_ = Captured(stdin=None)
    try:
        assert engine.exec(idle, ["sh", "-c", "cat; echo done"], io_.stdio) == 0
        assert io_.out() == b"done\n"
    finally:
        io_.close()


def test_exec_with_a_tty(engine, idle):
    master, stdin = sized_pty(33, 111)
    io_ = Captured(tty=True)
    io_.stdio.stdin = stdin
    try:
        code = engine.exec(idle, ["sh", "-c", f"{WAIT_FOR_SIZE}; exit 6"], io_.stdio, user="user")
        assert code == 6
        assert io_.out() == b"33 111\r\n"
    finally:
        io_.close()
        stdin.close()
        os.close(master)


def test_pause_stop_and_kill(engine, home, image):
    cname = name(home, "life")
    spec = ContainerSpec(
        name=cname, image=image, command=("sleep", "infinity"), labels=labels(home, "app"), network="none"
    )
    try:
        cid = engine.create_container(spec)
        engine.start(cid)
        engine.pause(cid)
        assert engine.inspect_container(cid).state == "paused"
        engine.unpause(cid)
        assert engine.inspect_container(cid).state == "running"
        engine.stop(cid, timeout=1)
        assert engine.inspect_container(cid).state == "exited"
        engine.start(cid)
        engine.kill(cid)
        assert engine.inspect_container(cid).state in ("exited", "stopped")
    finally:
        engine.remove_container(cname)


def test_named_network_is_joined(engine, home, image):
    nname, cname = name(home, "lan"), name(home, "lan-c")
    io_ = Captured()
    try:
        net = engine.create_network(nname, labels(home, "net"))
        cid = engine.create_container(
            ContainerSpec(
                name=cname,
                image=image,
                command=("cat", "/proc/net/route"),
                labels=labels(home, "app"),
                network=nname,
            )
        )
        assert engine.attach_and_start(cid, io_.stdio) == 0
        # The sandbox has a route for the network's subnet through eth0.
        subnet_hex = "".join(f"{int(b):02X}" for b in reversed(net.subnets[0].split("/")[0].split(".")))
        assert any(line.split()[:2] == [b"eth0", subnet_hex.encode()] for line in io_.out().splitlines()[1:])
    finally:
        io_.close()
        engine.remove_container(cname)
        engine.remove_network(nname)


@pytest.fixture
def image_refs(engine, home):
    """Unique image names for one test; whatever it made is removed."""
    refs: list[str] = []

    def make(kind: str) -> str:
        ref = f"localhost/qlite-test/docker-{home.hash}-{kind}:{len(refs) + 1}"
        refs.append(ref)
        return ref

    yield make
    for ref in reversed(refs):
        engine.remove_image(ref)
        assert engine.inspect_image(ref) is None


def test_import_build_tag_and_commit(engine, home, image, tmp_path, image_refs):
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        data = b"imported\n"
        member = tarfile.TarInfo("etc/qlite-imported")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    lines: list[str] = []

    base_ref = image_refs("import")
    base_id = engine.import_rootfs(str(tar), base_ref, lines.append)
    assert engine.inspect_image(base_ref).id == base_id and not base_id.startswith("sha256:")
    assert base_ref in engine.inspect_image(base_id).tags

    # The Containerfile lies outside the context, as the guest-tools one does.
    context = tmp_path / "context"
    context.mkdir()
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text("ARG BASE\nFROM $BASE\nARG FLAVOUR=plain\nLABEL qlite.flavour=$FLAVOUR\n")
    built_ref = image_refs("build")
    lines.clear()
    built_id = engine.build_image(
        str(containerfile),
        str(context),
        built_ref,
        {"BASE": base_ref, "FLAVOUR": "spicy"},
        {"qlite.template": "dk-test", "qlite.home": home.hash},
        lines.append,
    )
    built = engine.inspect_image(built_ref)
    assert built.id == built_id
    assert built.labels["qlite.flavour"] == "spicy" and built.labels["qlite.template"] == "dk-test"
    assert any("FROM" in line for line in lines)
    assert [i.id for i in engine.list_images(built_ref.rsplit(":", 1)[0])] == [built_id]

    # A Containerfile inside its context, which the build can COPY from.
    (context / "greeting.txt").write_text("copied in\n")
    (context / "Containerfile").write_text("ARG BASE\nFROM $BASE\nCOPY greeting.txt /greeting.txt\n")
    copied_ref = image_refs("copy")
    copied_id = engine.build_image(
        str(context / "Containerfile"),
        str(context),
        copied_ref,
        {"BASE": image},
        {},
        lines.append,
    )
    cname = name(home, "copy")
    io_ = Captured()
    try:
        cid = engine.create_container(
            ContainerSpec(
                name=cname,
                image=copied_id,
                command=("cat", "/greeting.txt"),
                labels=labels(home, "app"),
            )
        )
        assert engine.attach_and_start(cid, io_.stdio) == 0
        assert io_.out() == b"copied in\n"
    finally:
        io_.close()
        engine.remove_container(cname)

    tagged = image_refs("tag")
    engine.tag_image(built_id, tagged)
    assert tagged in engine.inspect_image(built_id).tags
    engine.untag_image(tagged)
    assert engine.inspect_image(tagged) is None
    assert engine.inspect_image(built_id) is not None  # still named by built_ref

    with pytest.raises(EngineError, match="docker build of"):
        containerfile.write_text("FROM localhost/qlite-test/nothing:1\n")
        engine.build_image(str(containerfile), str(context), image_refs("broken"), {}, {}, lines.append)


def test_commit_and_update_image(engine, home, image, image_refs):
    lines: list[str] = []
    ref = image_refs("update")
    lab = labels(home, "template")
    update_name = f"qlite-{home.hash}-{QUBE}-update"
    new_id = engine.update_image(
        image,
        ["/bin/sh", "-c", "echo updating; echo warning >&2; id -u"],
        ref,
        lab,
        ["LABEL qlite.origin=update", f"LABEL qlite.parent={image}"],
        lines.append,
    )
    assert lines == ["updating", "warning", "0"]  # ran as root, output streamed
    new = engine.inspect_image(ref)
    assert new.id == new_id != image
    assert new.labels["qlite.origin"] == "update" and new.labels["qlite.parent"] == image
    assert engine.inspect_container(update_name) is None

    with pytest.raises(EngineError, match=r"template update failed \(exit 5\): broken"):
        engine.update_image(
            image, ["/bin/sh", "-c", "echo broken; exit 5"], image_refs("failed"), lab, [], lines.append
        )
    assert engine.inspect_container(update_name) is None

    cname = name(home, "commit")
    try:
        cid = engine.create_container(
            ContainerSpec(
                name=cname,
                image=new_id,
                command=("true",),
                labels=labels(home, "app"),
                network="none",
            )
        )
        committed = engine.commit(cid, image_refs("commit"), ["LABEL qlite.committed=yes"])
        assert engine.inspect_image(committed).labels["qlite.committed"] == "yes"
    finally:
        engine.remove_container(cname)


def test_cli_disposable_through_docker_engine(home, sock):
    before = home.leftovers()
    env = {"QLITE_ENGINE": "docker", "QLITE_DOCKER_HOST": sock, "QLITE_DOCKER_RUNTIME": ""}
    proc = home.run(
        "run",
        "--disposable",
        "--",
        "sh",
        "-c",
        "cat /proc/version; exit 3",
        input=b"",
        check=False,
        env=env,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith(GVISOR_KERNEL), proc.stdout
    assert home.leftovers() == before


def test_cli_reports_an_unreachable_docker_engine(home, tmp_path):
    env = {"QLITE_ENGINE": "docker", "QLITE_DOCKER_HOST": f"unix://{tmp_path / 'no.sock'}", "QLITE_DOCKER_RUNTIME": ""}
    proc = home.run("run", "--disposable", "--", "true", input=b"", check=False, env=env)
    assert proc.returncode == 125
    assert b"cannot reach the Docker engine" in proc.stderr
    assert proc.stderr.count(b"\n") == 1, proc.stderr  # one line, no traceback
