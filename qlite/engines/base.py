"""The Engine protocol and the plain dataclasses engines exchange with core."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol

from qlite.engines.interrupts import InterruptRelay
from qlite.progress import Progress

# A removal that lost the race to another one: podman 4.3 finds the object,
# then answers 500 rather than 404 if it is gone by the time it removes it.
GONE_RE = re.compile(r"no such (volume|container|network)|network not found", re.IGNORECASE)


@dataclass(frozen=True)
class Mount:
    """A filesystem mounted into a container."""

    type: str  # "volume" | "bind" | "tmpfs"
    target: str
    source: str = ""
    read_only: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container, engine-neutral."""

    name: str
    image: str
    command: tuple[str, ...]
    labels: dict[str, str]
    hostname: str = ""
    user: str = ""
    workdir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    read_only: bool = True
    mounts: tuple[Mount, ...] = ()
    network: str = "none"  # "none" or the name of an engine network
    dns: tuple[str, ...] = ()  # nameservers for /etc/resolv.conf; () leaves it to the engine
    memory_mib: int = 0
    vcpus: int = 0
    pids_limit: int = 0
    init: bool = True
    stdin_open: bool = False
    tty: bool = False
    runtime: str = ""  # engine runtime name; "" means the default


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    state: str  # created | running | paused | exited | stopping | ...
    labels: dict[str, str]
    image_id: str = ""
    pid: int = 0
    runtime: str = ""
    netns: str = ""  # path of its network namespace, when it has one
    networks: dict[str, Attachment] = field(default_factory=dict)  # by network name


@dataclass(frozen=True)
class Attachment:
    """A container's place on one network."""

    ip: str
    mac: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    labels: dict[str, str]
    mountpoint: str


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    labels: dict[str, str]
    subnets: tuple[str, ...] = ()
    internal: bool = False
    interface: str = ""  # the bridge's name on the host
    gateways: tuple[str, ...] = ()  # the host's addresses on the bridge


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    labels: dict[str, str]
    digest: str = ""
    size: int = 0
    created: str = ""


@dataclass
class Stdio:
    """The streams a command's stdio passes through to."""

    stdin: IO[bytes] | None = None  # None: the command gets an immediate EOF
    stdout: IO[bytes] = field(default_factory=lambda: sys.stdout.buffer)
    stderr: IO[bytes] = field(default_factory=lambda: sys.stderr.buffer)
    tty: bool = False
    # Set by a caller that forwards its Ctrl-C to the command (see interrupts).
    interrupts: InterruptRelay | None = None


def export_through_container(
    engine: Engine, image: str, tar_path: str, labels: dict[str, str], chunks: Callable[[str], Iterable[bytes]]
) -> None:
    """Write IMAGE's filesystem to TAR_PATH through a container that is
    created, never started, and removed; CHUNKS(cid) streams its export."""
    name = f"qlite-{labels.get('qlite.home', 'x')}-export-{os.getpid()}"
    spec = ContainerSpec(name=name, image=image, command=("true",), labels=dict(labels), init=False)
    engine.remove_container(name, force=True)
    cid = engine.create_container(spec)
    try:
        with open(tar_path, "wb") as f:
            for chunk in chunks(cid):
                f.write(chunk)
    finally:
        engine.remove_container(cid, force=True)


CHANGE_KINDS = {0: "C", 1: "A", 2: "D"}  # the Docker and libpod "changes" API's Kind


def change_list(data: list[dict] | None) -> list[tuple[str, str]]:
    """The Docker/libpod container "changes" answer as (kind, path)."""
    return [
        (CHANGE_KINDS.get(c["Kind"], "C") if isinstance(c.get("Kind"), int) else "C", str(c.get("Path", "")))
        for c in data or []
    ]


def label_selectors(labels: dict[str, str]) -> list[str]:
    """Engine label filters ("key=value") for LABELS, in a stable order."""
    return [f"{k}={v}" for k, v in sorted(labels.items())]


