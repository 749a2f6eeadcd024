"""``qlite doctor``: what this host can do, and the fix for what it cannot."""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass

from qlite.core.qubes import QubeManager
from qlite.core.templates import TemplateManager
from qlite.domain.context import Context
from qlite.domain.prefs import GlobalPrefs
from qlite.errors import QliteError
from qlite.paths import Paths
from qlite.runtime.command import run_tool
from qlite.runtime.hostpodman import HostPodman, dropin_state, read_host
from qlite.runtime.kvm import probe_kvm
from qlite.vm.kernel import BUSYBOX, PACKAGE_CACHE

OK, WARN, FAIL = "ok", "warn", "fail"
VERSION_TIMEOUT_S = 30


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_json(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def run_checks(ctx: Context, kvm: bool = True) -> list[Check]:
    checks = [check_podman(), *check_runsc(ctx)]
    checks.append(check_service(ctx))
    checks.append(check_host_podman(ctx.paths))
    checks.append(check_tool("mmdebstrap", "builds template root filesystems", "apt install mmdebstrap"))
    checks.append(check_vm_tools())
    if kvm:
        checks.append(check_kvm())
    checks.append(check_tpm())
    checks.extend(check_setup(ctx))
    return checks


def check_podman() -> Check:
    podman = shutil.which("podman")
    if not podman:
        return Check("podman", FAIL, "podman is not installed", "run setup.sh (or apt install podman)")
    try:
        out = run_tool([podman, "--version"], "podman --version", VERSION_TIMEOUT_S, check=False).stdout.strip()
    except QliteError as exc:  # a podman that cannot say its version cannot run qubes either
        return Check("podman", FAIL, str(exc), "run setup.sh (or apt install podman)")
    version = out.rsplit(" ", 1)[-1] if out else "unknown"
    return Check("podman", OK, f"podman {version}")


def check_host_podman(paths: Paths, host: HostPodman | None = None) -> Check:
    """Whether the host's podman tools see what qlite runs."""
    host = host if host is not None else read_host()
    installed, netavark = dropin_state(paths)
    if not installed:
        return Check(
            "host-podman",
            WARN,
            f"{paths.podman_dropin} is missing or out of date: the host's podman tools may not "
            "list qlite's networks or know its runsc runtimes",
            "run qlite setup",
        )
    if not netavark:
        why = host.cni_in_use or "the host's podman was left on CNI"
        return Check(
            "host-podman",
            WARN,
            f"{why}: 'podman network ls' on the host does not list qlite's networks (qlite itself "
            "works: its service uses netavark)",
            "qlite setup --force switches the host's podman to netavark",
        )
    return Check(
        "host-podman",
        OK,
        f"the host's podman tools see qlite's qubes (netavark, qlite's runtimes; {paths.podman_dropin})",
    )


def check_runsc(ctx: Context) -> list[Check]:
    probe = ctx.runtime_probe
    if probe is None:
        return [Check("runsc", FAIL, "runsc (gVisor) is not installed", "run setup.sh (or apt install runsc)")]
    checks = []
    if not probe.platform:
        checks.append(
            Check(
                "runsc",
                FAIL,
                f"runsc {probe.version} cannot start a sandbox on any platform (systrap, ptrace)",
                "check that the kernel allows ptrace and seccomp; see the runsc log in the podman log",
            )
        )
        return checks
    plat_note = "" if probe.platform == "systrap" else " (systrap is preferred; install a newer runsc)"
    checks.append(
        Check(
            "runsc",
            OK if probe.platform == "systrap" else WARN,
            f"runsc {probe.version}, platform {probe.platform}{plat_note}",
            "" if probe.platform == "systrap" else "run setup.sh to get runsc from bookworm-backports",
        )
    )
    if probe.netstack:
        checks.append(Check("netstack", OK, "gVisor netstack works: qubes' network stack runs inside the sandbox"))
    else:
        checks.append(
            Check(
                "netstack",
                WARN,
                "GVISOR NETSTACK DOES NOT WORK ON THIS KERNEL: networked qubes run with runsc "
                "--network=host inside their own network namespace (netpath host-netns). They are still "
                "isolated from each other and the host's interfaces, but their traffic is handled by the "
                f"host kernel's network stack, not gVisor's. ({probe.netstack_error})",
                "install gVisor release-20241118 or newer (not yet packaged by Debian 12); "
                "qlite uses netstack automatically once it works",
            )
        )
    return checks


def check_service(ctx: Context) -> Check:
    try:
        version = ctx.engine.version()
    except QliteError as exc:
        return Check("engine", FAIL, str(exc), "see the podman log in $QLITE_HOME/log/podman.log")
    return Check(
        "engine",
        OK,
        f"{ctx.engine.name} service answers (API {version}) at {ctx.paths.podman_sock}"
        if ctx.engine.managed_by_qlite
        else f"{ctx.engine.name} answers (version {version})",
    )


def check_tool(name: str, why: str, fix: str) -> Check:
    if shutil.which(name):
        return Check(name, OK, f"{name} is installed ({why})")
    return Check(name, FAIL, f"{name} is missing; it {why}", fix)


def check_vm_tools() -> Check:
    """What VM-mode qubes need besides KVM: QEMU, the disk tools, busybox
    for the initramfs, and the kernel package (setup fetches it)."""
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "modinfo", "tc") if not shutil.which(t)]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    if missing:
        return Check("vm", FAIL, f"VM-mode qubes cannot start: missing {', '.join(missing)}", "run setup.sh")
    debs = sorted(PACKAGE_CACHE.glob("linux-image-*.deb"))
    if not debs:
        return Check(
            "vm",
            WARN,
            "the VM kernel package is not fetched yet; the first VM start fetches it",
            "run setup.sh (or qlite setup)",
        )
    return Check("vm", OK, f"QEMU, disk tools and the VM kernel ({debs[-1].name.split('_')[0]}) are ready")


