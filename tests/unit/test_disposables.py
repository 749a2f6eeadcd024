"""Disposables and reconciliation over the recording fake engine."""

from __future__ import annotations

import os
import re
import threading

import pytest

from qlite.core.disposables import DisposableManager, Terminated, exit_code_for
from qlite.core.qubes import QubeManager
from qlite.core.reconcile import orphaned_rows, reap
from qlite.domain.context import Context
from qlite.domain.names import validate_name
from qlite.domain.prefs import GlobalPrefs
from qlite.domain.spec import container_name, network_name, volume_name
from qlite.engines.base import Stdio
from qlite.engines.podman import gone
from qlite.errors import EngineError, InvalidValue, NotFound
from qlite.net import nft
from qlite.state.owners import current_owner, owner_alive
from qlite.state.store import Store

from .conftest import IMAGE_ID, TEMPLATE, dead_owner, dump_store, insert_row


@pytest.fixture
def qm(ctx) -> QubeManager:
    return QubeManager(ctx)


@pytest.fixture
def dvm(ctx, qm):
    q = qm.create("default-dvm", label="orange", template=TEMPLATE, props={"template_for_dispvms": "True"})
    GlobalPrefs(ctx.store).set("default_dispvm", "default-dvm")
    return q


@pytest.fixture
def dm(ctx) -> DisposableManager:
    return DisposableManager(ctx)


def objects_of(ctx, engine, name: str) -> dict:
    hh = ctx.home_hash
    return {
        "container": engine.container_by_name(container_name(hh, name)) is not None,
        "volume": volume_name(hh, name) in engine.volumes,
        "network": network_name(hh, name) in engine.networks,
    }


def test_create_names_and_inherits(ctx, qm, dm, dvm):
    qm.set_pref("default-dvm", "netvm", "none")
    qm.set_pref("default-dvm", "memory", "600")
    qm.features.set("default-dvm", "gui", "1")
    qm.features.set("default-dvm", "service.x", "on")
    qm.add_tags("default-dvm", ["work-related"])

    q = dm.create()
    assert re.fullmatch(r"disp[0-9]{1,4}", q.name)
    assert validate_name(q.name, allow_disp=True) == q.name
    stored = qm.get(q.name)
    assert stored.klass == "DispVM"
    assert stored.label == "orange"
    assert stored.netvm_raw == ""
    assert stored.memory == 600
    assert stored.template == "default-dvm"
    assert stored.template_for_dispvms is False
    assert stored.owner == current_owner()
    assert owner_alive(stored.owner)
    assert stored.tags == {"work-related"}
    assert qm.features.all(q.name) == {"gui": "1", "service.x": "on"}
    assert qm.image_for(stored) == IMAGE_ID


def test_create_gives_distinct_names(dm, dvm):
    names = {dm.create().name for _ in range(30)}
    assert len(names) == 30


def test_create_from_an_explicit_dvm(qm, dm, dvm):
    qm.create("other-dvm", label="purple", template=TEMPLATE, props={"template_for_dispvms": "1"})
    q = dm.create(dvm="other-dvm")
    assert (q.label, q.template) == ("purple", "other-dvm")


def test_create_straight_from_a_template(qm, dm):
    q = dm.create(template=TEMPLATE)
    assert (q.klass, q.template, q.label) == ("DispVM", TEMPLATE, "red")
    assert qm.image_for(qm.get(q.name)) == IMAGE_ID


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, InvalidValue),  # no default_dispvm set
        ({"dvm": "ghost"}, NotFound),
        ({"template": "fedora-40"}, NotFound),
        ({"dvm": "default-dvm", "template": TEMPLATE}, InvalidValue),
    ],
)
def test_create_errors_change_nothing(ctx, dm, engine, kwargs, error):
    before = dump_store(ctx.store)
    with pytest.raises(error):
        dm.create(**kwargs)
    assert dump_store(ctx.store) == before
    assert engine.mutating_calls() == []


def test_create_refuses_a_non_disposable_template(ctx, qm, dm):
    insert_row(qm, "work")
    with pytest.raises(InvalidValue, match="not a disposable template"):
        dm.create(dvm="work")


def test_prepare_copies_the_dvm_home_and_labels_everything(ctx, qm, dm, engine, dvm):
    src = engine.volumes[volume_name(ctx.home_hash, "default-dvm")]
    with open(os.path.join(src.mountpoint, "home", "user", ".bashrc"), "w") as f:
        f.write("export FROM_DVM=1\n")
    q = dm.create()
    cid = dm.prepare(q, ["sh", "-c", "true"], "user", Stdio())
    c = engine.containers[cid]
    owner = {"qlite.owner": q.owner}
    assert c.spec.labels == {"qlite.qube": q.name, "qlite.kind": "disp", "qlite.home": ctx.home_hash, **owner}
    assert c.spec.command == ("sh", "-c", "true")
    assert c.spec.user == "user" and c.spec.workdir == "/rw/home/user"
    assert c.spec.read_only and c.spec.stdin_open and c.spec.image == IMAGE_ID
    vol = engine.volumes[volume_name(ctx.home_hash, q.name)]
    assert vol.labels["qlite.owner"] == q.owner and vol.labels["qlite.kind"] == "private"
    with open(os.path.join(vol.mountpoint, "home", "user", ".bashrc")) as f:
        assert f.read() == "export FROM_DVM=1\n"
    net = engine.networks[network_name(ctx.home_hash, q.name)]
    assert net.labels["qlite.owner"] == q.owner


