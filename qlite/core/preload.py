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

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from qlite.core.context import Context
from qlite.core.model import Qube
from qlite.errors import QliteError
from qlite.paths import Paths
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
    from qlite.vm.supervisor import listen_private  # noqa: PLC0415

    return listen_private(path, backlog=4)


def accept_agent(srv: socket.socket, name: str) -> None:
    """Wait for member NAME's agent to connect and greet; keep the
    connection. A connection that does not greet is dropped: gVisor can
    leave a host-side connection behind when a connect inside the sandbox
    is retried, and a command sent there would wait forever."""
    from qlite.vm import channel as ch  # noqa: PLC0415

    deadline = time.monotonic() + ACCEPT_TIMEOUT_S
    while time.monotonic() < deadline:
        srv.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            break
        conn.settimeout(GREETING_TIMEOUT_S)
        try:
            frames = ch.Decoder().feed(conn.recv(ch.HEADER.size + 256))
        except (OSError, ch.ChannelError):
            frames = []
        if frames and frames[0][0] == ch.HELLO:
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
LOOP_S = 1.0


def parse_max(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        return 0
    return max(0, min(n, MAX_PRELOAD))


def wanted(ctx: Context) -> dict[str, int]:
    """Disposable template -> how many ready members it should have."""
    from qlite.core.prefs import GlobalPrefs  # noqa: PLC0415

    holders = ctx.qube_store.features.holders(FEATURE)
    out: dict[str, int] = {}
    default = GlobalPrefs(ctx.store).get("default_dispvm")
    dom0 = holders.pop("dom0", None)
    if default and dom0 is not None:
        out[default] = parse_max(dom0)
    for qube, value in holders.items():
        out[qube] = parse_max(value)
    return {k: v for k, v in out.items() if v > 0}


def generation(ctx: Context, dvm: Qube) -> str:
    """What a member of DVM is made from; a change recycles the pool."""
    from qlite.core.qubes import QubeManager  # noqa: PLC0415

    qm = QubeManager(ctx)
    data = {
        "image": qm.image_for(Qube(name="x", klass="AppVM", label="red", template=dvm.template)),
        "prefs": {k: v for k, v in dvm.__dict__.items() if k not in ("created_at", "tags", "owner")},
        "features": {k: v for k, v in qm.features.all(dvm.name).items() if k != FEATURE},
        "firewall": ctx.qube_store.firewall(dvm.name),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=sorted).encode()).hexdigest()[:16]


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


class PoolKeeper:
    """The daemon's loop: destroy spent members, recycle stale ones, and
    start members until every disposable template has what it wants."""

    def __init__(self, paths: Paths, log: Callable[[str], None]):
        self.paths = paths
        self.log = log
        self.stop = threading.Event()
        self.wake = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="preload").start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.once()
            except Exception as exc:  # noqa: BLE001 - the pool must go on
                self.log(f"preload: {type(exc).__name__}: {exc}")
            self.wake.wait(LOOP_S)
            self.wake.clear()

    def once(self) -> None:
        from qlite.core.disposables import DisposableManager  # noqa: PLC0415
        from qlite.core.qubes import QubeManager  # noqa: PLC0415

        ctx = Context(self.paths)
        ctx.on_warning = lambda m: self.log(f"preload: {m}")
        qm = QubeManager(ctx)
        for name in ctx.qube_store.tagged(SPENT):
            drop_connection(name)
            with contextlib.suppress(QliteError):
                qm.destroy(qm.get(name))
        # A member claimed by a command that was killed before it took the
        # connection is reaped by the next command; its connection goes too.
        with CONNECTIONS_LOCK:
            held = list(CONNECTIONS)
        for name in held:
            if not qm.exists(name):
                drop_connection(name)
        want = wanted(ctx)
        dvms = ctx.qube_store.dvms_with_tagged_disposables(READY)
        for dvm in sorted(set(want) | dvms):
            self._keep(ctx, qm, DisposableManager(ctx), dvm, want.get(dvm, 0))

    def _keep(self, ctx: Context, qm, dm, dvm: str, n: int) -> None:
        if not qm.exists(dvm) or not qm.get(dvm).template_for_dispvms or not qm.runtime(qm.get(dvm)).preloadable:
            n = 0  # VM disposables are not preloaded in this version
        gen = generation(ctx, qm.get(dvm)) if n else ""
        ready = members(ctx, dvm, READY)
        for name in ready:
            stale = qm.features.all(name).get(GENERATION) != gen
            if stale or len(ready) > n:
                if self._unclaim(ctx, name):
                    ready.remove(name)
                    drop_connection(name)
                    qm.destroy(qm.get(name))
                    self.log(f"preload: removed {name} ({'recycled' if stale else 'over the limit'})")
        for _ in range(n - len(members(ctx, dvm, READY))):
            started = time.monotonic()
            name = dm.preload(dvm, gen)
            self.log(f"preload: {name} ready for {dvm} in {time.monotonic() - started:.2f}s")

    @staticmethod
    def _unclaim(ctx: Context, name: str) -> bool:
        """Take NAME out of the ready set unless a claim got it first."""
        return ctx.qube_store.untag(name, READY)
