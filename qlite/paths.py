"""Every path qlite uses, in one place.

QLITE_HOME relocates everything that belongs to one qlite installation
(database, sockets, logs, generated config), so tests are hermetic. The
podman image store is shared by all homes, so templates are built once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/qlite")
DEFAULT_POLICY_DIR = Path("/etc/qlite/policy.d")
# Machine-wide: the runsc wrappers every podman on this host knows as
# qlite's runtimes, and the one drop-in that extends the host's podman
# configuration (netavark, and those runtimes), so that the host's own
# podman tools see and can handle what qlite runs.
HOST_LIB_DIR = Path("/usr/local/lib/qlite")
PODMAN_DROPIN = Path("/etc/containers/containers.conf.d/50-qlite.conf")
# Where the repository's data lives (images/, runsc-config/, policies/,
# Containerfile, guest/). qlite is installed editable from the checkout.
SHARE_DIR = Path(os.environ.get("QLITE_SHARE", Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Paths:
    home: Path
    host_lib_dir: Path = HOST_LIB_DIR
    podman_dropin: Path = PODMAN_DROPIN

    @classmethod
    def from_env(cls) -> Paths:
        # Resolved either way, so that nothing (the policy directory, the
        # labels' home hash) depends on whether QLITE_HOME names the default.
        return cls(Path(os.environ.get("QLITE_HOME") or DEFAULT_HOME).resolve())

    @property
    def is_default_install(self) -> bool:
        """The default install: a home whose real path is /var/lib/qlite,
        whether or not QLITE_HOME says so."""
        return os.path.realpath(self.home) == os.path.realpath(DEFAULT_HOME)

    @property
    def home_hash(self) -> str:
        """Short, stable id of this home; it labels every engine object."""
        return hashlib.sha256(str(self.home).encode()).hexdigest()[:10]

    @property
    def db(self) -> Path:
        return self.home / "qlite.db"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def podman_sock(self) -> Path:
        return self.run_dir / "podman.sock"

    @property
    def podman_pidfile(self) -> Path:
        return self.run_dir / "podman.pid"

    @property
    def podman_log(self) -> Path:
        return self.log_dir / "podman.log"

    @property
    def containers_conf(self) -> Path:
        return self.run_dir / "containers.conf"

    @property
    def probe_file(self) -> Path:
        return self.run_dir / "probe.json"

    @property
    def service_lock(self) -> Path:
        return self.run_dir / "service.lock"

    @property
    def tables_lock(self) -> Path:
        return self.run_dir / "nft.lock"

    @property
    def rpc_log(self) -> Path:
        return self.log_dir / "rpc.jsonl"

    @property
    def policy_dir(self) -> Path:
        """The admin's policy files: /etc/qlite/policy.d for the default
        install, the home's own policy.d for any other home."""
        return DEFAULT_POLICY_DIR if self.is_default_install else self.home / "policy.d"

    @property
    def daemon_pidfile(self) -> Path:
        return self.run_dir / "daemon.pid"

    @property
    def daemon_lock(self) -> Path:
        return self.run_dir / "daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "daemon.log"

    @property
    def admin_sock(self) -> Path:
        return self.run_dir / "admin.sock"

    def agent_client_sock(self, qube: str) -> Path:
        """The daemon's socket for host clients of running container QUBE's agent."""
        return self.run_dir / "agents" / f"{qube}.sock"

    @property
    def cli_sock(self) -> Path:
        """Where the daemon serves ``qlite`` commands (qlite.served)."""
        return self.run_dir / "cli.sock"

    def devices_dir(self, qube: str) -> Path:
        """Where attached filesystems are mounted on the host; a container
        qube sees it at /mnt/removable (mounts propagate into it). It is a
        read-only bind of devices_points(QUBE), so the qube can create
        nothing in it; the host makes each mount point in the other one."""
        return self.run_dir / "devices" / qube

    def devices_points(self, qube: str) -> Path:
        """The directory behind devices_dir(QUBE), which no qube can reach."""
        return self.run_dir / "device-points" / qube

    @property
    def device_log(self) -> Path:
        return self.log_dir / "devices.jsonl"

    def rpc_dir(self, qube: str) -> Path:
        """Bind-mounted into QUBE at /run/qlite; the broker's socket for it."""
        return self.run_dir / "rpc" / qube

    @property
    def vm_dir(self) -> Path:
        return self.home / "vm"

    @property
    def vm_kernel_dir(self) -> Path:
        """The unpacked VM kernel package and its initramfs."""
        return self.vm_dir / "kernel"

    @property
    def vm_disk_dir(self) -> Path:
        """Read-only root disks, one per template image."""
        return self.vm_dir / "disks"

    def vm_run_dir(self, qube: str) -> Path:
        """A running VM's sockets, pidfiles and per-boot overlay."""
        return self.run_dir / "vm" / qube

    def runsc_wrapper(self, mode: str) -> Path:
        """The generated runsc wrapper for one mode ("qube" or "build").
        Machine-wide: the host's podman runs qlite's containers through it
        too (stop, rm), whichever home made them."""
        return self.host_lib_dir / f"runsc-{mode}"

    # Data shipped in the repository.
    @property
    def images_dir(self) -> Path:
        return SHARE_DIR / "images"

    @property
    def runsc_config_dir(self) -> Path:
        return SHARE_DIR / "runsc-config"

    @property
    def guest_dir(self) -> Path:
        return SHARE_DIR / "guest"

    @property
    def guest_containerfile(self) -> Path:
        return SHARE_DIR / "Containerfile"

    @property
    def shipped_policy_dir(self) -> Path:
        return SHARE_DIR / "policies"

    def ensure(self) -> None:
        for d in (self.home, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o711)


# The image store is shared by every home, so the lock that serialises
# template revision numbering lives outside any one home.
IMAGE_LOCK = Path("/run/lock/qlite-images.lock")
