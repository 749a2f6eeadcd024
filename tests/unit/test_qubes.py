"""QubeManager over the recording fake engine and a real store."""

from __future__ import annotations

import os

import pytest

from qlite.core.qubes import QubeManager
from qlite.core.reconcile import reap
from qlite.domain.model import Qube, next_start_note
from qlite.domain.prefs import GlobalPrefs
from qlite.domain.runcommand import shimmed
from qlite.domain.spec import AGENT_COMMAND, container_name, network_name, volume_name
from qlite.engines.base import Stdio
from qlite.errors import (
    AlreadyExists,
    EngineError,
    InvalidName,
    InvalidValue,
    NotFound,
    QliteError,
    StateError,
)
from qlite.state.owners import current_owner

from .conftest import HOME_UID, IMAGE_ID, TEMPLATE, dead_owner, dump_store, insert_row


@pytest.fixture
def qm(ctx) -> QubeManager:
    return QubeManager(ctx)


# -- create: validate first, then act ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"name": "1bad"}, InvalidName, id="bad-name"),
        pytest.param({"name": "dom0"}, InvalidName, id="reserved-name"),
        pytest.param({"name": "disp12"}, InvalidName, id="disp-name"),
        pytest.param({"name": "q" * 32}, InvalidName, id="32-chars"),
        pytest.param({"name": "x-dm"}, InvalidName, id="dm-name"),
        pytest.param({"template": "fedora-40"}, NotFound, id="unknown-template"),
        pytest.param({"label": "pink"}, InvalidValue, id="bad-label"),
        pytest.param({"name": TEMPLATE}, AlreadyExists, id="template-name"),
        pytest.param({"klass": "TemplateVM"}, InvalidValue, id="templatevm"),
        pytest.param({"klass": "DispVM"}, InvalidValue, id="dispvm"),
        pytest.param({"klass": "HVM"}, InvalidValue, id="unknown-class"),
        pytest.param({"memory": 8}, InvalidValue, id="memory-too-small"),
        pytest.param({"vcpus": 0}, InvalidValue, id="no-vcpus"),
        pytest.param({"netvm": "nonexistent"}, NotFound, id="unknown-netvm"),
        pytest.param({"netvm": "work"}, InvalidValue, id="own-netvm"),
        pytest.param({"props": {"memory": "lots"}}, InvalidValue, id="bad-prop-value"),
        pytest.param({"props": {"colour": "red"}}, InvalidValue, id="unknown-prop"),
        pytest.param({"props": {"name": "other"}}, InvalidValue, id="read-only-prop"),
        pytest.param({"props": {"mode": "vm", "provides_network": "true"}}, InvalidValue, id="vm-gateway"),
        pytest.param({"props": {"mode": "kvm"}}, InvalidValue, id="unknown-mode"),
        pytest.param({"props": {"default_dispvm": "nonexistent"}}, NotFound, id="unknown-dispvm"),
    ],
)
def test_create_validates_before_acting(ctx, qm, engine, kwargs, error):
    args = {"name": "work", "label": "red", "template": TEMPLATE, **kwargs}
    name = args.pop("name")
    before_db, before_engine = dump_store(ctx.store), engine.snapshot()
    with pytest.raises(error) as exc:
        qm.create(name, **args)
    assert "\n" not in str(exc.value)
    assert dump_store(ctx.store) == before_db
    assert engine.snapshot() == before_engine
    assert engine.mutating_calls() == []


def test_create_without_any_template(ctx, qm, engine):
    with pytest.raises(InvalidValue, match="default_template"):
        qm.create("work", label="red")
    assert not qm.exists("work") and engine.mutating_calls() == []


def test_create_duplicate_changes_nothing(ctx, qm, engine):
    qm.create("work", label="red", template=TEMPLATE)
    before_db, before_engine = dump_store(ctx.store), engine.snapshot()
    engine.calls.clear()
    with pytest.raises(AlreadyExists):
        qm.create("work", label="blue", template=TEMPLATE)
    assert dump_store(ctx.store) == before_db
    assert engine.snapshot() == before_engine
    assert engine.mutating_calls() == []


