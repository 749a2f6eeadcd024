"""The one seam through which qlite changes the kernel's network state:
nftables scripts, sysctls and routes, on the host or inside a qube's
network namespace (entered from the host: the qube cannot touch them)."""

from __future__ import annotations

import os
import shutil
from typing import Final

from qlite.errors import EngineError
from qlite.runtime.command import run_tool

TIMEOUT_S = 30
# The line of a failure to report: nft names the error on its first line,
# then quotes the rule under it.
COMPLAINT: Final = "first"


def _nft() -> str:
    return os.environ.get("QLITE_NFT") or shutil.which("nft") or "/usr/sbin/nft"


def _in_netns(netns: str | None, cmd: list[str]) -> list[str]:
    return ["nsenter", f"--net={netns}", "--", *cmd] if netns else cmd


def apply_nft(script: str, netns: str | None = None) -> None:
    """Load an nft script (atomically: all of it or nothing)."""
    run_tool(
        _in_netns(netns, [_nft(), "-f", "-"]), "applying nftables rules", TIMEOUT_S, stdin=script, complaint=COMPLAINT
    )


def delete_table(table: str, netns: str | None = None) -> None:
    script = f"table inet {table} {{}}\ndelete table inet {table}\n"
    apply_nft(script, netns)


def enable_forwarding(netns: str) -> None:
    run_tool(
        _in_netns(netns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
        "enabling forwarding",
        TIMEOUT_S,
        complaint=COMPLAINT,
    )


def set_default_route(netns: str, via: str) -> None:
    run_tool(
        _in_netns(netns, ["ip", "route", "replace", "default", "via", via]),
        "setting the default route",
        TIMEOUT_S,
        complaint=COMPLAINT,
    )


def loopback_up(netns: str) -> None:
    run_tool(
        _in_netns(netns, ["ip", "link", "set", "lo", "up"]), "bringing up loopback", TIMEOUT_S, complaint=COMPLAINT
    )


def interface_by_mac(netns: str, mac: str) -> str:
    """The name of the interface with MAC inside NETNS."""
    cmd = _in_netns(netns, ["ip", "-o", "link", "show"])
    # A failed listing finds no interface, which is the error reported.
    out = run_tool(cmd, "listing interfaces", TIMEOUT_S, check=False).stdout
    for line in out.splitlines():
        # "3: eth1@if12: <...> ... link/ether 02:..:.. brd ..."
        parts = line.split()
        if "link/ether" in parts and parts[parts.index("link/ether") + 1].lower() == mac.lower():
            return parts[1].rstrip(":").split("@", 1)[0]
    raise EngineError(f"no interface with address {mac} in {netns}")


def tap_mirror(netns: str, mac: str, tap: str) -> None:
    """Create TAP in NETNS and join it to the interface with MAC by tc
    mirred, both ways: every frame that arrives on one leaves by the other,
    so a VM on TAP that uses MAC takes the interface's place on its link.
    (u32 matching everything: some kernels lack the matchall classifier.)"""
    eth = interface_by_mac(netns, mac)
    steps = [
        ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
        ["ip", "link", "set", tap, "up"],
    ]
    for src, dst in ((eth, tap), (tap, eth)):
        steps += [
            ["tc", "qdisc", "add", "dev", src, "ingress"],
            [
                "tc",
                "filter",
                "add",
                "dev",
                src,
                "parent",
                "ffff:",
                "protocol",
                "all",
                "u32",
                "match",
                "u8",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "redirect",
                "dev",
                dst,
            ],
        ]
    for cmd in steps:
        run_tool(_in_netns(netns, cmd), f"joining the VM's tap to {eth}", TIMEOUT_S, complaint=COMPLAINT)