def test_run_destroys_the_disposable(ctx, qm, dm, engine, dvm):
    engine.exit_code = 7
    assert dm.run(["false"], Stdio()) == 7
    assert [q.name for q in qm.list()] == ["default-dvm"]
    disp_objects = [c for c in engine.containers.values() if c.info.labels.get("qlite.kind") == "disp"]
    assert disp_objects == []
    assert list(engine.volumes) == [volume_name(ctx.home_hash, "default-dvm")]
    assert engine.networks == {}


def test_run_destroys_the_disposable_when_the_engine_fails(ctx, qm, dm, engine, dvm):
    engine.fail["attach_and_start"] = EngineError("fake: attach failed")
    with pytest.raises(EngineError):
        dm.run(["true"], Stdio())
    assert [q.name for q in qm.list()] == ["default-dvm"]
    assert engine.containers == {} and engine.networks == {}
    assert list(engine.volumes) == [volume_name(ctx.home_hash, "default-dvm")]


def test_run_needs_a_command(dm, dvm):
    with pytest.raises(InvalidValue):
        dm.run([], Stdio())


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Terminated(15), 143),
        (Terminated(1), 129),
        (KeyboardInterrupt(), 130),
        (RuntimeError(), 125),
    ],
)
def test_exit_code_for(exc, code):
    assert exit_code_for(exc) == code


def test_a_disposable_cannot_be_started_or_cloned(qm, dm, dvm):
    q = dm.create()
    from qlite.errors import StateError

    with pytest.raises(StateError):
        qm.start(q.name)
    with pytest.raises(InvalidValue):
        qm.clone(q.name, "copy")


# -- reconcile -------------------------------------------------------------------------


def test_reap_removes_a_dead_owners_disposable_and_keeps_a_live_one(ctx, qm, dm, engine, dvm):
    dead = dm.create()
    dm.prepare(dead, ["sleep", "1"], "user", Stdio())
    ctx.store.execute("UPDATE qubes SET owner=? WHERE name=?", (dead_owner(), dead.name))
    alive = dm.create()
    dm.prepare(alive, ["sleep", "1"], "user", Stdio())
    assert objects_of(ctx, engine, dead.name) == {"container": True, "volume": True, "network": True}

    assert orphaned_rows(ctx) == [dead.name]
    report = reap(ctx)
    assert report.disposables == [dead.name]
    assert not qm.exists(dead.name)
    assert objects_of(ctx, engine, dead.name) == {"container": False, "volume": False, "network": False}
    assert ctx.store.query("SELECT * FROM features WHERE qube=?", (dead.name,)) == []
    # The live owner's disposable, and the ordinary qube, are untouched.
    assert qm.exists(alive.name)
    assert objects_of(ctx, engine, alive.name) == {"container": True, "volume": True, "network": True}
    assert qm.exists("default-dvm")
    assert volume_name(ctx.home_hash, "default-dvm") in engine.volumes


def test_reap_with_nothing_to_do_does_not_touch_the_engine(ctx, dm, engine, dvm):
    dm.create()
    engine.calls.clear()
    report = reap(ctx)
    assert report.empty
    assert engine.calls == []


def test_reap_of_a_row_with_garbage_owner(ctx, qm, dm, engine):
    q = dm.create(template=TEMPLATE)
    ctx.store.execute("UPDATE qubes SET owner=? WHERE name=?", ("garbage", q.name))
    assert reap(ctx).disposables == [q.name]
    assert not qm.exists(q.name)


def test_sweep_removes_stray_objects_of_this_home_only(ctx, qm, engine):
    hh = ctx.home_hash
    engine.create_volume(f"qlite-{hh}-gone-private", {"qlite.qube": "gone", "qlite.kind": "private", "qlite.home": hh})
    engine.create_network(
        f"qlite-{hh}-orphan",
        {"qlite.qube": "disp5", "qlite.kind": "net", "qlite.home": hh, "qlite.owner": dead_owner()},
    )
    engine.create_volume(
        "qlite-otherhome-x-private", {"qlite.qube": "x", "qlite.kind": "private", "qlite.home": "otherhome"}
    )
    engine.create_volume("not-ours", {})
    report = reap(ctx, sweep=True)
    assert report.volumes == [f"qlite-{hh}-gone-private"]
    assert report.networks == [f"qlite-{hh}-orphan"]
    assert set(engine.volumes) == {"qlite-otherhome-x-private", "not-ours"}


