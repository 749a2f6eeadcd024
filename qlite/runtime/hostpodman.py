"""The host's podman and qlite: one drop-in, so that both see the same
containers, volumes and networks.

Podman records its network backend the first time it runs. On a host whose
image store already holds images (qlite's templates), the host's podman CLI
picks CNI, while qlite's service uses netavark: the host's ``podman network
ls`` then never shows qlite's networks. The drop-in selects netavark and
registers qlite's runsc wrappers as runtimes. A host that really uses CNI
networks keeps them unless the user forces the switch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qlite.paths import Paths
from qlite.runtime.config import render_dropin, write_file

CNI_CONF_DIR = Path("/etc/cni/net.d")
# Podman's own default network, shipped by Debian's podman package. Its
# presence says nothing about the user's networks.
CNI_DEFAULT_NETWORK = "podman"
CNI_PLUGIN_DIRS = (
    Path("/usr/local/libexec/cni"),
    Path("/usr/libexec/cni"),
    Path("/usr/local/lib/cni"),
    Path("/usr/lib/cni"),
    Path("/opt/cni/bin"),
)
BACKEND_RECORD = Path("/var/lib/containers/storage/defaultNetworkBackend")


@dataclass(frozen=True)
class HostPodman:
    """What the host's podman configuration looks like to qlite."""

    cni_networks: tuple[str, ...]  # the user's CNI networks (podman's default one excluded)
    cni_plugins: bool  # the CNI plugins are installed: CNI can actually work
    recorded_backend: str  # what podman recorded at its first run ("" if nothing yet)

    @property
    def cni_in_use(self) -> str:
        """Why switching the host to netavark could break something; "" if
        nothing would."""
        if self.cni_networks:
            return f"the host's podman has CNI networks ({', '.join(self.cni_networks)})"
        if self.recorded_backend == "cni" and self.cni_plugins:
            return "the host's podman runs its containers on CNI networks (the CNI plugins are installed)"
        return ""


def read_host(
    cni_dir: Path = CNI_CONF_DIR, plugin_dirs: tuple[Path, ...] = CNI_PLUGIN_DIRS, record: Path = BACKEND_RECORD
) -> HostPodman:
    names = []
    for conf in sorted(cni_dir.glob("*.conflist")) + sorted(cni_dir.glob("*.conf")):
        try:
            name = json.loads(conf.read_text()).get("name") or conf.stem
        except (OSError, ValueError, AttributeError):
            name = conf.stem
        if name != CNI_DEFAULT_NETWORK:
            names.append(str(name))
    try:
        recorded = record.read_text().strip()
    except OSError:
        recorded = ""
    plugins = any((d / "bridge").exists() for d in plugin_dirs)
    return HostPodman(tuple(names), plugins, recorded)


@dataclass(frozen=True)
class DropinResult:
    path: Path
    changed: bool
    netavark: bool  # the drop-in selects netavark for the host
    held_back: str  # why it does not ("" when it does)


def install_dropin(paths: Paths, force: bool = False, host: HostPodman | None = None) -> DropinResult:
    """Write the host's podman drop-in. Without FORCE, a host that uses CNI
    keeps its backend: the drop-in then registers only the runtimes."""
    host = host if host is not None else read_host()
    reason = "" if force else host.cni_in_use
    changed = write_file(paths.podman_dropin, render_dropin(paths, network=not reason), 0o644)
    return DropinResult(paths.podman_dropin, changed, not reason, reason)


def dropin_state(paths: Paths) -> tuple[bool, bool]:
    """(the drop-in is installed as qlite renders it now, it selects netavark)."""
    try:
        text = paths.podman_dropin.read_text()
    except OSError:
        return False, False
    for network in (True, False):
        if text == render_dropin(paths, network):
            return True, network
    return False, False
