"""The context every command receives: paths, the store and the engine.

Unit tests build it over a temporary QLITE_HOME with a fake engine;
integration tests and the CLI use the real one. The engine and the store
are created on first use, so commands that need neither stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from qlite.domain.spec import USER_UID
from qlite.engines.base import Engine
from qlite.errors import InvalidValue
from qlite.host.clock import SYSTEM_CLOCK
from qlite.paths import Paths

if TYPE_CHECKING:  # annotations only: every command imports this module
    from pathlib import Path

    from qlite.runtime.probe import RuntimeProbe
from qlite.state import Store
from qlite.state.qubes import QubeStore

ENGINES = ("podman", "docker")


# The host's side effects, each a seam: the real one is in qlite.host; unit
# tests give Context a fake of their own (tests/unit/fake_net.py).


class NetApply(Protocol):
    """The kernel's network state, on the host or in a qube's namespace."""

    def apply_nft(self, script: str, netns: str | None = None) -> None: ...

    def delete_table(self, table: str, netns: str | None = None) -> None: ...

    def enable_forwarding(self, netns: str) -> None: ...

    def set_default_route(self, netns: str, via: str) -> None: ...

    def loopback_up(self, netns: str) -> None: ...

    def interface_by_mac(self, netns: str, mac: str) -> str: ...

    def tap_mirror(self, netns: str, mac: str, tap: str) -> None: ...


class Mounts(Protocol):
    """Mounting on the host: attached drives and the devices directories."""

    def mountinfo(self) -> str: ...

    def is_mountpoint(self, path: Path) -> bool: ...

    def mount(self, device: str, target: Path, options: str) -> None: ...

    def bind_read_only_shared(self, source: Path, view: Path) -> None: ...

    def umount(self, target: Path, lazy: bool = False) -> None: ...

    def busy(self, device: str) -> bool: ...

    def sync(self) -> None: ...


class PrivateData(Protocol):
    """Laying out and copying private volumes on the host (qlite.host.volumes)."""

    def init(self, mountpoint: str) -> None: ...

    def copy(self, src_mountpoint: str, dst_mountpoint: str) -> None: ...


class BlockDevices(Protocol):
    """The host's block devices as the kernel (sysfs) and blkid see them.
    Reads only; every answer may be stale, as a drive can go at any time."""

    def names(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def attribute(self, name: str, attr: str) -> str: ...

    def holders(self, name: str) -> list[str]: ...

    def probe(self, path: str) -> dict[str, str]: ...


class Daemon(Protocol):
    """The control socket of this home's ``qlite daemon``."""

    def ensure(self) -> None: ...

    def running(self) -> bool: ...

    def notify(self, qube: str) -> None: ...

    def forget(self, uuid: str) -> None: ...


