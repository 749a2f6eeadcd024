"""VM-mode qubes on real QEMU (TCG here: this host's /dev/kvm cannot run a
standard guest), with the real agent, supervisor, podman network holder,
nftables firewall and RPC broker."""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import podman_objects
from tests.integration.nethosts import NetHosts, probe

pytestmark = pytest.mark.integration

WAIT_S = 60


@pytest.fixture(scope="module")
def vm(home):
    """vmq (a VM qube) and ctr (a container qube), both running, under a
    daemon, with file copies between them allowed."""
    home.run("daemon", "stop")
    home.run("daemon", "start")
    (home.path / "policy.d").mkdir(exist_ok=True)
    (home.path / "policy.d" / "30-vm.policy").write_text(
        textwrap.dedent("""\
        qubes.Filecopy * ctr vmq allow
        qubes.Filecopy * vmq ctr allow
    """)
    )
    home.run("create", "vmq", "--label", "blue", "--mode", "vm")
    home.run("create", "ctr", "--label", "green")
    home.run("start", "vmq", "ctr", timeout=600)
    yield home
    home.run("daemon", "stop")


@pytest.fixture(scope="module")
def hosts(home):
    h = NetHosts(home.path)
    yield h
    h.destroy()


def run_dir(home, qube: str) -> Path:
    return home.path / "run" / "vm" / qube


def pid_of(home, qube: str, what: str) -> int:
    return int((run_dir(home, qube) / f"{what}.pid").read_text())


def state(home, qube: str) -> str:
    return next(r["state"] for r in home.json("ls") if r["name"] == qube)


