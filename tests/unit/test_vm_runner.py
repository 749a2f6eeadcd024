"""VmRunner over the Hypervisor seam: what it asks of QEMU and what it
keeps in the run directory, without QEMU or root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlite.core.qubes import QubeManager
from qlite.domain.context import Context
from qlite.engines.base import ContainerInfo
from qlite.errors import InvalidValue, StateError
from qlite.vm.qemu_args import HOTPLUG_PORTS, VmConfig, hotplug_bus
from qlite.vm.runner import MACHINE_FEATURE, SUPERVISOR_MODULE, VmRunner
from tests.unit.conftest import insert_row


class FakeQmp:
    def __init__(self, calls: list, qube: str):
        self.calls, self.qube = calls, qube

    def status(self) -> str:
        return "running"

    def pause(self) -> None:
        self.calls.append(("pause", self.qube))

    def resume(self) -> None:
        self.calls.append(("resume", self.qube))

    def powerdown(self) -> None:
        self.calls.append(("powerdown", self.qube))

    def quit(self) -> None:
        self.calls.append(("quit", self.qube))

    def attach_block(self, node: str, path: str, read_only: bool, bus: str) -> None:
        self.calls.append(("attach", node, path, read_only, bus))

    def detach_block(self, node: str) -> None:
        self.calls.append(("detach", node))


class FakeBoot:
    def __init__(self, pid: int, answer: str, seen: list, pidfile: Path):
        self.pid, self._answer, self.seen, self.pidfile = pid, answer, seen, pidfile

    def answer(self) -> str:
        self.seen.append(("answer", self.pidfile.exists()))
        return self._answer


class FakeHypervisor:
    def __init__(self, answer: str = "ok"):
        self.calls: list = []
        self.answer = answer

    def control(self, qmp_socket: Path, qube: str) -> FakeQmp:
        self.calls.append(("qmp", qmp_socket.name))
        return FakeQmp(self.calls, qube)

    def start_supervisor(self, module: str, config: Path, log: Path) -> FakeBoot:
        self.calls.append(("start", module, config.name, log.name))
        return FakeBoot(4242, self.answer, self.calls, config.parent / "supervisor.pid")


@pytest.fixture
def vm(paths, engine, ctx):
    hv = FakeHypervisor()
    vctx = Context(
        paths,
        engine=engine,
        store=ctx.store,
        net_apply=ctx.net_apply,
        mounts=ctx.mounts,
        daemon=ctx.daemon,
        runtime_probe=ctx.runtime_probe,
        hypervisor=hv,
        clock=ctx.clock,
    )
    qm = QubeManager(vctx)
    q = insert_row(qm, "work", mode="vm")
    runner = VmRunner(vctx, qm)
    runner.run_dir(q).mkdir(parents=True)
    return runner, q, hv


def test_pause_and_resume_go_to_qemu_and_mark_the_run_directory(vm):
    runner, q, hv = vm
    runner.pause(q)
    assert (runner.run_dir(q) / "paused").exists()
    runner.resume(q)
    assert not (runner.run_dir(q) / "paused").exists()
    assert [c for c in hv.calls if c[0] != "qmp"] == [("pause", "work"), ("resume", "work")]
    assert ("qmp", "qmp.sock") in hv.calls


def test_hot_plug_takes_the_first_free_port_and_gives_it_back(vm):
    runner, q, hv = vm
    runner.qubes.features.set(q.name, MACHINE_FEATURE, "q35")
    assert runner.attach_block(q, "d1", "/dev/sdz", True) == hotplug_bus(0)
    assert runner.attach_block(q, "d2", "/dev/sdy", False) == hotplug_bus(1)
    with pytest.raises(InvalidValue, match="already has a device 'd1'"):
        runner.attach_block(q, "d1", "/dev/sdx", True)
    runner.supervisor_pid = lambda _q: 4242  # detaching asks QEMU only while the VM lives
    runner.detach_block(q, "d1")
    assert runner.attach_block(q, "d3", "/dev/sdw", True) == hotplug_bus(0)  # d1's port, free again
    assert [c for c in hv.calls if c[0] in ("attach", "detach")] == [
        ("attach", "d1", "/dev/sdz", True, hotplug_bus(0)),
        ("attach", "d2", "/dev/sdy", False, hotplug_bus(1)),
        ("detach", "d1"),
        ("attach", "d3", "/dev/sdw", True, hotplug_bus(0)),
    ]


def test_hot_plug_needs_q35_and_a_free_port(vm):
    runner, q, hv = vm
    with pytest.raises(InvalidValue, match="boots on microvm, which has no hot-plug"):
        runner.attach_block(q, "d1", "/dev/sdz", True)
    runner.qubes.features.set(q.name, MACHINE_FEATURE, "q35")
    for i in range(HOTPLUG_PORTS):
        runner.attach_block(q, f"d{i}", f"/dev/x{i}", True)
    with pytest.raises(StateError, match=f"has no free hot-plug port \\(it has {HOTPLUG_PORTS}\\)"):
        runner.attach_block(q, "one-more", "/dev/y", True)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="setup.sh installs QEMU")
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("ok", None),
        ("error the agent did not start in time", "did not boot: the agent did not start in time"),
        ("", "did not boot: no answer"),
    ],
)
def test_a_boot_is_the_supervisors_answer(vm, answer, error):
    runner, q, hv = vm
    hv.answer = answer
    d = runner.run_dir(q)
    (d / "console.log").write_text("early boot\nKernel panic - not syncing\n")
    cfg = VmConfig(
        name=q.name,
        machine="microvm",
        accel="tcg",
        memory_mib=256,
        vcpus=1,
        kernel="/k",
        initrd="/i",
        root_overlay=str(d / "root.qcow2"),
        private_disk="/p",
        qmp_socket=str(d / "qmp.sock"),
        agent_socket=str(d / "agent-qemu.sock"),
        console_log=str(d / "console.log"),
        pidfile=str(d / "qemu.pid"),
        net=None,
    )
    holder = ContainerInfo(id="h1", name="holder", state="running", labels={})
    if error is None:
        runner._launch(q, cfg, holder)
    else:
        with pytest.raises(StateError, match=f"^VM qube work {error} \\(console: Kernel panic - not syncing\\)$"):
            runner._launch(q, cfg, holder)
    assert ("start", SUPERVISOR_MODULE, "vm.json", "vm-work.log") in hv.calls
    assert ("answer", True) in hv.calls  # the pid was written before the wait for the answer
    assert (d / "supervisor.pid").read_text() == "4242\n"