class VmControl(Protocol):
    """A running VM qube's QEMU (QMP)."""

    def status(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def powerdown(self) -> None: ...

    def quit(self) -> None: ...

    def attach_block(self, node: str, path: str, read_only: bool, bus: str) -> None: ...

    def detach_block(self, node: str) -> None: ...


class VmBoot(Protocol):
    """A VM qube's supervisor, started and not yet answered."""

    pid: int

    def answer(self) -> str:
        """ "ok", or "error WHY"; blocks until the supervisor says which."""


class Hypervisor(Protocol):
    """Starting VM qubes' supervisors (which start QEMU) and reaching QEMU."""

    def control(self, qmp_socket: Path, qube: str) -> VmControl: ...

    def start_supervisor(self, module: str, config: Path, log: Path) -> VmBoot: ...


class Tpm(Protocol):
    """A TPM 2.0 (anti-evil-maid): qlite's PCR, and secrets sealed to PCRs."""

    tcti: str  # where it is reached, as tpm2-tools name it

    def replay(self, events: list[bytes]) -> None:
        """Reset qlite's PCR and extend EVENTS (sha256 digests) into it."""

    def read(self, pcrs: list[int]) -> dict[int, str]: ...

    def seal(self, secret: bytes, pcrs: list[int]) -> tuple[bytes, bytes]:
        """SECRET sealed to the PCRs' values now: the (public, private) blobs."""

    def unseal(self, public: bytes, private: bytes, pcrs: list[int]) -> bytes:
        """The secret, if the PCRs hold what they held at sealing (else AccessDenied)."""


class Clock(Protocol):
    """Time, so that windows and expiries can be tested without sleeping them out."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class Context:
    def __init__(
        self,
        paths: Paths,
        engine: Engine | None = None,
        store: Store | None = None,
        *,
        net_apply: NetApply | None = None,
        mounts: Mounts | None = None,
        daemon: Daemon | None = None,
        runtime_probe: RuntimeProbe | None = None,
        private_volumes: PrivateData | None = None,
        clock: Clock | None = None,
        hypervisor: Hypervisor | None = None,
        tpm: Tpm | None = None,
        block_devices: BlockDevices | None = None,
    ) -> None:
        self.paths = paths
        self.warnings: list[str] = []
        # Where warnings go as they happen; the CLI prints them on stderr.
        self.on_warning: Callable[[str], object] | None = None
        # Where progress of long work goes (the CLI: stderr); silent by default.
        self.on_progress: Callable[[str], None] | None = None
        if engine is not None:
            self.__dict__["engine"] = engine
        if store is not None:
            self.__dict__["store"] = store
        for name, seam in (
            ("net_apply", net_apply),
            ("mounts", mounts),
            ("daemon", daemon),
            ("runtime_probe", runtime_probe),
            ("private_volumes", private_volumes),
            ("clock", clock),
            ("hypervisor", hypervisor),
            ("tpm", tpm),
            ("block_devices", block_devices),
        ):
            if seam is not None:
                self.__dict__[name] = seam  # instead of the real one, made on first use

    @classmethod
    def from_env(cls) -> Context:
        return cls(Paths.from_env())

    @cached_property
    def store(self) -> Store:
        self.paths.ensure()
        return Store(self.paths.db)

    @cached_property
    def qube_store(self) -> QubeStore:
        """The qube tables (qubes, tags, features, firewall, assignments)."""
        return QubeStore(self.store)

    @cached_property
    def engine(self) -> Engine:
        choice = os.environ.get("QLITE_ENGINE", "podman")
        if choice == "podman":
            from qlite.engines.podman import PodmanEngine  # noqa: PLC0415 - ~15 ms; only engine users pay it

            return PodmanEngine(self.paths)
        if choice == "docker":
            from qlite.engines.docker import DockerEngine  # noqa: PLC0415 - only QLITE_ENGINE=docker needs it

            return DockerEngine(self.paths, os.environ.get("QLITE_DOCKER_HOST"))
        raise InvalidValue(f"QLITE_ENGINE={choice!r}: expected one of {', '.join(ENGINES)}")

    def warn(self, message: str) -> None:
        """Something the user must know that did not stop the operation."""
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def progress(self, message: str) -> None:
        """A step of long work (downloads, exports), for the user to follow."""
        if self.on_progress is not None:
            self.on_progress(message)

    @property
    def home_hash(self) -> str:
        return self.paths.home_hash

    @cached_property
    def daemon(self) -> Daemon:
        """The seam to qlite daemon (the RPC broker) of this home."""
        from qlite.host.daemonctl import DaemonControl  # noqa: PLC0415 - ~3 ms; only commands that talk to the daemon

        return DaemonControl(self.paths)

    @cached_property
    def net_apply(self) -> NetApply:
        """The seam through which qlite changes the kernel's network state."""
        from qlite.host import nft  # noqa: PLC0415 - ~4 ms; only network changes need it

        return nft

    @cached_property
    def private_volumes(self) -> PrivateData:
        """The host's work on the qubes' private volumes."""
        from qlite.host.volumes import PrivateVolumes  # noqa: PLC0415 - ~3 ms; only commands that touch volumes

        return PrivateVolumes(USER_UID)

    @cached_property
    def hypervisor(self) -> Hypervisor:
        """The seam to VM qubes' processes and their QEMU."""
        from qlite.host.hypervisor import QemuHost  # noqa: PLC0415 - only VM qubes need it (ctypes)

        return QemuHost()

    @cached_property
    def tpm(self) -> Tpm | None:
        """The TPM anti-evil-maid seals to (None: there is none)."""
        from qlite.host.tpm import host_tpm  # noqa: PLC0415 - only anti-evil-maid needs it

        return host_tpm()

    @cached_property
    def clock(self) -> Clock:
        """Wall and monotonic time."""
        return SYSTEM_CLOCK

    @cached_property
    def block_devices(self) -> BlockDevices:
        """The seam through which qlite looks at the host's block devices."""
        from qlite.host.blockdev import HostBlockDevices  # noqa: PLC0415 - only device commands need it

        return HostBlockDevices()

    @cached_property
    def mounts(self) -> Mounts:
        """The seam through which qlite mounts on the host (devices)."""
        from qlite.host import mounts  # noqa: PLC0415 - only device commands need it

        return mounts

    @cached_property
    def runtime_probe(self) -> RuntimeProbe | None:
        """What runsc can do here, probed once per runsc (None: no runsc)."""
        from qlite.runtime.probe import probe  # noqa: PLC0415 - ~5 ms; not every command needs the probe

        return probe(self.paths.probe_file)
