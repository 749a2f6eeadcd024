"""The device watcher in ``qlite daemon``: block devices that come and go.

pyudev listens to udevd's events where udevd runs (identities from udev
properties) and to the kernel's uevents otherwise (identities from blkid).
The watcher only reads events; what they mean for qubes (a vanished
device is detached and its paired qube stopped, a paired device that
appears starts its qube, fresh) is the daemon's (qlite.daemon).
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

UDEV_CONTROL = Path("/run/udev/control")
RECEIVE_BUFFER = 8 << 20


def source() -> str:
    return "udev" if UDEV_CONTROL.exists() else "kernel"


class DeviceWatcher:
    """One thread drains the kernel's events as fast as they come (a
    qube's start must not make the socket overflow); another acts on
    them. If events are lost anyway (ENOBUFS under a burst of uevents),
    the watcher goes on and resynchronises from what is present now."""

    def __init__(self, handle: Callable[[str, str], None], log: Callable[[str], None]) -> None:
        self.handle = handle  # (action, kernel name); action "resync" after lost events
        self.log = log
        self.monitor = None
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()

    def start(self) -> None:
        import pyudev  # noqa: PLC0415 - ~19 ms; a daemon without pyudev still serves RPC

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source())
        monitor.filter_by("block")
        monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        monitor.start()
        self.monitor = monitor
        threading.Thread(target=self._read, daemon=True, name="device-events").start()
        threading.Thread(target=self._act, daemon=True, name="device-watcher").start()
        self.log(f"watching block devices (source: {source()})")

    def _read(self) -> None:
        assert self.monitor is not None
        while True:
            try:
                device = self.monitor.poll()
            except OSError as exc:  # ENOBUFS: some events were lost
                self.log(f"device events were lost ({exc}); resynchronising")
                self.events.put(("resync", ""))
                continue
            if device is not None:
                self.events.put((device.action or "", device.sys_name))

    def _act(self) -> None:
        while True:
            action, name = self.events.get()
            try:
                self.handle(action, name)
            except Exception:  # noqa: BLE001 - one event must not end the watcher
                self.log(f"device event {action} {name} failed:\n{traceback.format_exc()}")
