"""Preloaded disposables: sandboxes created and started ahead of time.

``qlite features DVM preload-dispvm-max N`` (or on ``dom0``, for the global
``default_dispvm``, as in Qubes 4.3) asks the daemon to keep N disposables
of DVM ready. A ready member runs the guest agent as its main process,
listening on a socket in its RPC directory that only root (the host) can
use. ``qlite run --disposable`` claims one in a single store transaction,
runs its command through the agent, and hands it back *spent*: the daemon
destroys it and starts a replacement. A member is never used twice.

Members carry the tag ``preloaded`` while ready and ``spent`` after use,
and the feature ``preload.generation``: a digest of what they were made
from (the template's image, the disposable template's properties,
features and firewall). When that changes, ready members are recycled.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from qlite.agent import channel as ch
from qlite.agent import frames
from qlite.agent.listen import listen_private
from qlite.domain.context import Context
from qlite.errors import QliteError
from qlite.state.owners import current_owner

FEATURE = "preload-dispvm-max"
READY, SPENT = "preloaded", "spent"
GENERATION = "preload.generation"
AGENT_SOCKET = "agent-host.sock"  # in the member's RPC directory; /run/qlite/ inside
ACCEPT_TIMEOUT_S = 60.0
GREETING_TIMEOUT_S = 5.0

# The daemon's open connections to ready members' agents, by member name.
# Only the daemon's process fills it; a claim takes the connection over the
# admin socket (SCM_RIGHTS), so nothing else can reach a member's agent.
CONNECTIONS: dict[str, socket.socket] = {}
CONNECTIONS_LOCK = threading.Lock()


def listen_for_agent(path: Path) -> socket.socket:
    return listen_private(path, backlog=4)


def accept_agent(srv: socket.socket, name: str) -> None:
    """Wait for member NAME's agent to connect and greet; keep the
    connection. A connection that does not greet is dropped: gVisor can
    leave a host-side connection behind when a connect inside the sandbox
    is retried, and a command sent there would wait forever."""

    deadline = time.monotonic() + ACCEPT_TIMEOUT_S
    while time.monotonic() < deadline:
        srv.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            break
        try:  # the greeting may come in pieces; all of it within its time
            first = frames.recv_frame(conn, ch.Decoder(), [], time.monotonic() + GREETING_TIMEOUT_S)
        except (OSError, ch.ChannelError):
            first = None
        if first is not None and first[0] == ch.HELLO:
            conn.settimeout(None)
            with CONNECTIONS_LOCK:
                CONNECTIONS[name] = conn
            return
        conn.close()
    raise QliteError(f"the agent of preloaded {name} did not connect")


def take_connection(name: str) -> socket.socket | None:
    with CONNECTIONS_LOCK:
        return CONNECTIONS.pop(name, None)


def drop_connection(name: str) -> None:
    conn = take_connection(name)
    if conn is not None:
        conn.close()


MAX_PRELOAD = 16


def parse_max(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        return 0
    return max(0, min(n, MAX_PRELOAD))


def members(ctx: Context, dvm: str, tag: str) -> list[str]:
    return ctx.qube_store.disposables_of(dvm, tag)


def claim(ctx: Context, dvm: str) -> tuple[str, str] | None:
    """Take one ready member of DVM for this process, atomically: its name
    and the daemon's owner tag it had (to hand it back to)."""
    return ctx.qube_store.take_tagged_disposable(dvm, READY, current_owner())


def hand_back(ctx: Context, name: str, daemon_owner: str | None) -> bool:
    """After use: give the member to the daemon to destroy. False if no
    daemon owner is known (then the caller destroys it)."""
    if not daemon_owner:
        return False
    ctx.qube_store.hand_to(name, SPENT, daemon_owner)
    return True