def wait_state(home, qube: str, wanted: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if state(home, qube) == wanted:
            return
        time.sleep(0.5)
    raise AssertionError(f"{qube} did not become {wanted}; it is {state(home, qube)}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return status != "Z"


def holder_containers(home, qube: str) -> list[str]:
    return podman_objects(f"qlite.home={home.hash}", f"qlite.qube={qube}")["containers"]


def test_a_vm_qube_runs_on_its_own_kernel_with_the_agent_as_pid_1(vm):
    row = next(r for r in vm.json("ls") if r["name"] == "vmq")
    assert (row["mode"], row["state"]) == ("vm", "Running")
    out = vm.run("run", "vmq", "--", "sh", "-c", "uname -r; tr '\\0' ' ' </proc/1/cmdline; echo; id -un").stdout
    kernel, pid1, user = out.splitlines()
    assert kernel != platform.release() and kernel.endswith("-cloud-amd64")
    assert "qlite_guest.vmagent" in pid1
    assert user == "user"
    # The same template as container qubes: the guest tools are there.
    assert vm.run("run", "vmq", "--", "sh", "-c", "command -v qvm-copy").stdout.strip()


def test_stdio_and_exit_codes_pass_through(vm):
    proc = vm.run("run", "vmq", "--", "sh", "-c", "cat; echo err >&2; exit 7", input="line one\n", check=False)
    assert proc.returncode == 7
    assert proc.stdout == "line one\n" and proc.stderr.strip().endswith("err")
    big = os.urandom(300_000).hex()  # several frames each way
    out = vm.run("run", "vmq", "--", "sh", "-c", "cat | sha256sum", input=big).stdout.split()[0]
    assert out == hashlib.sha256(big.encode()).hexdigest()
    missing = vm.run("run", "vmq", "--", "no-such-command", check=False)
    assert missing.returncode == 127


def test_a_command_that_cannot_run_and_ctrl_c(vm):
    """127 and 126 with podman's one line, and SIGINT to qlite stops the
    command in the VM (the agent signals its process group)."""
    missing = vm.run("run", "vmq", "--", "no-such-command", check=False)
    assert (missing.returncode, missing.stderr) == (127, "qlite: no-such-command: executable file not found in $PATH\n")
    plain = vm.run("run", "vmq", "--", "/etc/passwd", check=False)
    assert (plain.returncode, plain.stderr) == (126, "qlite: /etc/passwd: permission denied (not an executable file)\n")
    p = vm.popen(
        "run", "vmq", "--", "sh", "-c", "echo started; sleep 29", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert p.stdout.readline() == b"started\n"
        # Until sleep runs, a Ctrl-C would reach the shell alone (as at a terminal).
        deadline = time.monotonic() + WAIT_S
        while vm.run("run", "vmq", "--", "pgrep", "-f", "sleep 29", check=False).returncode != 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        start = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 128 + signal.SIGINT and time.monotonic() - start < 10
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert vm.run("run", "vmq", "--", "pgrep", "-f", "sleep 29", check=False).returncode == 1  # nothing left


def test_private_data_persists_and_the_root_filesystem_is_fresh_each_boot(vm):
    vm.run("run", "vmq", "--", "sh", "-c", "echo kept > ~/kept.txt")
    vm.run("run", "-u", "root", "vmq", "--", "sh", "-c", "echo gone > /etc/scratch; echo gone > /tmp/t")
    vm.run("shutdown", "vmq", timeout=120)
    assert state(vm, "vmq") == "Halted"
    assert not holder_containers(vm, "vmq")
    assert not (run_dir(vm, "vmq") / "root.qcow2").exists()
    vm.run("start", "vmq", timeout=600)
    out = vm.run("run", "vmq", "--", "sh", "-c", "cat ~/kept.txt; ls /etc/scratch /tmp/t 2>&1 | wc -l").stdout
    assert out.split() == ["kept", "2"]  # two "No such file" lines


def test_pause_and_resume_go_through_qmp(vm):
    from qlite.engines.qemu import Qmp

    qmp = Qmp(run_dir(vm, "vmq") / "qmp.sock", "vmq")
    vm.run("pause", "vmq")
    try:
        assert state(vm, "vmq") == "Paused"
        assert qmp.status() == "paused"
        refused = vm.run("run", "vmq", "--", "true", check=False)
        assert refused.returncode != 0 and "paused" in refused.stderr
    finally:
        vm.run("unpause", "vmq")
    assert qmp.status() == "running"
    assert vm.run("run", "vmq", "--", "echo", "awake").stdout.strip() == "awake"


def test_file_copy_over_rpc_container_to_vm_and_back(vm):
    out = vm.run("run", "ctr", "--", "sh", "-c", "echo from-ctr > a.txt; qvm-copy-to-vm vmq a.txt; echo rc=$?").stdout
    assert "rc=0" in out
    assert vm.run("run", "vmq", "--", "cat", "QubesIncoming/ctr/a.txt").stdout == "from-ctr\n"
    out = vm.run("run", "vmq", "--", "sh", "-c", "echo from-vm > b.txt; qvm-copy-to-vm ctr b.txt; echo rc=$?").stdout
    assert "rc=0" in out
    assert vm.run("run", "ctr", "--", "cat", "QubesIncoming/vmq/b.txt").stdout == "from-vm\n"
    # The broker saw each call from the qube it came from.
    calls = [r for r in vm.json("log", "rpc", "-n", "100") if r.get("decision") == "done"]
    assert {(r["source"], r["resolved"]) for r in calls} >= {("ctr", "vmq"), ("vmq", "ctr")}
    # Not allowed the other way round for an unlisted pair: the VM's calls meet the policy too.
    denied = vm.run("run", "vmq", "--", "sh", "-c", "qvm-copy-to-vm default-dvm b.txt; echo rc=$?", check=False)
    assert "rc=0" not in denied.stdout


def test_a_disposable_vm_runs_one_command_and_leaves_nothing(vm):
    proc = vm.run(
        "run",
        "--disposable",
        "--mode",
        "vm",
        "--",
        "sh",
        "-c",
        "uname -r; echo $QLITE_QUBE; exit 3",
        check=False,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr
    kernel, name = proc.stdout.split()
    assert kernel.endswith("-cloud-amd64") and name.startswith("disp")
    assert not any(r["name"] == name for r in vm.json("ls"))
    assert not run_dir(vm, name).exists()
    assert not any(vm.disposable_leftovers().values())


def test_kill_9_of_qemu_is_detected_and_reconciled(vm):
    qemu, sup = pid_of(vm, "vmq", "qemu"), pid_of(vm, "vmq", "supervisor")
    os.kill(qemu, signal.SIGKILL)
    wait_state(vm, "vmq", "Halted")
    deadline = time.monotonic() + WAIT_S
    while (alive(sup) or holder_containers(vm, "vmq")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(sup) and not holder_containers(vm, "vmq")
    assert not (run_dir(vm, "vmq") / "root.qcow2").exists()
    vm.run("start", "vmq", timeout=600)
    assert vm.run("run", "vmq", "--", "cat", "kept.txt").stdout == "kept\n"


def test_kill_9_of_the_supervisor_takes_qemu_with_it_and_reconcile_cleans_up(vm):
    qemu, sup = pid_of(vm, "vmq", "qemu"), pid_of(vm, "vmq", "supervisor")
    os.kill(sup, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(qemu)
    assert state(vm, "vmq") == "Halted"
    assert holder_containers(vm, "vmq")  # nobody was left to remove it...
    report = vm.json("reconcile")
    assert any("vmq" in c for c in report["containers"])  # ...until reconciliation
    assert not holder_containers(vm, "vmq")
    vm.run("start", "vmq", timeout=600)
    assert state(vm, "vmq") == "Running"


def test_the_firewall_and_isolation_apply_to_a_vm_qube(vm, hosts):
    h1 = hosts.new().listen(8001, 8002)
    vm.run(
        "firewall",
        "vmq",
        "add",
        "action=accept",
        f"dsthost={h1.address}",
        "proto=tcp",
        "dstports=8001",
        "--before",
        "0",
    )
    vm.run("firewall", "vmq", "add", "action=drop", "--before", "1")
    try:
        ctr_ip = vm.json("prefs", "ctr")["ip"]
        assert ctr_ip
        result = probe(vm, "vmq", [(h1.address, 8001), (h1.address, 8002), (ctr_ip, 7000)])
        assert result[f"{h1.address}:8001"] == "hello 8001"
        assert result[f"{h1.address}:8002"] == "blocked"
        assert result[f"{ctr_ip}:7000"] == "blocked"  # not even "refused": nothing reaches ctr
    finally:
        vm.run("firewall", "vmq", "reset")
    assert probe(vm, "vmq", [(h1.address, 8002)])[f"{h1.address}:8002"] == "hello 8002"


def test_block_devices_hot_plug_into_a_q35_vm_over_qmp(vm, tmp_path):
    from qlite.core.qubes import QubeManager
    from qlite.domain.context import Context
    from qlite.errors import InvalidValue
    from qlite.paths import Paths

    vm.run("create", "vmh", "--label", "gray", "--mode", "vm", "--netvm", "none")
    vm.run("features", "vmh", "vm.machine", "q35")
    vm.run("start", "vmh", timeout=600)
    disk = tmp_path / "stick.img"
    disk.write_bytes(b"QLITE-HOTPLUG-MARK" + bytes(16 * 1024 * 1024 - 18))
    qm = QubeManager(Context(Paths(vm.path)))
    try:
        with pytest.raises(InvalidValue, match="no hot-plug"):
            qm.vm.attach_block(qm.get("vmq"), "stick", str(disk), read_only=True)
        qm.vm.attach_block(qm.get("vmh"), "stick", str(disk), read_only=True)
        read = "for i in $(seq 50); do [ -b /dev/vdc ] && break; sleep 0.2; done; head -c 18 /dev/vdc"
        assert vm.run("run", "-u", "root", "vmh", "--", "sh", "-c", read).stdout == "QLITE-HOTPLUG-MARK"
        qm.vm.detach_block(qm.get("vmh"), "stick")
        gone = "for i in $(seq 50); do [ -b /dev/vdc ] || break; sleep 0.2; done; ls /sys/block"
        assert "vdc" not in vm.run("run", "vmh", "--", "sh", "-c", gone).stdout.split()
    finally:
        vm.run("shutdown", "vmh", timeout=120)
        vm.run("remove", "vmh")


def test_vm_mode_refusals_leave_things_as_they_were(vm):
    gw = vm.run("prefs", "vmq", "provides_network", "true", check=False)
    assert gw.returncode != 0 and "VM-mode" in gw.stderr
    vm.run("shutdown", "vmq", timeout=120)
    back = vm.run("prefs", "vmq", "mode", "container", check=False)
    assert back.returncode != 0 and "never mounts" in back.stderr
    assert next(r for r in vm.json("ls") if r["name"] == "vmq")["mode"] == "vm"
    vm.run("start", "vmq", timeout=600)
