"""The device watcher in ``qlite daemon``: block devices that come and go.

pyudev listens to udevd's events where udevd runs (identities from udev
properties) and to the kernel's uevents otherwise (identities from blkid).
A device that vanishes is detached, and a qube paired with it is stopped;
a paired device that appears starts its qube, fresh.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from qlite.core.context import Context
from qlite.paths import Paths

UDEV_CONTROL = Path("/run/udev/control")


def source() -> str:
    return "udev" if UDEV_CONTROL.exists() else "kernel"


class DeviceWatcher:
    def __init__(self, paths: Paths, log: Callable[[str], None]):
        self.paths = paths
        self.log = log
        self.thread: threading.Thread | None = None
        self.monitor = None

    def start(self) -> None:
        import pyudev  # noqa: PLC0415

        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source())
        self.monitor.filter_by("block")
        self.monitor.start()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="device-watcher")
        self.thread.start()
        self.log(f"watching block devices (source: {source()})")

    def _loop(self) -> None:
        assert self.monitor is not None
        for device in iter(self.monitor.poll, None):
            try:
                self.handle(device.action or "", device.sys_name)
            except Exception:  # noqa: BLE001 - one event must not end the watcher
                self.log(f"device event {device.action} {device.sys_name} failed:\n{traceback.format_exc()}")

    def handle(self, action: str, name: str) -> None:
        from qlite.devices.manager import DeviceManager  # noqa: PLC0415

        ctx = Context(self.paths)
        ctx.on_warning = lambda m: self.log(f"devices: {m}")
        devices = DeviceManager(ctx)
        if action == "remove":
            stopped = devices.on_removed(name)
            if stopped:
                self.log(f"{name} was removed without eject: stopped {', '.join(stopped)}; "
                         "writes not yet on the drive may be lost")
        elif action in ("add", "change"):
            started = devices.on_added(name)
            if started:
                self.log(f"{name} appeared: started {', '.join(started)}")