def test_create_makes_a_labelled_private_volume(ctx, qm, engine):
    q = qm.create("work", label="blue", template=TEMPLATE, memory=512, vcpus=3)
    assert (q.name, q.klass, q.label, q.template, q.memory, q.vcpus) == ("work", "AppVM", "blue", TEMPLATE, 512, 3)
    assert qm.get("work") == q
    vol = engine.volumes[volume_name(ctx.home_hash, "work")]
    assert vol.labels == {"qlite.qube": "work", "qlite.kind": "private", "qlite.home": ctx.home_hash}
    home = os.path.join(vol.mountpoint, "home", "user")
    st = os.stat(home)
    assert (st.st_uid, st.st_gid) == (HOME_UID, HOME_UID)
    assert st.st_mode & 0o777 == 0o700
    # Nothing runs yet: no container, no network.
    assert engine.containers == {} and engine.networks == {}
    assert engine.images == {IMAGE_ID: engine.images[IMAGE_ID]}


def test_create_with_props_and_netvm(qm):
    q = qm.create(
        "work",
        label="red",
        template=TEMPLATE,
        netvm="none",
        props={"autostart": "on", "maxmem": "1024", "default_user": "root", "mode": "container"},
    )
    got = qm.get("work")
    assert got == q
    assert (got.autostart, got.maxmem, got.default_user, got.netvm_raw) == (True, 1024, "root", "")
    assert qm.resolved_netvm(got) is None


def test_create_rolls_back_the_row_when_the_volume_fails(ctx, qm, engine):
    before_db = dump_store(ctx.store)
    engine.fail["create_volume"] = EngineError("fake: disk full")
    with pytest.raises(EngineError):
        qm.create("work", label="red", template=TEMPLATE)
    assert dump_store(ctx.store) == before_db
    assert engine.volumes == {}


# -- lifecycle ----------------------------------------------------------------------------


@pytest.fixture
def work(qm):
    return qm.create("work", label="blue", template=TEMPLATE)


def test_start_creates_a_read_only_labelled_container(ctx, qm, engine, work):
    qm.start("work")
    c = engine.container_by_name(container_name(ctx.home_hash, "work"))
    assert c is not None and c.info.state == "running"
    spec = c.spec
    assert spec.image == IMAGE_ID
    assert spec.read_only is True
    assert spec.labels == {"qlite.qube": "work", "qlite.kind": "app", "qlite.home": ctx.home_hash, "qlite.agent": "1"}
    assert spec.command == AGENT_COMMAND  # the agent is the qube's main process
    mounts = {m.target: m for m in spec.mounts}
    vol = engine.volumes[volume_name(ctx.home_hash, "work")]
    assert mounts["/rw"].source == vol.name
    assert "/home/user" not in mounts  # /home is the template's link into /rw
    home = os.path.join(vol.mountpoint, "home", "user")
    assert os.stat(home).st_uid == HOME_UID and os.stat(home).st_mode & 0o777 == 0o700
    # The default netvm is the host uplink, so the qube has its own network.
    net = network_name(ctx.home_hash, "work")
    assert spec.network == net
    assert engine.networks[net].labels == {"qlite.qube": "work", "qlite.kind": "net", "qlite.home": ctx.home_hash}
    assert qm.state_of(qm.get("work")).value == "Running"


def test_start_without_netvm_has_no_network(ctx, qm, engine, work):
    qm.set_pref("work", "netvm", "none")
    qm.start("work")
    c = engine.container_by_name(container_name(ctx.home_hash, "work"))
    assert c.spec.network == "none"
    assert engine.networks == {}
    assert not any(call[0] == "create_network" for call in engine.calls)


def test_start_uses_memory_settings(ctx, qm, engine, work):
    qm.set_pref("work", "memory", "700")
    qm.set_pref("work", "vcpus", "3")
    qm.start("work")
    spec = engine.container_by_name(container_name(ctx.home_hash, "work")).spec
    assert (spec.memory_mib, spec.vcpus) == (700, 3)
    qm.shutdown("work")
    qm.set_pref("work", "maxmem", "2000")
    qm.start("work")
    spec = engine.container_by_name(container_name(ctx.home_hash, "work")).spec
    assert spec.memory_mib == 2000


