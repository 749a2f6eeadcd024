"""Block devices and qubes: list, attach, detach, assign, pair, eject.

- A container qube gets the device's *filesystem*: the host mounts it
  ``nodev,nosuid,noexec`` (``--exec`` drops noexec; ``--ro`` adds ro) in the
  qube's devices directory, which is bind-mounted into the qube with slave
  propagation, so it appears at /mnt/removable/<device> while it runs.
- A VM qube gets the *block device*: hot-plugged over QMP on q35, or
  given at boot on microvm (which has no hot-plug) when it is assigned.
- A device is attached to at most one qube, and never to a qube while the
  host has it mounted; the host never mounts a device a qube has, except
  for the container case above, where that mount *is* the attachment.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qlite.devices.identity import BlockDevice, is_removable_candidate, parse_ident, read_device
from qlite.domain.context import Context
from qlite.domain.model import State
from qlite.domain.ports import QubeAccess
from qlite.engines.base import Stdio
from qlite.errors import AlreadyExists, Busy, EngineError, InvalidValue, NotFound, NotRunning, QliteError, StateError
from qlite.host.mounts import host_mounts
from qlite.safepath import UnsafePath, make_dirs, open_trusted_dir, opened, remove_beneath

if TYPE_CHECKING:
    import sqlite3

DEFAULT_OPTIONS = ("nodev", "nosuid")


@dataclass
class DeviceRow:
    """One line of ``qlite device list``."""

    device: BlockDevice
    attached_to: str | None
    read_only: bool
    assigned_to: list[str]
    host_mounts: list[str]

    def as_json(self) -> dict:
        return {
            **self.device.as_json(),
            "attached_to": self.attached_to,
            "read_only": self.read_only,
            "assigned_to": self.assigned_to,
            "host_mounts": self.host_mounts,
        }


def mount_options(read_only: bool, allow_exec: bool) -> str:
    return ",".join((*DEFAULT_OPTIONS, *(() if allow_exec else ("noexec",)), "ro" if read_only else "rw"))


class DeviceManager:
    def __init__(self, ctx: Context, qubes: QubeAccess) -> None:
        self.ctx = ctx
        self.qubes = qubes
        self.store = ctx.store
        self.mounts = ctx.mounts
        self.blocks = ctx.block_devices

    # -- what is there ---------------------------------------------------------

    def devices(self) -> list[BlockDevice]:
        out = []
        for name in self.blocks.names():
            if is_removable_candidate(self.blocks, name):
                dev = read_device(self.blocks, name)
                if dev is not None:
                    out.append(dev)
        return out

    def find(self, text: str) -> BlockDevice:
        """A device by kernel name, /dev path or identity (uuid:, serial:, dev:)."""
        name = text.removeprefix("/dev/")
        if ":" in text:
            ident = parse_ident(text)
            for dev in self.devices():
                if dev.matches(ident):
                    return dev
            raise NotFound(f"no device {text} is present")
        if "/" in name or not self.blocks.exists(name):
            raise NotFound(f"no such block device: {text!r} (see 'qlite device list')")
        found = read_device(self.blocks, name)
        if found is None:
            raise NotFound(f"block device {name} has no medium")
        return found

    def attachment(self, name: str) -> sqlite3.Row | None:
        return self.store.query_one("SELECT * FROM device_attachments WHERE device=?", (name,))

    # -- attach and detach --------------------------------------------------------

    def attach(self, qube: str, text: str, read_only: bool = False, allow_exec: bool = False) -> BlockDevice:
        q = self.qubes.get(qube)
        dev = self.find(text)
        self._check_free(dev, qube)
        if self.qubes.state_of(q) != State.RUNNING:
            raise NotRunning(f"qube {qube} is not running: start it, or assign the device with 'qlite device assign'")
        runtime = self.qubes.runtime(q)
        if not runtime.takes_block_devices and not self.ctx.engine.gives_devices_to_containers:
            raise InvalidValue(
                "container qubes get devices only with the podman engine "
                "(the Docker API cannot mount them nodev, nosuid, noexec)"
            )
        if allow_exec and not runtime.takes_block_devices:
            raise InvalidValue(
                f"--exec: {qube} is a {runtime.title} qube, where /mnt/removable is always noexec "
                "(gVisor applies that mount's flags to every device below it)"
            )
        if runtime.takes_block_devices:
            node = f"dev-{dev.name}"
            runtime.attach_block(q, node, dev.path, read_only)
            self._record(dev, qube, read_only, "block", node)
        else:
            target = self.ctx.paths.devices_dir(q.name) / dev.name
            self._record(dev, qube, read_only, "mount", str(target))
            try:
                self._make_point(q.name, dev.name)
                self.mounts.mount(dev.path, target, mount_options(read_only, allow_exec))
            except BaseException:
                self.store.execute("DELETE FROM device_attachments WHERE device=?", (dev.name,))
                self._drop_point(q.name, dev.name)
                raise
        self._log("attach", dev, qube, read_only=read_only)
        return dev

    def _check_free(self, dev: BlockDevice, qube: str) -> None:
        row = self.attachment(dev.name)
        if row is not None and not self._running(row["qube"]):
            self._release(row, gone=True)  # left by a qube that stopped without us
            row = None
        if row is not None:
            other = row["qube"]
            raise AlreadyExists(f"{dev.name} is already attached to {other}: detach it first")
        mounts = host_mounts(self.mounts.mountinfo()).get(dev.major_minor, [])
        if mounts:
            raise Busy(f"{dev.name} is mounted on the host at {mounts[0]}: unmount it first")
        if self.mounts.busy(dev.path):
            raise Busy(
                f"{dev.name} is still in use (a sandbox that had it keeps it until it stops, "
                "or a host program holds it): stop that qube, or close what holds it"
            )
        holders = self.blocks.holders(dev.name)
        if holders:
            raise Busy(f"{dev.name} is in use on the host (by {', '.join(holders)})")

    def _running(self, qube: str) -> bool:
        return self.qubes.exists(qube) and self.qubes.state_of(self.qubes.get(qube)) != State.HALTED

    def _record(self, dev: BlockDevice, qube: str, read_only: bool, how: str, target: str) -> None:
        try:
            self.store.execute(
                "INSERT INTO device_attachments(device, qube, ident, read_only, how, target, attached_at) "
                "VALUES(?,?,?,?,?,?,?)",
                (dev.name, qube, dev.ident, int(read_only), how, target, time.time()),
            )
        except Exception as exc:  # a concurrent attach won the row
            raise AlreadyExists(f"{dev.name} was attached by someone else just now") from exc

    def detach(self, text: str, qube: str | None = None) -> list[str]:
        """Detach a device (by name, path or identity), or with QUBE and no
        device every device of QUBE. Returns the devices detached."""
        if text:
            name = text.removeprefix("/dev/")
            if ":" in text:
                name = self.find(text).name
            row = self.attachment(name)
            if row is None or (qube and row["qube"] != qube):
                raise NotFound(f"{name} is not attached{' to ' + qube if qube else ''}")
            rows = [row]
        else:
            rows = self.store.query("SELECT * FROM device_attachments WHERE qube=?", (qube,))
        for row in rows:
            self._release(row)
        return [r["device"] for r in rows]

    def _release(self, row: sqlite3.Row, gone: bool = False) -> None:
        """Undo one attachment. GONE: the device vanished, so unmount lazily."""
        if row["how"] == "mount":
            target = Path(row["target"])
            if self.mounts.is_mountpoint(target):
                self._unmount(target, row, gone)
            if self.mounts.is_mountpoint(target):
                raise Busy(f"{row['device']} is still mounted at {target}; see 'qlite device list'")
            self._drop_point(row["qube"], target.name)
        else:
            q = self.qubes.get(row["qube"]) if self.qubes.exists(row["qube"]) else None
            if q is not None:
                with contextlib.suppress(QliteError):
                    self.qubes.runtime(q).detach_block(q, row["target"])
        self.store.execute("DELETE FROM device_attachments WHERE device=?", (row["device"],))
        self._log("detach", None, row["qube"], device=row["device"], gone=gone)

    def _unmount(self, target: Path, row: sqlite3.Row, gone: bool) -> None:
        if gone:
            self.mounts.umount(target, lazy=True)
            return
        try:
            self.mounts.umount(target)
        except EngineError:
            # gVisor's gofer may hold files of it open until the qube stops:
            # flush everything, then take it out of every view at once.
            self.mounts.sync()
            self.mounts.umount(target, lazy=True)
            self.ctx.warn(
                f"{row['device']} is detached and synced, but {row['qube']} still holds files "
                "on it open; its filesystem is released completely when that qube stops"
            )

    # -- qubes' devices directories -------------------------------------------------

    def prepare_dir(self, qube: str) -> Path:
        """QUBE's devices directory: a read-only, shared bind of a directory
        only the host reaches, so that the qube can create nothing in it
        (no symlink for an attach to follow), while what the host mounts
        below it later reaches the qube (bound with rslave) read-write."""
        points, view = self.ctx.paths.devices_points(qube), self.ctx.paths.devices_dir(qube)
        for d in (points, view):
            d.mkdir(parents=True, exist_ok=True)
        self.mounts.bind_read_only_shared(points, view)
        return view

    def _make_point(self, qube: str, name: str) -> None:
        """A mount point for device NAME in QUBE's devices directory, made
        where only the host writes."""
        points = self.ctx.paths.devices_points(qube)
        if not points.is_dir():
            raise StateError(f"{qube} was started without a devices directory: restart it to attach devices")
        with opened(open_trusted_dir(points)) as fd:
            os.close(make_dirs(fd, name))

    def _drop_point(self, qube: str, name: str) -> None:
        points = self.ctx.paths.devices_points(qube)
        with contextlib.suppress(OSError, UnsafePath), opened(open_trusted_dir(points)) as fd:
            os.rmdir(name, dir_fd=fd)  # refuses while something is still mounted there

    def release_qube(self, qube: str) -> None:
        """After QUBE stops: detach everything it had, drop its directory."""
        for row in self.store.query("SELECT * FROM device_attachments WHERE qube=?", (qube,)):
            with contextlib.suppress(QliteError):
                self._release(row)
        view = self.ctx.paths.devices_dir(qube)
        for _ in range(8):  # bounded: each pass removes one layer
            if not self.mounts.is_mountpoint(view):
                break
            try:
                self.mounts.umount(view, lazy=True)
            except EngineError:
                break
        with contextlib.suppress(OSError):
            view.rmdir()
        points = self.ctx.paths.devices_points(qube)
        with contextlib.suppress(OSError, UnsafePath), opened(open_trusted_dir(points.parent)) as fd:
            remove_beneath(fd, qube)

    # -- assignments and pairing ------------------------------------------------------

    def assign(
        self, qube: str, ident: str, read_only: bool = False, required: bool = False, paired: bool = False
    ) -> None:
        self.qubes.get(qube)
        self.ctx.qube_store.assign(qube, parse_ident(ident), read_only, required or paired, paired)

    def unassign(self, qube: str, ident: str) -> None:
        self.qubes.get(qube)
        if not self.ctx.qube_store.unassign(qube, parse_ident(ident)):
            raise NotFound(f"{ident} is not assigned to {qube}")

    def assignments(self, qube: str) -> list:
        return self.ctx.qube_store.assignments(qube)

    def present(self, ident: str) -> BlockDevice | None:
        return next((d for d in self.devices() if d.matches(ident)), None)

    def check_required(self, qube: str) -> None:
        """Refuse to start QUBE while a device it requires is absent."""
        for a in self.assignments(qube):
            if a["required"] and self.present(a["ident"]) is None:
                raise StateError(f"{qube} requires device {a['ident']}, which is not present")

    def attach_assigned(self, qube: str) -> list[str]:
        """After QUBE started: attach every assigned device that is present
        and free. Returns the devices attached."""
        out = []
        for a in self.assignments(qube):
            dev = self.present(a["ident"])
            if dev is None:
                continue
            held = self.attachment(dev.name)
            if held is not None and held["qube"] == qube:
                continue  # given at boot
            try:
                self.attach(qube, dev.name, read_only=bool(a["read_only"]))
                out.append(dev.name)
            except QliteError as exc:
                if a["required"]:
                    raise
                self.ctx.warn(f"{qube}: assigned device {a['ident']} was not attached: {exc}")
        return out

    def claim_for_boot(self, qube: str) -> tuple[tuple[str, str, bool], ...]:
        """For a VM without hot-plug: the assigned devices that are present
        and free, recorded as attached, to be given to QEMU at boot."""
        out = []
        for a in self.assignments(qube):
            dev = self.present(a["ident"])
            if dev is None:
                continue
            try:
                self._check_free(dev, qube)
            except QliteError as exc:
                if a["required"]:
                    raise
                self.ctx.warn(f"{qube}: assigned device {a['ident']} is not given to it: {exc}")
                continue
            node = f"dev-{dev.name}"
            self._record(dev, qube, bool(a["read_only"]), "block", node)
            out.append((node, dev.path, bool(a["read_only"])))
        return tuple(out)

    # -- the watcher's events ---------------------------------------------------------------

    def on_removed(self, name: str) -> list[str]:
        """NAME vanished (yanked without eject): its attachment is undone.
        Returns the qubes paired with it, which the watcher stops."""
        row = self.attachment(name)
        if row is None:
            return []
        qube = row["qube"]
        paired = (
            any(
                a["paired"] and (a["ident"] == row["ident"] or a["ident"] == f"dev:{name}")
                for a in self.assignments(qube)
            )
            if self.qubes.exists(qube)
            else False
        )
        self._release(row, gone=True)
        self._log(
            "removed",
            None,
            qube,
            device=name,
            unsafe=True,
            detail="removed without eject: writes not yet on the drive may be lost",
        )
        return [qube] if paired else []

    def on_added(self, name: str) -> list[str]:
        """NAME appeared: the halted qubes paired with it, which the
        watcher starts (fresh)."""
        dev = read_device(self.blocks, name)
        if dev is None:
            return []
        out = []
        for a in self.ctx.qube_store.assignments(paired=True):
            if not dev.matches(a["ident"]) or not self.qubes.exists(a["qube"]):
                continue
            if self.qubes.state_of(self.qubes.get(a["qube"])) == State.HALTED:
                out.append(a["qube"])
        return out

    def gone(self) -> list[str]:
        """The attached devices that are no longer present (events lost)."""
        return [
            row["device"]
            for row in self.store.query("SELECT device FROM device_attachments")
            if read_device(self.blocks, row["device"]) is None or not self.blocks.exists(row["device"])
        ]

    def log_start_failed(self, name: str, qube: str, error: str) -> None:
        self._log("start-failed", read_device(self.blocks, name), qube, error=error)

    def eject(self, text: str) -> str | None:
        """Safely remove: sync in the qube, stop a paired qube, unmount.
        Returns the qube it was attached to."""
        dev = self.find(text)
        row = self.attachment(dev.name)
        if row is None:
            return None
        qube = row["qube"]
        q = self.qubes.get(qube)
        with contextlib.suppress(QliteError):
            self.qubes.exec_in(q, ["sync"], _null_stdio(), "root", {})
        paired = any(a["paired"] and dev.matches(a["ident"]) for a in self.assignments(qube))
        if paired:
            self.qubes.shutdown(qube, timeout=30)  # releases the device too
        if self.attachment(dev.name) is not None:
            self.detach(dev.name)
        self.mounts.sync()
        self._log("eject", dev, qube)
        return qube

    def _log(self, event: str, dev: BlockDevice | None, qube: str, **fields: object) -> None:
        record = {"time": time.time(), "event": event, "qube": qube, **fields}
        if dev is not None:
            record.update(device=dev.name, ident=dev.ident)
        self.ctx.paths.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.ctx.paths.device_log, "a") as f:
            f.write(json.dumps(record) + "\n")

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[DeviceRow]:
        attached = {r["device"]: r for r in self.store.query("SELECT * FROM device_attachments")}
        assignments = self.ctx.qube_store.assignments()
        mounts = host_mounts(self.mounts.mountinfo())
        ours = str(self.ctx.paths.run_dir / "devices")
        rows = []
        for dev in self.devices():
            row = attached.get(dev.name)
            rows.append(
                DeviceRow(
                    device=dev,
                    attached_to=row["qube"] if row else None,
                    read_only=bool(row["read_only"]) if row else False,
                    assigned_to=[a["qube"] for a in assignments if dev.matches(a["ident"])],
                    host_mounts=[m for m in mounts.get(dev.major_minor, []) if not m.startswith(ours)],
                )
            )
        return rows


def _null_stdio() -> Stdio:
    return Stdio(stdin=None, stdout=io.BytesIO(), stderr=io.BytesIO())
