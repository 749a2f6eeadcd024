"""A stand-in for qlite.host.nft: records what would have been loaded into
the kernel, and loads nothing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeNetApply:
    calls: list[tuple] = field(default_factory=list)
    scripts: list[tuple[str, str | None]] = field(default_factory=list)
    fail: Exception | None = None

    def _rec(self, *call: object) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    def apply_nft(self, script: str, netns: str | None = None) -> None:
        self._rec("apply_nft", netns)
        self.scripts.append((script, netns))

    def delete_table(self, table: str, netns: str | None = None) -> None:
        self._rec("delete_table", table, netns)

    def enable_forwarding(self, netns: str) -> None:
        self._rec("enable_forwarding", netns)

    def set_default_route(self, netns: str, via: str) -> None:
        self._rec("set_default_route", netns, via)

    def loopback_up(self, netns: str) -> None:
        self._rec("loopback_up", netns)

    def interface_by_mac(self, netns: str, mac: str) -> str:
        self._rec("interface_by_mac", netns, mac)
        return "eth0"


@dataclass
class FakeDaemon:
    """A stand-in for DaemonControl: records, starts nothing."""

    calls: list[tuple] = field(default_factory=list)

    def ensure(self) -> None:
        self.calls.append(("ensure",))

    def notify(self, qube: str) -> None:
        self.calls.append(("notify", qube))

    def forget(self, uuid: str) -> None:
        self.calls.append(("forget", uuid))

    def running(self) -> bool:
        return False


@dataclass
class FakeMounts:
    """Records what qlite would mount on the host; mounts nothing."""

    calls: list[tuple] = field(default_factory=list)
    mounted: set[str] = field(default_factory=set)

    def mountinfo(self) -> str:
        return "".join(f"1 1 7:99 / {m} rw - ext4 /dev/x rw\n" for m in sorted(self.mounted))

    def is_mountpoint(self, path) -> bool:
        return str(path) in self.mounted

    def mount(self, device: str, target, options: str) -> None:
        self.calls.append(("mount", device, str(target), options))
        self.mounted.add(str(target))

    def bind_read_only_shared(self, source, view) -> None:
        self.calls.append(("bind_ro_shared", str(source), str(view)))
        self.mounted.add(str(view))

    def umount(self, target, lazy: bool = False) -> None:
        self.calls.append(("umount", str(target), lazy))
        self.mounted.discard(str(target))

    def sync(self) -> None:
        self.calls.append(("sync",))

    def busy(self, device: str) -> bool:
        return False