def test_start_twice(qm, work):
    qm.start("work")
    with pytest.raises(StateError, match="already running"):
        qm.start("work")
    qm.start("work", skip_if_running=True)


def test_start_reuses_the_network(ctx, qm, engine, work):
    qm.start("work")
    qm.shutdown("work")
    qm.start("work")
    assert [c[0] for c in engine.calls].count("create_network") == 1


def test_start_follows_the_current_template_revision(ctx, qm, engine, work):
    from qlite.core.templates import TemplateManager, image_ref

    engine.add_image("ef" * 32, (image_ref(TEMPLATE, 2),))
    TemplateManager(ctx)._record(TEMPLATE, 2, "ef" * 32, "update")
    qm.start("work")
    assert engine.container_by_name(container_name(ctx.home_hash, "work")).spec.image == "ef" * 32


def test_a_template_with_older_guest_tools_is_refused(ctx, qm, engine, work):
    """Guest tools before 2 have /home/user as a directory that qlite bound
    from the qube's own volume: such a template is rebuilt, never started."""
    from qlite.core.templates import TemplateManager, image_ref

    engine.add_image("ab" * 32, (image_ref(TEMPLATE, 2),), {"qlite.guest-tools": "1"})
    TemplateManager(ctx)._record(TEMPLATE, 2, "ab" * 32, "update")
    with pytest.raises(StateError, match="older guest tools"):
        qm.start("work")
    assert engine.containers == {}


def test_failed_start_removes_the_container(ctx, qm, engine, work):
    engine.fail["start"] = EngineError("fake: runsc failed")
    with pytest.raises(EngineError):
        qm.start("work")
    assert engine.containers == {}
    assert qm.state_of(qm.get("work")).value == "Halted"


def test_shutdown_removes_the_container(ctx, qm, engine, work):
    qm.start("work")
    assert qm.shutdown("work") is True
    assert engine.containers == {}
    assert qm.state_of(qm.get("work")).value == "Halted"
    assert qm.shutdown("work") is False
    # The private volume survives a shutdown.
    assert volume_name(ctx.home_hash, "work") in engine.volumes


def test_pause_and_unpause(qm, work):
    with pytest.raises(StateError):
        qm.pause("work")
    qm.start("work")
    qm.pause("work")
    assert qm.state_of(qm.get("work")).value == "Paused"
    with pytest.raises(StateError):
        qm.run("work", ["ls"], Stdio())
    qm.unpause("work")
    assert qm.state_of(qm.get("work")).value == "Running"
    assert qm.shutdown("work") is True


def test_run_autostarts_and_execs_as_the_default_user(ctx, qm, engine, work):
    engine.exit_code = 3
    assert qm.run("work", ["id", "-u"], Stdio()) == 3
    (call,) = [c for c in engine.calls if c[0] == "exec"]
    cid, argv, user, workdir, env = call[1]
    assert cid == container_name(ctx.home_hash, "work")
    # The command starts through the lookup shim (127/126 as podman answers).
    assert (argv, user, workdir, env) == (
        shimmed(["id", "-u"]),
        "user",
        "/home/user",
        {"QLITE_QUBE": "work", "PWD": "/home/user"},
    )
    qm.run("work", ["id"], Stdio(), user="root")
    assert engine.calls[-1][1][2:4] == ("root", "/")


def test_run_without_autostart(qm, work):
    with pytest.raises(StateError, match="not running"):
        qm.run("work", ["ls"], Stdio(), autostart=False)
    with pytest.raises(InvalidValue):
        qm.run("work", [], Stdio())


def test_kill(ctx, qm, engine, work):
    assert qm.kill("work") is False
    qm.start("work")
    assert qm.kill("work") is True
    assert engine.containers == {}


# -- remove ---------------------------------------------------------------------------------


def test_remove_refuses_while_running(ctx, qm, engine, work):
    qm.start("work")
    before_db, before_engine = dump_store(ctx.store), engine.snapshot()
    with pytest.raises(StateError, match="shut it down"):
        qm.remove("work")
    assert dump_store(ctx.store) == before_db
    assert engine.snapshot() == before_engine


