"""A recording, in-memory Engine for unit tests of core logic.

It keeps containers, volumes, networks and images in dicts and behaves like
podman where core relies on it: names are unique (creating a duplicate is an
EngineError), removing something that is gone is not an error, and objects
can be addressed by name or id. Volumes get a real directory as mountpoint,
so host-side work on private data (init_private, copy_private) really runs.

Every call is recorded in ``calls`` as (method, args). ``fail`` maps a method
name to an exception the next calls of that method raise, for testing
rollbacks.
"""

from __future__ import annotations

import copy
import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from qlite.engines.base import (
    ContainerInfo,
    ContainerSpec,
    ImageInfo,
    NetworkInfo,
    Progress,
    Stdio,
    VolumeInfo,
)
from qlite.errors import EngineError

MUTATING = frozenset(
    {
        "create_container",
        "start",
        "stop",
        "kill",
        "pause",
        "unpause",
        "remove_container",
        "attach_and_start",
        "exec",
        "create_volume",
        "remove_volume",
        "create_network",
        "remove_network",
        "tag_image",
        "untag_image",
        "remove_image",
        "import_rootfs",
        "build_image",
        "update_image",
        "commit",
        "prune_images",
        "connect_network",
        "disconnect_network",
        "init",
    }
)


@dataclass
class FakeContainer:
    info: ContainerInfo
    spec: ContainerSpec


