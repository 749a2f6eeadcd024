"""Reconcile the store with the engine after crashes.

Only objects of this home (label qlite.home) are considered, and a
disposable is reaped only when its owner process is dead: disposables that
other live qlite processes are running are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from qlite.core.qubes import QubeManager
from qlite.domain.context import Context
from qlite.state.owners import current_owner, owner_alive

if TYPE_CHECKING:
    import sqlite3


@dataclass
class ReconcileReport:
    disposables: list[str] = field(default_factory=list)
    # Qubes whose create or clone was rolled back, or whose remove completed.
    interrupted: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(self.as_json().values())

    def as_json(self) -> dict:
        return asdict(self)


def orphaned_rows(ctx: Context) -> list[str]:
    """Qubes to destroy: disposables whose owner process is gone, and qubes
    whose create, clone or remove was cut short (the process marked in
    ``pending`` is gone). Needs no engine: cheap enough to run before every
    command."""
    return [r["name"] for r in ctx.qube_store.unfinished() if _orphaned(r)]


def _orphaned(row: sqlite3.Row) -> bool:
    if row["pending"] is not None:
        return not owner_alive(row["pending"])
    return not owner_alive(row["owner"])


def reap(ctx: Context, sweep: bool = False) -> ReconcileReport:
    """Destroy orphaned disposables; with SWEEP (or when any were found),
    also remove stray engine objects of this home."""
    report = ReconcileReport()
    names = orphaned_rows(ctx)
    if not names and not sweep:
        return report
    qubes = QubeManager(ctx)
    me = current_owner()
    for name in names:
        # Take the orphan over first, atomically: of two commands reaping at
        # once only one destroys it, so the other cannot remove, by name,
        # a new disposable that has meanwhile taken the freed name.
        row = ctx.qube_store.take_over(name, _orphaned, me)
        if row is None:
            continue
        qubes.destroy(qubes.get(name))
        (report.interrupted if row["pending"] is not None else report.disposables).append(name)
    sweep_engine(ctx, report)
    if sweep:
        from qlite.core.templates import TemplateManager  # noqa: PLC0415 - ~8 ms, and only a sweep needs it

        report.images = TemplateManager(ctx).collect_garbage()
    return report


def _stray(ctx: Context, labels: dict[str, str], known: set[str]) -> bool:
    owner = labels.get("qlite.owner")
    if owner is not None:
        return not owner_alive(owner)
    return labels.get("qlite.qube") not in known


def _dead_vm(ctx: Context, labels: dict[str, str]) -> bool:
    """A VM qube's network holder whose supervisor (and so QEMU) is gone."""
    if labels.get("qlite.mode") != "vm":
        return False
    qm = QubeManager(ctx)
    name = labels.get("qlite.qube", "")
    if not qm.exists(name):
        return True
    q = qm.get(name)
    if qm.vm.supervisor_pid(q) is not None:
        return False
    qm.vm.kill(q)  # also clears its run directory
    return True


def sweep_engine(ctx: Context, report: ReconcileReport) -> None:
    engine = ctx.engine
    selector = {"qlite.home": ctx.home_hash}
    containers = engine.list_containers(selector)
    networks = engine.list_networks(selector)
    volumes = engine.list_volumes(selector)
    # Rows are read after the listings: a qube's row is written before its
    # first engine object and deleted after its last, so every object
    # listed of a qube being created right now has its row already.
    known = ctx.qube_store.names_with_templates()
    for c in containers:
        if _stray(ctx, c.labels, known) or _dead_vm(ctx, c.labels):
            engine.remove_container(c.id, force=True)
            report.containers.append(c.name)
    for n in networks:
        if _stray(ctx, n.labels, known) and remove_named_stray(
            ctx, n.name, n.labels, engine.list_networks, engine.remove_network
        ):
            report.networks.append(n.name)
    for v in volumes:
        if _stray(ctx, v.labels, known) and remove_named_stray(
            ctx, v.name, v.labels, engine.list_volumes, engine.remove_volume
        ):
            report.volumes.append(v.name)


def remove_named_stray(
    ctx: Context,
    name: str,
    labels: dict[str, str],
    lister: Callable[[dict[str, str]], list],
    remover: Callable[[str], None],
) -> bool:
    """Remove the stray volume or network NAME, listed with LABELS, if it is
    still stray; True if it was removed.

    Volumes and networks are removed by name, and names come back: once a
    reaper has destroyed a dead command's disp1386, a new command may make
    its own disp1386 before this sweep reaches the stale listing. So the
    object is looked at again and removed under the store's write lock: a
    new qube's row, written before its first engine object, waits for it,
    and a fresh object of a live qube is never taken for the dead one."""
    selector = {"qlite.home": ctx.home_hash}
    if "qlite.qube" in labels:
        selector["qlite.qube"] = labels["qlite.qube"]
    with ctx.qube_store.transaction():
        fresh = next((o for o in lister(selector) if o.name == name), None)
        if fresh is None:
            return False
        if not _stray(ctx, fresh.labels, ctx.qube_store.names_with_templates()):
            return False
        remover(name)
    return True