def test_remove_after_shutdown_removes_everything(ctx, qm, engine, work):
    qm.add_tags("work", ["t1"])
    qm.features.set("work", "k", "v")
    qm.start("work")
    mountpoint = engine.volumes[volume_name(ctx.home_hash, "work")].mountpoint
    qm.shutdown("work")
    qm.remove("work")
    assert not qm.exists("work")
    assert engine.containers == {} and engine.volumes == {} and engine.networks == {}
    assert not os.path.exists(mountpoint)
    assert ctx.store.query("SELECT * FROM tags WHERE qube='work'") == []
    assert ctx.store.query("SELECT * FROM features WHERE qube='work'") == []
    with pytest.raises(NotFound):
        qm.get("work")


def test_remove_refuses_while_used(ctx, qm, engine, work):
    qm.set_pref("work", "template_for_dispvms", "True")
    insert_row(qm, "user-of-work", default_dispvm_raw="work")
    with pytest.raises(StateError, match="user-of-work"):
        qm.remove("work")
    assert qm.exists("work")


def test_remove_refuses_the_global_default_dispvm(ctx, qm, work):
    qm.set_pref("work", "template_for_dispvms", "True")
    GlobalPrefs(ctx.store).set("default_dispvm", "work")
    with pytest.raises(StateError, match="global default_dispvm"):
        qm.remove("work")


def test_remove_unknown(qm):
    with pytest.raises(NotFound):
        qm.remove("ghost")


def test_get_a_template_name(qm):
    with pytest.raises(InvalidValue, match="is a template"):
        qm.get(TEMPLATE)


# -- clone --------------------------------------------------------------------------------


def test_clone_copies_private_data_features_and_tags(ctx, qm, engine, work):
    src_vol = engine.volumes[volume_name(ctx.home_hash, "work")]
    secret = os.path.join(src_vol.mountpoint, "home", "user", "notes.txt")
    with open(secret, "w") as f:
        f.write("private notes")
    os.chown(secret, HOME_UID, HOME_UID)
    qm.set_pref("work", "memory", "800")
    qm.set_pref("work", "netvm", "none")
    qm.add_tags("work", ["alpha", "beta"])
    qm.features.set("work", "gui", "1")
    qm.features.set("work", "preload-dispvm-max", "2")

    clone = qm.clone("work", "work2")
    assert clone.name == "work2"
    got = qm.get("work2")
    assert (got.label, got.template, got.memory, got.netvm_raw) == ("blue", TEMPLATE, 800, "")
    assert got.tags == {"alpha", "beta"}
    assert qm.features.all("work2") == {"gui": "1", "preload-dispvm-max": "2"}
    dst_vol = engine.volumes[volume_name(ctx.home_hash, "work2")]
    assert dst_vol.mountpoint != src_vol.mountpoint
    assert dst_vol.labels["qlite.qube"] == "work2"
    copied = os.path.join(dst_vol.mountpoint, "home", "user", "notes.txt")
    with open(copied) as f:
        assert f.read() == "private notes"
    assert os.stat(copied).st_uid == HOME_UID
    # A copy, not a link: changing the clone leaves the source alone.
    with open(copied, "w") as f:
        f.write("changed")
    with open(secret) as f:
        assert f.read() == "private notes"
    # The source is unchanged.
    assert qm.get("work").tags == {"alpha", "beta"}
    assert qm.features.all("work") == {"gui": "1", "preload-dispvm-max": "2"}


@pytest.mark.parametrize(
    ("src", "dst", "error"),
    [
        ("ghost", "x", NotFound),
        ("work", "work", AlreadyExists),
        ("work", TEMPLATE, AlreadyExists),
        ("work", "dom0", InvalidName),
        ("work", "2bad", InvalidName),
    ],
)
def test_clone_errors_change_nothing(ctx, qm, engine, work, src, dst, error):
    before_db, before_engine = dump_store(ctx.store), engine.snapshot()
    engine.calls.clear()
    with pytest.raises(error):
        qm.clone(src, dst)
    assert dump_store(ctx.store) == before_db
    assert engine.snapshot() == before_engine
    assert engine.mutating_calls() == []


