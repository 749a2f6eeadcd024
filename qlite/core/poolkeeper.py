"""The daemon's pool keeper: it keeps every disposable template's
preloaded members ready (see qlite.domain.preload for the members' life)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from qlite.core.disposables import DisposableManager
from qlite.core.qubes import QubeManager
from qlite.domain.context import Context
from qlite.domain.model import Qube
from qlite.domain.prefs import GlobalPrefs
from qlite.domain.preload import FEATURE, GENERATION, READY, SPENT, members, parse_max
from qlite.errors import QliteError
from qlite.paths import Paths

LOOP_S = 1.0


def wanted(ctx: Context) -> dict[str, int]:
    """Disposable template -> how many ready members it should have."""
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
    qm = QubeManager(ctx)
    data = {
        "image": qm.image_for(Qube(name="x", klass="AppVM", label="red", template=dvm.template)),
        "prefs": {k: v for k, v in asdict(dvm).items() if k not in ("created_at", "tags", "owner")},
        "features": {k: v for k, v in qm.features.all(dvm.name).items() if k != FEATURE},
        "firewall": ctx.qube_store.firewall(dvm.name),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=sorted).encode()).hexdigest()[:16]


class PoolKeeper:
    """The daemon's loop: destroy spent members, recycle stale ones, and
    start members until every disposable template has what it wants."""

    def __init__(self, paths: Paths, log: Callable[[str], None]) -> None:
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
        ctx = Context(self.paths)
        ctx.on_warning = lambda m: self.log(f"preload: {m}")
        qm = QubeManager(ctx)
        for name in ctx.qube_store.tagged(SPENT):
            with contextlib.suppress(QliteError):
                qm.destroy(qm.get(name))
        want = wanted(ctx)
        dvms = ctx.qube_store.dvms_with_tagged_disposables(READY)
        for dvm in sorted(set(want) | dvms):
            self._keep(ctx, qm, DisposableManager(ctx), dvm, want.get(dvm, 0))

    def _keep(self, ctx: Context, qm: QubeManager, dm: DisposableManager, dvm: str, n: int) -> None:
        if not qm.exists(dvm) or not qm.get(dvm).template_for_dispvms or not qm.runtime(qm.get(dvm)).preloadable:
            n = 0  # VM disposables are not preloaded in this version
        gen = generation(ctx, qm.get(dvm)) if n else ""
        ready = members(ctx, dvm, READY)
        for name in ready:
            stale = qm.features.all(name).get(GENERATION) != gen
            if stale or len(ready) > n:
                if self._unclaim(ctx, name):
                    ready.remove(name)
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
