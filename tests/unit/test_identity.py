"""Names are not identities: every qube has a uuid of its own, and what was
granted to a removed qube is not inherited by a new one with its name."""

from __future__ import annotations

import re
import sqlite3

import pytest

from qlite.gpg import policyfile, splitgpg
from qlite.rpc.policy import parse_policy, unknown_qubes
from qlite.state import Store
from qlite.state.migrations import MIGRATIONS

from .conftest import TEMPLATE, insert_row

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
def qm(ctx):
    from qlite.core.qubes import QubeManager

    qm = QubeManager(ctx)
    qm.prefs.set("default_template", TEMPLATE)
    return qm


def test_every_qube_gets_its_own_uuid(qm):
    a, b = insert_row(qm, "a"), insert_row(qm, "b")
    assert UUID_RE.fullmatch(qm.get("a").uuid) and qm.get("a").uuid == a.uuid
    assert a.uuid != b.uuid
    d = qm.get("a").derive(name="c")
    assert d.uuid != a.uuid and d.tags is not a.tags


def test_a_qube_recreated_under_an_old_name_is_someone_else(qm):
    old = insert_row(qm, "vault").uuid
    qm.qstore.delete("vault")
    assert insert_row(qm, "vault").uuid != old


def test_clone_gets_a_new_identity(qm):
    qm.create("src", label="blue", template=TEMPLATE)
    qm.clone("src", "dst")
    assert qm.get("dst").uuid != qm.get("src").uuid


def test_the_migration_gives_existing_qubes_distinct_uuids(tmp_path):
    path = tmp_path / "old.db"
    old = Store(path, migrations=MIGRATIONS[:4])
    for name in ("a", "b", "c"):
        old.execute(
            "INSERT INTO qubes(name, class, label, memory, vcpus, created_at) VALUES(?,?,?,?,?,?)",
            (name, "AppVM", "red", 400, 2, 0.0),
        )
    old.close()
    new = Store(path)
    uuids = {r["name"]: r["uuid"] for r in new.query("SELECT name, uuid FROM qubes")}
    assert len(set(uuids.values())) == 3 and all(UUID_RE.fullmatch(u) for u in uuids.values())
    with pytest.raises(sqlite3.IntegrityError):
        new.execute("UPDATE qubes SET uuid=? WHERE name='b'", (uuids["a"],))
    new.close()


def _policy(ctx) -> str:
    return (ctx.paths.policy_dir / policyfile.POLICY_FILE).read_text()


def _named(ctx) -> set[str]:
    """Every qube the managed policy's rules name."""
    rules = parse_policy(_policy(ctx), policyfile.POLICY_FILE)
    return {
        n
        for r in rules
        for n in (str(r.source), str(r.target), r.params.get("target"), r.params.get("default_target"))
        if n and not n.startswith("@")
    }


@pytest.mark.parametrize("removed", ["vault", "client"])
def test_removing_a_qube_drops_its_grants(ctx, qm, removed):
    """The managed policy is rewritten and the broker told to forget the
    qube's approvals; a new qube with the old name is named by nothing."""
    qm.create("client", label="blue", template=TEMPLATE)
    other = qm.create("other", label="blue", template=TEMPLATE)
    splitgpg.setup(ctx, qm, "vault", ["client", "other"])
    assert _named(ctx) == {"client", "other", "vault"}
    gone = qm.get(removed)
    qm.remove(removed)
    assert removed not in _named(ctx)
    assert ("forget", gone.uuid) in ctx.daemon.calls
    if removed == "client":
        assert qm.features.all("vault")[policyfile.CLIENTS_FEATURE] == "other"
        assert _named(ctx) == {"other", "vault"}
    # The same name again: nothing grants it anything.
    qm.create(removed, label="red", template=TEMPLATE)
    assert removed not in _named(ctx)
    assert other.uuid == qm.get("other").uuid


def test_removing_an_unrelated_qube_leaves_the_policy_alone(ctx, qm):
    qm.create("client", label="blue", template=TEMPLATE)
    qm.create("bystander", label="blue", template=TEMPLATE)
    splitgpg.setup(ctx, qm, "vault", ["client"])
    path = ctx.paths.policy_dir / policyfile.POLICY_FILE
    before = path.stat().st_mtime_ns
    qm.remove("bystander")
    assert path.stat().st_mtime_ns == before


POLICY = """\
qubes.Gpg * work vault ask default_target=vault
qubes.Filecopy * @anyvm @dispvm:gone-dvm allow
qubes.Filecopy * @tag:x @default ask target=ghost
qubes.GetDate * dom0 @adminvm allow
qubes.VMShell * @anyvm @dispvm allow
"""


@pytest.mark.parametrize(
    ("known", "flagged"),
    [
        ({"work", "vault", "gone-dvm", "ghost"}, []),
        ({"work", "vault"}, ["gone-dvm", "ghost"]),
        (set(), ["work", "vault", "gone-dvm", "ghost"]),
    ],
)
def test_lint_names_rules_for_qubes_that_do_not_exist(known, flagged):
    policy = parse_policy(POLICY, "50-test.policy")
    warnings = unknown_qubes(policy, known)
    named = [re.search(r"names qube '([^']+)'", w).group(1) for w in warnings]
    assert named == flagged
    assert all(w.startswith("50-test.policy:") for w in warnings)


def test_the_uuid_is_a_read_only_property(qm):
    from qlite.errors import InvalidValue

    a = insert_row(qm, "a")
    assert qm.get_prefs("a")["uuid"] == (a.uuid, False)
    with pytest.raises(InvalidValue, match="read-only"):
        qm.set_pref("a", "uuid", "00000000-0000-4000-8000-000000000000")
    assert qm.get("a").uuid == a.uuid