def test_failed_clone_copy_rolls_back(ctx, qm, engine, work, monkeypatch):
    def broken_copy(src, dst):
        raise EngineError("copying private data failed: fake")

    before_db = dump_store(ctx.store)
    vols = set(engine.volumes)
    monkeypatch.setattr(ctx.private_volumes, "copy", broken_copy)
    with pytest.raises(EngineError):
        qm.clone("work", "work2")
    assert dump_store(ctx.store) == before_db
    assert set(engine.volumes) == vols


# -- prefs ----------------------------------------------------------------------------------


@pytest.fixture
def row(qm) -> Qube:
    return insert_row(qm, "work", label="blue")


@pytest.mark.parametrize(
    ("prop", "text", "shown"),
    [
        ("label", "purple", "purple"),
        ("memory", "512", "512"),
        ("maxmem", "4096", "4096"),
        ("maxmem", "0", "0"),
        ("vcpus", "4", "4"),
        ("autostart", "on", "True"),
        ("autostart", "0", "False"),
        ("include_in_backups", "false", "False"),
        ("template_for_dispvms", "1", "True"),
        ("default_user", "root", "root"),
        ("mode", "container", "container"),
        ("provides_network", "off", "False"),
        ("netvm", "none", ""),
        ("netvm", "dom0", "dom0"),
        ("default_dispvm", "none", ""),
        ("template", TEMPLATE, TEMPLATE),
    ],
)
def test_set_pref(qm, row, prop, text, shown):
    qm.set_pref("work", prop, text)
    value, is_default = qm.get_prefs("work")[prop]
    assert value == shown
    assert is_default is False


@pytest.mark.parametrize(
    ("prop", "text", "error"),
    [
        ("label", "pink", InvalidValue),
        ("memory", "16", InvalidValue),
        ("vcpus", "many", InvalidValue),
        ("autostart", "perhaps", InvalidValue),
        ("name", "other", InvalidValue),
        ("class", "DispVM", InvalidValue),
        ("colour", "red", InvalidValue),
        ("mode", "hvm", InvalidValue),
        ("default_user", "alice", InvalidValue),
        ("template", "fedora-40", NotFound),
        ("netvm", "ghost", NotFound),
        ("netvm", "work", InvalidValue),
        ("default_dispvm", "ghost", NotFound),
        ("default_dispvm", "work", InvalidValue),  # not a disposable template
    ],
)
def test_set_pref_validation_changes_nothing(ctx, qm, row, prop, text, error):
    before = dump_store(ctx.store)
    with pytest.raises(error) as exc:
        qm.set_pref("work", prop, text)
    assert "\n" not in str(exc.value)
    assert dump_store(ctx.store) == before


def test_set_pref_of_an_unknown_qube(qm):
    with pytest.raises(NotFound):
        qm.set_pref("ghost", "label", "red")


def test_prefs_defaults_and_reset(ctx, qm, row):
    prefs = qm.get_prefs("work")
    assert prefs["name"] == ("work", False)
    assert prefs["class"] == ("AppVM", False)
    assert prefs["netvm"] == ("dom0", True)  # follows default_netvm
    assert prefs["default_dispvm"] == ("", True)
    assert prefs["memory"] == ("400", False)

    qm.set_pref("work", "netvm", "none")
    assert qm.get_prefs("work")["netvm"] == ("", False)
    assert qm.resolved_netvm(qm.get("work")) is None
    qm.reset_pref("work", "netvm")
    assert qm.get_prefs("work")["netvm"] == ("dom0", True)

    GlobalPrefs(ctx.store).set("default_netvm", "")
    assert qm.get_prefs("work")["netvm"] == ("", True)
    assert qm.resolved_netvm(qm.get("work")) is None

    insert_row(qm, "dvm", template_for_dispvms=True)
    qm.set_pref("work", "default_dispvm", "dvm")
    assert qm.get_prefs("work")["default_dispvm"] == ("dvm", False)
    qm.reset_pref("work", "default_dispvm")
    GlobalPrefs(ctx.store).set("default_dispvm", "dvm")
    assert qm.get_prefs("work")["default_dispvm"] == ("dvm", True)