def has_labels(found: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    """Whether FOUND carries every one of WANTED. Engines' listings are
    checked again on our side: podman 4.3 ORs several label filters on
    volumes and networks."""
    found = found or {}
    return all(found.get(k) == v for k, v in wanted.items())


class Engine(Protocol):
    """What core needs from a container engine. Every failure of the
    underlying SDK is raised as EngineError (or EngineUnavailable)."""

    name: str  # for people to read; what qlite does depends on the capabilities below
    # A host directory can be bound into a container nodev, nosuid, noexec,
    # with what the host mounts below it later propagating in: the only safe
    # way to hand a container qube the filesystem of an attached drive.
    gives_devices_to_containers: bool
    # Containers run under runsc with the flags qlite's probe chose for this
    # host (netstack, or the host-netns path, where nobody else brings a
    # network-less qube's loopback up). Another engine's runsc is its owner's.
    runs_probed_runsc: bool
    # The engine is qlite's own service, on its socket under QLITE_HOME.
    managed_by_qlite: bool

    def version(self) -> str: ...

    # containers
    def create_container(self, spec: ContainerSpec) -> str: ...
    def init(self, cid: str) -> None:
        """Set a created container up (namespaces, sandbox) without starting
        its process, so that its network can be arranged first."""
        ...

    def start(self, cid: str) -> None: ...
    def stop(self, cid: str, timeout: float) -> None: ...
    def kill(self, cid: str, signal: str = "KILL") -> None: ...
    def pause(self, cid: str) -> None: ...
    def unpause(self, cid: str) -> None: ...
    def remove_container(self, cid: str, force: bool = True) -> None: ...
    def inspect_container(self, cid: str) -> ContainerInfo | None: ...
    def list_containers(self, labels: dict[str, str]) -> list[ContainerInfo]: ...
    def attach_and_start(self, cid: str, stdio: Stdio) -> int: ...
    def exec(
        self,
        cid: str,
        argv: list[str],
        stdio: Stdio,
        user: str = "",
        workdir: str = "",
        env: dict[str, str] | None = None,
    ) -> int: ...

    # volumes
    def create_volume(self, name: str, labels: dict[str, str]) -> VolumeInfo: ...
    def remove_volume(self, name: str) -> None: ...
    def inspect_volume(self, name: str) -> VolumeInfo | None: ...
    def list_volumes(self, labels: dict[str, str]) -> list[VolumeInfo]: ...

    # networks
    def create_network(
        self, name: str, labels: dict[str, str], internal: bool = False, interface: str = ""
    ) -> NetworkInfo: ...
    def remove_network(self, name: str) -> None:
        """Remove a network no container uses (never removes containers)."""
        ...

    def connect_network(self, cid: str, network: str, static_ip: str = "", static_mac: str = "") -> None: ...
    def disconnect_network(self, cid: str, network: str) -> None: ...
    def list_networks(self, labels: dict[str, str]) -> list[NetworkInfo]: ...

    # images
    def inspect_image(self, ref: str) -> ImageInfo | None: ...
    def list_images(self, reference: str) -> list[ImageInfo]: ...
    def tag_image(self, image_id: str, ref: str) -> None: ...
    def untag_image(self, ref: str) -> None: ...
    def remove_image(self, image_id: str) -> None: ...
    def prune_images(self, label: str, value: str | None = None) -> list[str]:
        """Remove untagged images carrying LABEL (=VALUE) that no container
        uses; return their ids."""
        ...

    def import_rootfs(self, tar_path: str, ref: str, progress: Progress) -> str: ...
    def build_image(
        self,
        containerfile: str,
        context: str,
        ref: str,
        build_args: dict[str, str],
        labels: dict[str, str],
        progress: Progress,
    ) -> str: ...
    def update_image(
        self,
        image_id: str,
        command: list[str],
        ref: str,
        labels: dict[str, str],
        changes: list[str],
        progress: Progress,
        worth_committing: Callable[[list[tuple[str, str]]], bool] | None = None,
    ) -> str | None:
        """Run COMMAND as root on IMAGE_ID and commit the result as REF;
        its image id. WORTH_COMMITTING, if given, sees what the command
        changed ((kind, path) with kind "A", "C" or "D") and may say that
        nothing is: then nothing is committed and None is returned."""
        ...

    def export_image(self, image: str, tar_path: str, labels: dict[str, str]) -> None:
        """Write IMAGE's filesystem to TAR_PATH as a tar."""
        ...

    def commit(self, cid: str, ref: str, changes: list[str]) -> str: ...
    def logs(self, cid: str) -> Iterator[bytes]: ...