def check_kvm() -> Check:
    result = probe_kvm()
    if result.usable:
        return Check("kvm", OK, result.detail)
    if not result.present:
        return Check(
            "kvm",
            WARN,
            "no /dev/kvm: VM-mode qubes would run under slow TCG emulation",
            "enable virtualisation (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd",
        )
    return Check(
        "kvm",
        WARN,
        result.detail + "; VM-mode qubes would fall back to TCG emulation",
        "on a laptop, enable VT-x/AMD-V in the firmware; in a VM, enable nested virtualisation",
    )


def check_tpm() -> Check:
    devices = sorted(glob.glob("/dev/tpmrm*") + glob.glob("/dev/tpm[0-9]*"))
    if devices:
        return Check("tpm", OK, f"TPM present ({', '.join(devices)})")
    return Check(
        "tpm",
        WARN,
        "no TPM found: anti-evil-maid sealing would fall back to a passphrase",
        "enable the TPM (fTPM/PTT) in the firmware",
    )


def check_setup(ctx: Context) -> list[Check]:
    checks = []
    try:
        prefs = GlobalPrefs(ctx.store)
        template = prefs.get("default_template")
        dvm = prefs.get("default_dispvm")
        tm = TemplateManager(ctx)
        if template and tm.exists(template) and tm.get(template).current:
            checks.append(Check("template", OK, f"default template {template} is built"))
        else:
            checks.append(Check("template", FAIL, "the default template is not built", "run setup.sh (or qlite setup)"))
        if dvm and QubeManager(ctx).exists(dvm):
            checks.append(Check("default_dispvm", OK, f"disposables start from {dvm}"))
        else:
            checks.append(
                Check("default_dispvm", FAIL, "no default disposable template", "run setup.sh (or qlite setup)")
            )
    except QliteError as exc:
        checks.append(Check("state", FAIL, str(exc), f"check {ctx.paths.db}"))
    if os.geteuid() != 0:
        checks.append(Check("root", WARN, "qlite runs podman and runsc as root; run it as root", "use sudo"))
    return checks