@pytest.mark.parametrize("prop", ["label", "memory", "colour"])
def test_reset_pref_without_a_default(qm, row, prop):
    with pytest.raises(InvalidValue):
        qm.reset_pref("work", prop)


def test_global_prefs(ctx):
    gp = GlobalPrefs(ctx.store)
    assert gp.all() == {"default_template": "", "default_dispvm": "", "default_netvm": "dom0"}
    assert gp.is_default("default_netvm")
    gp.set("default_template", TEMPLATE)
    assert gp.get("default_template") == TEMPLATE and not gp.is_default("default_template")
    gp.reset("default_template")
    assert gp.get("default_template") == ""
    with pytest.raises(InvalidValue, match="no such global property"):
        gp.get("default_colour")
    with pytest.raises(InvalidValue):
        gp.set("bogus", "x")


def test_create_uses_default_template(ctx, qm):
    GlobalPrefs(ctx.store).set("default_template", TEMPLATE)
    assert qm.create("work", label="red").template == TEMPLATE


# -- features and tags ------------------------------------------------------------------------


def test_features(qm, row):
    f = qm.features
    assert f.all("work") == {}
    f.set("work", "gui", "1")
    f.set("work", "service.cups", "")
    f.set("work", "gui", "0")
    assert f.all("work") == {"gui": "0", "service.cups": ""}
    assert f.get("work", "gui") == "0"
    f.delete("work", "gui")
    assert f.all("work") == {"service.cups": ""}
    with pytest.raises(NotFound):
        f.get("work", "gui")
    with pytest.raises(NotFound):
        f.delete("work", "gui")
    for bad in ("", "has space", "tab\there"):
        with pytest.raises(InvalidValue):
            f.set("work", bad, "x")
    f.set("dom0", "preload-dispvm-max", "2")  # dom0 holds features without a row
    assert f.get("dom0", "preload-dispvm-max") == "2"


def test_tags(ctx, qm, row):
    assert qm.tags("work") == []
    qm.add_tags("work", ["b", "a"])
    qm.add_tags("work", ["a"])  # adding twice is fine
    assert qm.tags("work") == ["a", "b"]
    qm.del_tags("work", ["a"])
    assert qm.tags("work") == ["b"]
    before = dump_store(ctx.store)
    with pytest.raises(NotFound):
        qm.del_tags("work", ["b", "zzz"])  # all or nothing
    with pytest.raises(InvalidValue):
        qm.add_tags("work", ["ok", "not ok"])
    with pytest.raises(InvalidValue):
        qm.add_tags("work", [""])
    assert dump_store(ctx.store) == before


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("work-related", True),
        ("a_b", True),
        ("x" * 64, True),
        ("A9", True),
        ("bad tag!", False),
        ("x" * 65, False),
        ("@tag", False),
        ("a:b", False),
        ("é", False),
        ("a\nb", False),
    ],
)
def test_tag_characters(qm, row, tag, ok):
    if ok:
        qm.add_tags("work", [tag])
        assert tag in qm.tags("work")
    else:
        with pytest.raises(InvalidValue, match="letters, digits, '-' or '_'") as exc:
            qm.add_tags("work", [tag])
        assert "\n" not in str(exc.value).replace(repr(tag), "")
    with pytest.raises(NotFound):
        qm.add_tags("ghost", ["x"])


def test_list_and_info(ctx, qm, row):
    insert_row(qm, "alpha", label="red", netvm_raw="")
    assert [q.name for q in qm.list()] == ["alpha", "work"]
    info = qm.info(qm.get("alpha"), {}).as_json()
    assert info["netvm"] is None and info["netpath"] == "none" and info["state"] == "Halted"
    info = qm.info(qm.get("work"), {}).as_json()
    assert info["netvm"] == "dom0" and info["netpath"] == "netstack"
    for key in ("name", "class", "state", "label", "template", "netvm", "mode", "netpath"):
        assert key in info


