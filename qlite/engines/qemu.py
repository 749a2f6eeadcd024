"""QMP control of a VM qube's QEMU, through qemu.qmp.

This is the only module that imports qemu.qmp. Every failure of it (or of
the socket beneath) becomes EngineError in ``_call``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qlite.errors import EngineError

if TYPE_CHECKING:  # qemu.qmp loads on the first QMP call
    from qemu.qmp.legacy import QEMUMonitorProtocol

T = TypeVar("T")
TIMEOUT_S = 10.0


class Qmp:
    """One QMP session with the QEMU listening on SOCKET."""

    def __init__(self, socket_path: Path, what: str) -> None:
        self.path = socket_path
        self.what = what  # the qube, for messages

    def _call(self, action: str, fn: Callable[[QEMUMonitorProtocol], T]) -> T:
        from qemu.qmp import QMPError  # noqa: PLC0415 - qemu.qmp costs ~55 ms; only QMP calls need it
        from qemu.qmp.legacy import QEMUMonitorProtocol  # noqa: PLC0415 - as above

        mon = QEMUMonitorProtocol(str(self.path))
        try:
            mon.connect()
            mon.settimeout(TIMEOUT_S)
            return fn(mon)
        except (QMPError, OSError, TimeoutError) as exc:
            raise EngineError(f"QMP {action} on {self.what}: {exc or type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(Exception):
                mon.close()

    def _cmd(self, name: str, **args: object) -> Any:  # noqa: ANN401 - the command's JSON answer, of its own shape
        return self._call(name, lambda mon: mon.cmd(name, **args))

    def status(self) -> str:
        """QEMU's run state: "running", "paused", "shutdown", ..."""
        return str(self._cmd("query-status").get("status", "unknown"))

    def pause(self) -> None:
        self._cmd("stop")

    def resume(self) -> None:
        self._cmd("cont")

    def powerdown(self) -> None:
        """Press the ACPI power button (the agent powers off cleanly)."""
        self._cmd("system_powerdown")

    def quit(self) -> None:
        """End QEMU at once, as pulling the plug would."""
        with contextlib.suppress(EngineError):  # it may close the socket before answering
            self._cmd("quit")

    def attach_block(self, node: str, path: str, read_only: bool, bus: str) -> None:
        """Hot-plug the file or block device PATH as a virtio disk on BUS
        (a PCIe root port of a q35 VM)."""

        def go(mon: QEMUMonitorProtocol) -> None:
            mon.cmd(
                "blockdev-add",
                **{
                    "node-name": node,
                    "driver": "raw",
                    "read-only": read_only,
                    "file": {
                        "driver": "host_device" if path.startswith("/dev/") else "file",
                        "filename": path,
                        "read-only": read_only,
                    },
                },
            )
            try:
                mon.cmd("device_add", driver="virtio-blk-pci", id=node, drive=node, bus=bus)
            except Exception:
                with contextlib.suppress(Exception):
                    mon.cmd("blockdev-del", **{"node-name": node})
                raise

        self._call("block attach", go)

    def detach_block(self, node: str) -> None:
        def go(mon: QEMUMonitorProtocol) -> None:
            mon.cmd("device_del", id=node)
            for _ in range(100):  # bounded: the guest acknowledges the unplug
                event = mon.pull_event(wait=0.2)
                if event and event.get("event") == "DEVICE_DELETED" and event.get("data", {}).get("device") == node:
                    break
            mon.cmd("blockdev-del", **{"node-name": node})

        self._call("block detach", go)