@dataclass
class FakeEngine:
    volume_root: Path
    name: str = "fake"
    # Like Docker's by default: tests of what only qlite's podman does turn them on.
    gives_devices_to_containers: bool = False
    runs_probed_runsc: bool = False
    managed_by_qlite: bool = False
    containers: dict[str, FakeContainer] = field(default_factory=dict)  # by id
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)  # by name
    networks: dict[str, NetworkInfo] = field(default_factory=dict)  # by name
    images: dict[str, ImageInfo] = field(default_factory=dict)  # by id
    calls: list[tuple[str, tuple]] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    exit_code: int = 0
    # What update_image's command "changed" (kind, path): an upgrade by default.
    update_changes: list[tuple[str, str]] = field(default_factory=lambda: [("C", "/var/lib/dpkg/status")])
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # -- bookkeeping ---------------------------------------------------------

    def _rec(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        exc = self.fail.get(method)
        if exc is not None:
            raise exc

    def mutating_calls(self) -> list[tuple[str, tuple]]:
        return [c for c in self.calls if c[0] in MUTATING]

    def snapshot(self) -> dict:
        """Everything the engine holds, comparable with ==."""
        return copy.deepcopy(
            {
                "containers": {k: (v.info, v.spec) for k, v in self.containers.items()},
                "volumes": dict(self.volumes),
                "networks": dict(self.networks),
                "images": dict(self.images),
            }
        )

    def add_image(self, image_id: str, tags: tuple[str, ...] = (), labels: dict[str, str] | None = None) -> ImageInfo:
        # Every image qlite builds carries the guest-tools layer and its label.
        img = ImageInfo(id=image_id, tags=tuple(tags), labels={"qlite.guest-tools": "4", **(labels or {})})
        self.images[image_id] = img
        return img

    def container_by_name(self, name: str) -> FakeContainer | None:
        for c in self.containers.values():
            if c.info.name == name:
                return c
        return None

    def _find(self, ref: str) -> FakeContainer | None:
        return self.containers.get(ref) or self.container_by_name(ref)

    def _need(self, ref: str) -> FakeContainer:
        c = self._find(ref)
        if c is None:
            raise EngineError(f"fake: no such container {ref}")
        return c

    def _set_state(self, ref: str, state: str) -> None:
        c = self._need(ref)
        c.info = replace(c.info, state=state)

    @staticmethod
    def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in wanted.items())

    # -- Engine --------------------------------------------------------------

    def version(self) -> str:
        self._rec("version")
        return "0.0-fake"

    def create_container(self, spec: ContainerSpec) -> str:
        self._rec("create_container", spec)
        if self.container_by_name(spec.name) is not None:
            raise EngineError(f"fake: container name {spec.name} is in use")
        if self.inspect_image(spec.image) is None:
            raise EngineError(f"fake: no such image {spec.image}")
        cid = f"c{next(self._ids):04d}"
        info = ContainerInfo(
            id=cid, name=spec.name, state="created", labels=dict(spec.labels), image_id=spec.image, runtime=spec.runtime
        )
        self.containers[cid] = FakeContainer(info=info, spec=spec)
        return cid

    def start(self, cid: str) -> None:
        self._rec("start", cid)
        self._set_state(cid, "running")

    def stop(self, cid: str, timeout: float) -> None:
        self._rec("stop", cid, timeout)
        self._set_state(cid, "exited")

    def kill(self, cid: str, signal: str = "KILL") -> None:
        self._rec("kill", cid, signal)
        self._set_state(cid, "exited")

    def pause(self, cid: str) -> None:
        self._rec("pause", cid)
        self._set_state(cid, "paused")

    def unpause(self, cid: str) -> None:
        self._rec("unpause", cid)
        self._set_state(cid, "running")

    def remove_container(self, cid: str, force: bool = True) -> None:
        self._rec("remove_container", cid, force)
        c = self._find(cid)
        if c is not None:
            del self.containers[c.info.id]

    def inspect_container(self, cid: str) -> ContainerInfo | None:
        self._rec("inspect_container", cid)
        c = self._find(cid)
        return None if c is None else c.info

    def list_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        self._rec("list_containers", dict(labels))
        return [c.info for c in self.containers.values() if self._matches(c.info.labels, labels)]

    def attach_and_start(self, cid: str, stdio: Stdio) -> int:
        self._rec("attach_and_start", cid)
        self._set_state(cid, "exited")
        return self.exit_code

    def exec(
        self,
        cid: str,
        argv: list[str],
        stdio: Stdio,
        user: str = "",
        workdir: str = "",
        env: dict[str, str] | None = None,
    ) -> int:
        self._rec("exec", cid, list(argv), user, workdir, dict(env or {}))
        if self._need(cid).info.state != "running":
            raise EngineError(f"fake: container {cid} is not running")
        return self.exit_code

    # volumes

    def create_volume(self, name: str, labels: dict[str, str]) -> VolumeInfo:
        self._rec("create_volume", name, dict(labels))
        if name in self.volumes:
            raise EngineError(f"fake: volume {name} already exists")
        mountpoint = self.volume_root / name / "_data"
        mountpoint.mkdir(parents=True)
        vol = VolumeInfo(name=name, labels=dict(labels), mountpoint=str(mountpoint))
        self.volumes[name] = vol
        return vol

    def remove_volume(self, name: str) -> None:
        self._rec("remove_volume", name)
        vol = self.volumes.pop(name, None)
        if vol is not None:
            shutil.rmtree(Path(vol.mountpoint).parent, ignore_errors=True)

    def inspect_volume(self, name: str) -> VolumeInfo | None:
        self._rec("inspect_volume", name)
        return self.volumes.get(name)

    def list_volumes(self, labels: dict[str, str]) -> list[VolumeInfo]:
        self._rec("list_volumes", dict(labels))
        return [v for v in self.volumes.values() if self._matches(v.labels, labels)]

    # networks

    def create_network(
        self, name: str, labels: dict[str, str], internal: bool = False, interface: str = ""
    ) -> NetworkInfo:
        self._rec("create_network", name, dict(labels), internal)
        if name in self.networks:
            raise EngineError(f"fake: network {name} already exists")
        n = len(self.networks)
        net = NetworkInfo(
            name=name,
            labels=dict(labels),
            subnets=(f"10.89.{n}.0/24",),
            internal=internal,
            interface=interface,
            gateways=(f"10.89.{n}.1",),
        )
        self.networks[name] = net
        return net

    def connect_network(self, cid: str, network: str, static_ip: str = "", static_mac: str = "") -> None:
        self._rec("connect_network", cid, network, static_ip)

    def disconnect_network(self, cid: str, network: str) -> None:
        self._rec("disconnect_network", cid, network)

    def init(self, cid: str) -> None:
        self._rec("init", cid)

    def remove_network(self, name: str) -> None:
        self._rec("remove_network", name)
        self.networks.pop(name, None)

    def list_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        self._rec("list_networks", dict(labels))
        return [n for n in self.networks.values() if self._matches(n.labels, labels)]

    # images

    def inspect_image(self, ref: str) -> ImageInfo | None:
        self._rec("inspect_image", ref)
        if ref in self.images:
            return self.images[ref]
        for img in self.images.values():
            if ref in img.tags:
                return img
        return None

    def list_images(self, reference: str) -> list[ImageInfo]:
        self._rec("list_images", reference)
        return [
            img
            for img in self.images.values()
            if any(t == reference or t.startswith(reference + ":") for t in img.tags)
        ]

    def tag_image(self, image_id: str, ref: str) -> None:
        self._rec("tag_image", image_id, ref)
        img = self.images[image_id]
        self.images[image_id] = replace(img, tags=(*img.tags, ref))

    def untag_image(self, ref: str) -> None:
        self._rec("untag_image", ref)
        for iid, img in list(self.images.items()):
            if ref in img.tags:
                self.images[iid] = replace(img, tags=tuple(t for t in img.tags if t != ref))

    def remove_image(self, image_id: str) -> None:
        self._rec("remove_image", image_id)
        self.images.pop(image_id, None)

    def prune_images(self, label: str, value: str | None = None) -> list[str]:
        self._rec("prune_images", label, value)
        used = {c.spec.image for c in self.containers.values()} | {c.info.image_id for c in self.containers.values()}
        gone = [
            iid
            for iid, img in self.images.items()
            if not img.tags
            and label in img.labels
            and (value is None or img.labels[label] == value)
            and iid not in used
        ]
        for iid in gone:
            del self.images[iid]
        return gone

    def _new_image(self, ref: str, labels: dict[str, str]) -> str:
        iid = f"{next(self._ids):064x}"
        self.untag_image(ref)
        self.add_image(iid, (ref,), labels)
        return iid

    def import_rootfs(self, tar_path: str, ref: str, progress: Progress) -> str:
        self._rec("import_rootfs", tar_path, ref)
        return self._new_image(ref, {})

    def build_image(
        self,
        containerfile: str,
        context: str,
        ref: str,
        build_args: dict[str, str],
        labels: dict[str, str],
        progress: Progress,
    ) -> str:
        self._rec("build_image", containerfile, context, ref, dict(build_args), dict(labels))
        return self._new_image(ref, labels)

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
        self._rec("update_image", image_id, list(command), ref, dict(labels), list(changes))
        if worth_committing is not None and not worth_committing(list(self.update_changes)):
            return None
        return self._new_image(ref, {"qlite.origin": "update"})

    def commit(self, cid: str, ref: str, changes: list[str]) -> str:
        self._rec("commit", cid, ref, list(changes))
        return self._new_image(ref, {})

    def logs(self, cid: str) -> Iterator[bytes]:
        self._rec("logs", cid)
        return iter(())