def test_errors_are_qlite_errors():
    for exc in (AlreadyExists, InvalidName, InvalidValue, NotFound, StateError, EngineError):
        assert issubclass(exc, QliteError)


# -- a create, clone or remove cut short (kill -9) ------------------------------------------


def test_create_and_clone_leave_no_pending_mark(ctx, qm, work):
    qm.clone("work", "copy")
    rows = ctx.store.query("SELECT name, pending FROM qubes WHERE name IN ('work', 'copy') ORDER BY name")
    assert [(r["name"], r["pending"]) for r in rows] == [("copy", None), ("work", None)]


@pytest.mark.parametrize(
    "cut", ["create-before-volume", "create-after-volume", "remove-after-container", "remove-after-volume"]
)
def test_reap_finishes_what_a_dead_process_left_pending(ctx, qm, engine, cut):
    if cut.startswith("create"):
        q = qm.create("work", label="red", template=TEMPLATE)
        if cut == "create-before-volume":
            engine.remove_volume(volume_name(ctx.home_hash, "work"))
    else:
        q = qm.create("work", label="red", template=TEMPLATE)
        qm.start("work")
        qm.shutdown("work")
        engine.remove_container(container_name(ctx.home_hash, "work"), force=True)
        if cut == "remove-after-volume":
            engine.remove_volume(volume_name(ctx.home_hash, "work"))
    qm.features.set("work", "k", "v")
    ctx.store.execute("UPDATE qubes SET pending=? WHERE name='work'", (dead_owner(),))

    report = reap(ctx)

    assert report.interrupted == [q.name] and report.disposables == []
    assert not qm.exists("work")
    assert engine.containers == {} and engine.volumes == {} and engine.networks == {}
    assert ctx.store.query("SELECT * FROM features WHERE qube='work'") == []


def test_a_live_pending_qube_is_left_alone_and_cannot_start(ctx, qm, engine, work):
    ctx.store.execute("UPDATE qubes SET pending=? WHERE name='work'", (current_owner(),))
    assert reap(ctx).empty
    assert qm.exists("work") and volume_name(ctx.home_hash, "work") in engine.volumes
    with pytest.raises(StateError, match="being created or removed"):
        qm.start("work")


# -- prefs of a running qube: at once, or at its next start ----------------------------------


@pytest.mark.parametrize(
    ("prop", "mode", "note"),
    [
        (
            "memory",
            "container",
            "work is running: its new memory takes effect at its next start (podman cannot change "
            "a running gVisor sandbox's memory or CPUs: runsc has no 'update')",
        ),
        (
            "maxmem",
            "container",
            "work is running: its new maxmem takes effect at its next start (podman cannot change "
            "a running gVisor sandbox's memory or CPUs: runsc has no 'update')",
        ),
        (
            "vcpus",
            "vm",
            "work is running: its new vcpus takes effect at its next start "
            "(QEMU fixes a VM's memory and vCPUs when it boots)",
        ),
        ("netvm", "container", "work is running: its new netvm takes effect at its next start"),
        ("template", "vm", "work is running: its new template takes effect at its next start"),
        ("label", "container", None),
        ("default_user", "container", None),
        ("autostart", "vm", None),
    ],
)
def test_next_start_note(prop, mode, note):
    from qlite.core.runtimes import ContainerRuntime
    from qlite.vm.runner import VmRunner

    why = {"container": ContainerRuntime, "vm": VmRunner}[mode].resources_fixed_because
    assert next_start_note("work", prop, why) == note


def test_resource_prefs_of_a_running_qube_say_they_wait_for_its_next_start(ctx, qm, work):
    qm.set_pref("work", "memory", "600")
    assert ctx.warnings == []  # halted: nothing to say
    qm.start("work")
    for prop, value in (("memory", "700"), ("maxmem", "900"), ("vcpus", "2")):
        qm.set_pref("work", prop, value)
        assert ctx.warnings[-1].startswith(f"work is running: its new {prop} takes effect at its next start")
        assert qm.get_prefs("work")[prop][0] == value  # stored all the same
    count = len(ctx.warnings)
    qm.set_pref("work", "label", "purple")  # takes effect at once
    assert len(ctx.warnings) == count
