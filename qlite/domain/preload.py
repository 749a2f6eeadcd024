"""Preloaded disposables: sandboxes created and started ahead of time.

``qlite features DVM preload-dispvm-max N`` (or on ``dom0``, for the global
``default_dispvm``, as in Qubes 4.3) asks the daemon to keep N disposables
of DVM ready. A ready member runs the guest agent as its main process,
linked to the daemon as every container qube's is (qlite.agent.mux).
``qlite run --disposable`` claims one in a single store transaction, runs
its command through the agent (one connection to the daemon), and hands it
back *spent*: the daemon destroys it and starts a replacement. A member is
never used twice.

Members carry the tag ``preloaded`` while ready and ``spent`` after use,
and the feature ``preload.generation``: a digest of what they were made
from (the template's image, the disposable template's properties,
features and firewall). When that changes, ready members are recycled.
"""

from __future__ import annotations

from qlite.domain.context import Context
from qlite.state.owners import current_owner

FEATURE = "preload-dispvm-max"
READY, SPENT = "preloaded", "spent"
GENERATION = "preload.generation"
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