@pytest.mark.parametrize("kind", ["volume", "network"])
def test_sweep_never_removes_a_new_object_that_took_a_stale_listed_name(ctx, dm, engine, kind):
    """A sweep lists a dead command's disp object; before it gets to it, a
    reaper destroys that disposable and a new command makes its own of the
    same name. The sweep must leave the new one alone."""
    hh = ctx.home_hash
    name = volume_name(hh, "disp1386") if kind == "volume" else network_name(hh, "disp1386")
    create = engine.create_volume if kind == "volume" else engine.create_network
    objects = engine.volumes if kind == "volume" else engine.networks
    create(name, {"qlite.qube": "disp1386", "qlite.kind": "x", "qlite.home": hh, "qlite.owner": dead_owner()})
    listing = getattr(engine, f"list_{kind}s")
    listed: list[bool] = []

    def list_then_replace(labels):
        out = listing(labels)
        if not listed:  # the sweep's own listing: now the name changes hands
            listed.append(True)
            getattr(engine, f"remove_{kind}")(name)
            q = dm.create(template=TEMPLATE)
            ctx.store.execute("UPDATE qubes SET name='disp1386' WHERE name=?", (q.name,))
            create(
                name, {"qlite.qube": "disp1386", "qlite.kind": "x", "qlite.home": hh, "qlite.owner": current_owner()}
            )
        return out

    setattr(engine, f"list_{kind}s", list_then_replace)
    report = reap(ctx, sweep=True)
    assert listed
    assert getattr(report, f"{kind}s") == []
    assert objects[name].labels["qlite.owner"] == current_owner()


def test_a_stale_host_table_never_replaces_a_newer_one(ctx, engine, paths):
    """Command A reads the qubes for the host table; before it loads it,
    command B makes a disposable's network and loads its own table. A's
    table, without B's qube, must not be the one left in the kernel: B's
    qube would run without its firewall."""
    other = Store(paths.db)
    # One kernel: one record of what was loaded.
    ctx_b = Context(
        paths,
        engine=engine,
        store=other,
        runtime_probe=ctx.runtime_probe,
        net_apply=ctx.net_apply,
        mounts=ctx.mounts,
        daemon=ctx.daemon,
    )
    loaded = ctx.net_apply.scripts
    first = DisposableManager(ctx).create(template=TEMPLATE)
    QubeManager(ctx).net.prepare(first)

    a_listed, a_go = threading.Event(), threading.Event()
    listing = engine.list_networks

    def pausing_list(labels):
        out = listing(labels)
        if threading.current_thread().name == "A" and not a_listed.is_set():
            a_listed.set()
            assert a_go.wait(10)
        return out

    engine.list_networks = pausing_list
    a = threading.Thread(target=QubeManager(ctx).net.apply_host, name="A")
    a.start()
    assert a_listed.wait(10)
    b_done = threading.Event()
    second = DisposableManager(ctx_b).create(template=TEMPLATE)

    def command_b():
        QubeManager(ctx_b).net.prepare(second)
        b_done.set()

    b = threading.Thread(target=command_b, name="B")
    b.start()
    b_done.wait(0.5)  # B is held until A has loaded what it read
    a_go.set()
    a.join(10)
    b.join(10)
    other.close()
    assert not a.is_alive() and not b.is_alive()
    assert f"chain {nft.chain_name(second.name)} " in loaded[-1][0]
    assert f"chain {nft.chain_name(first.name)} " in loaded[-1][0]


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (500, "no volume with name qlite-x found in database: no such volume", True),
        (500, 'no container with name or ID "x" found: no such container', True),
        (500, "unable to find network with name or ID x: network not found", True),
        (500, "volume is being used", False),
        (500, "open /var/lib/x: no such file or directory", False),
        (409, "no such volume", False),
        (200, "", False),
    ],
)
def test_a_removal_that_lost_a_race_counts_as_done(status, text, expected):
    class Resp:
        status_code = status

    Resp.text = text
    assert gone(Resp()) is expected


def test_a_reaper_takes_an_orphan_over_before_destroying_it(ctx, qm, dm, dvm, monkeypatch):
    """Two commands reaping at once: the orphan is first made the reaper's
    own in one transaction, so another reaper sees a live owner and leaves
    it (and a disposable that later takes the name) alone."""
    orphan = dm.create()
    ctx.store.execute("UPDATE qubes SET owner=? WHERE name=?", (dead_owner(), orphan.name))
    seen = {}
    real_destroy = QubeManager.destroy

    def destroy(self, q):
        seen["owner"] = ctx.store.query_one("SELECT owner FROM qubes WHERE name=?", (q.name,))["owner"]
        seen["orphaned_for_others"] = orphaned_rows(ctx)
        return real_destroy(self, q)

    monkeypatch.setattr(QubeManager, "destroy", destroy)
    assert reap(ctx).disposables == [orphan.name]
    assert seen == {"owner": current_owner(), "orphaned_for_others": []}
    assert not qm.exists(orphan.name)
