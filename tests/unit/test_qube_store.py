"""QubeStore owns the qube tables: its calls, and a check that no other
module runs SQL on those tables."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from qlite.domain.model import Qube
from qlite.errors import NotFound
from qlite.state import Store
from qlite.state.qubes import QubeStore

QLITE = Path(__file__).resolve().parents[2] / "qlite"
QUBE_TABLES = ("qubes", "tags", "features", "firewall", "device_assignments")


@pytest.fixture
def qs(tmp_path) -> QubeStore:
    store = Store(tmp_path / "q.db")
    yield QubeStore(store)
    store.close()


def qube(name: str, **kw) -> Qube:
    return Qube(name=name, klass=kw.pop("klass", "AppVM"), label="red", template="t", **kw)


def test_insert_find_list_delete(qs):
    a = qube("a", tags={"x", "y"})
    qs.insert(a)
    qs.features.set("a", "k", "v")
    qs.set_firewall("a", "[]")
    assert qs.find("a") == a and qs.exists("a") and qs.names() == {"a"}
    assert [q.name for q in qs.list()] == ["a"]
    with pytest.raises(sqlite3.IntegrityError):
        qs.insert(qube("a"))
    qs.delete("a")
    assert qs.find("a") is None and qs.features.all("a") == {} and qs.firewall("a") is None


def test_an_insert_inside_a_failed_transaction_leaves_nothing(qs):
    with pytest.raises(RuntimeError), qs.transaction():
        qs.insert(qube("a"))
        qs.copy_settings("nobody", "a")
        raise RuntimeError
    assert not qs.exists("a")


@pytest.mark.parametrize(
    ("column", "value", "ok"),
    [
        ("memory", 512, True),
        ("autostart", True, True),
        ("netvm", None, True),
        ("pending", "1:2", True),
        ("name", "b", False),
        ("uuid", "x", False),
        ("class", "DispVM", False),
        ("created_at", 0, False),
        ("memory=0, name", 1, False),
    ],
)
def test_set_column_only_settable_columns(qs, column, value, ok):
    qs.insert(qube("a"))
    if ok:
        qs.set_column("a", column, value)
    else:
        with pytest.raises(ValueError):
            qs.set_column("a", column, value)
        assert qs.find("a").name == "a"


def test_del_tags_is_all_or_nothing(qs):
    qs.insert(qube("a", tags={"x", "y"}))
    with pytest.raises(NotFound):
        qs.del_tags("a", ["x", "nope"])
    assert qs.find("a").tags == {"x", "y"}
    qs.del_tags("a", ["x"])
    assert qs.find("a").tags == {"y"}


def test_take_over_goes_to_one_reaper_only(qs):
    qs.insert(qube("d1", klass="DispVM", owner="1:1"))
    assert qs.take_over("d1", lambda row: row["owner"] == "1:1", "me:1") is not None
    assert qs.take_over("d1", lambda row: row["owner"] == "1:1", "other:1") is None
    assert qs.find("d1").owner == "me:1"


def test_tagged_disposables_are_taken_once(qs):
    for i, name in enumerate(("d1", "d2")):
        qs.insert(
            qube(name, klass="DispVM", default_dispvm_raw="dvm", owner="daemon", tags={"ready"}, created_at=float(i))
        )
    assert qs.disposables_of("dvm", "ready") == ["d1", "d2"]
    assert qs.dvms_with_tagged_disposables("ready") == {"dvm"}
    assert qs.take_tagged_disposable("dvm", "ready", "me") == ("d1", "daemon")
    assert qs.disposables_of("dvm", "ready") == ["d2"]
    assert qs.untag("d2", "ready") is True and qs.untag("d2", "ready") is False
    assert qs.take_tagged_disposable("dvm", "ready", "me") is None
    qs.hand_to("d1", "spent", "daemon")
    assert qs.tagged("spent") == ["d1"] and qs.find("d1").owner == "daemon"


def test_assignments(qs):
    qs.insert(qube("a"))
    qs.assign("a", "uuid:u", read_only=True, required=False, paired=False)
    qs.assign("a", "serial:s", read_only=False, required=True, paired=True)
    assert [r["ident"] for r in qs.assignments("a")] == ["uuid:u", "serial:s"] or sorted(
        r["ident"] for r in qs.assignments("a")
    ) == ["serial:s", "uuid:u"]
    assert [r["ident"] for r in qs.assignments(paired=True)] == ["serial:s"]
    assert qs.unassign("a", "uuid:u") is True
    assert qs.unassign("a", "uuid:u") is False  # said so, not silently done


def test_features_holders(qs):
    qs.features.set("dom0", "preload-dispvm-max", "2")
    qs.features.set("dvm", "preload-dispvm-max", "1")
    assert qs.features.holders("preload-dispvm-max") == {"dom0": "2", "dvm": "1"}


TABLES = "|".join(QUBE_TABLES)
SQL_ON_QUBE_TABLES = re.compile(rf"\b(?:FROM|INTO|UPDATE|JOIN)\s+(?:{TABLES})\b")


def sql_on_qube_tables(text: str) -> list[int]:
    """Line numbers of TEXT that hold SQL on a qube table."""
    statement = re.compile(r"""["'][^"']*\b(?:SELECT|INSERT|UPDATE|DELETE)\b""")
    return [
        n for n, line in enumerate(text.splitlines(), 1) if statement.search(line) and SQL_ON_QUBE_TABLES.search(line)
    ]


def test_the_check_finds_such_sql():
    assert sql_on_qube_tables("""conn.execute("DELETE FROM tags WHERE qube=?", (n,))""") == [1]
    assert sql_on_qube_tables("""x = store.query("SELECT rules FROM firewall WHERE qube=?")""") == [1]
    assert sql_on_qube_tables("""s.execute(f"UPDATE qubes SET {c}=? WHERE name=?", v)""") == [1]
    assert sql_on_qube_tables("""store.query("SELECT * FROM device_attachments")""") == []


def test_no_module_but_the_store_runs_sql_on_the_qube_tables():
    offenders = []
    for path in sorted(QLITE.rglob("*.py")):
        rel = path.relative_to(QLITE.parent).as_posix()
        if rel in ("qlite/state/qubes.py", "qlite/state/migrations.py"):
            continue
        offenders += [f"{rel}:{n}" for n in sql_on_qube_tables(path.read_text())]
    assert offenders == []
