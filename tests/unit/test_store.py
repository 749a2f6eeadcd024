"""The SQLite store: migrations, WAL, transactions and concurrent writers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from qlite.errors import StateError
from qlite.state.migrations import MIGRATIONS
from qlite.state.store import Store, _split_sql

TABLES_V1 = {"qubes", "tags", "features", "templates", "template_revisions", "global_prefs"}


def tables(store: Store) -> set[str]:
    rows = store.query("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
    return {r["name"] for r in rows}


def raw_version(path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_fresh_db_migrates_to_the_newest_version(tmp_path):
    s = Store(tmp_path / "q.db")
    assert s.version == len(MIGRATIONS)
    assert TABLES_V1 <= tables(s)
    s.close()


def test_wal_mode_and_foreign_keys(tmp_path):
    s = Store(tmp_path / "q.db")
    assert s.query_one("PRAGMA journal_mode")[0] == "wal"
    assert s.query_one("PRAGMA foreign_keys")[0] == 1
    s.close()


def test_reopening_is_a_noop(tmp_path):
    path = tmp_path / "q.db"
    s = Store(path)
    s.execute("INSERT INTO global_prefs(key, value) VALUES('k', 'v')")
    schema = s.query("SELECT sql FROM sqlite_master ORDER BY name")
    s.close()
    s2 = Store(path)
    assert s2.version == len(MIGRATIONS)
    assert [r[0] for r in s2.query("SELECT sql FROM sqlite_master ORDER BY name")] == [r[0] for r in schema]
    assert s2.query_one("SELECT value FROM global_prefs WHERE key='k'")["value"] == "v"
    s2.migrate()  # explicit re-run: still nothing to do
    assert s2.version == len(MIGRATIONS)
    s2.close()


def test_migrations_apply_one_by_one(tmp_path):
    path = tmp_path / "q.db"
    Store(path, migrations=["CREATE TABLE a (x INTEGER);"]).close()
    assert raw_version(path) == 1
    s = Store(path, migrations=["CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y TEXT;"])
    assert s.version == 2
    s.execute("INSERT INTO a(x, y) VALUES(1, 'one')")
    s.close()


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "q.db"
    Store(path).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer") as exc:
        Store(path)
    assert "\n" not in str(exc.value)


def test_failed_migration_rolls_back_entirely(tmp_path):
    path = tmp_path / "q.db"
    Store(path, migrations=["CREATE TABLE base (x INTEGER);"]).close()
    broken = [
        "CREATE TABLE base (x INTEGER);",
        "CREATE TABLE partial_one (a INTEGER);\nINSERT INTO base(x) VALUES (1);\n",
        "CREATE TABLE partial_two (b INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    ]
    with pytest.raises((sqlite3.Error, StateError)):
        Store(path, migrations=broken)
    assert raw_version(path) == 1
    s = Store(path, migrations=["CREATE TABLE base (x INTEGER);"])
    assert tables(s) == {"base"}
    assert s.query("SELECT * FROM base") == []
    s.close()


def test_failed_first_migration_leaves_an_empty_db(tmp_path):
    path = tmp_path / "q.db"
    with pytest.raises((sqlite3.Error, StateError)):
        Store(path, migrations=["CREATE TABLE t (x);\nCREATE TABLE t (y);"])
    assert raw_version(path) == 0
    conn = sqlite3.connect(str(path))
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path):
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not an SQLite database, just some text that is long enough" * 10)
    with pytest.raises(StateError):
        Store(path)


def test_an_unopenable_path_is_a_state_error(tmp_path):
    with pytest.raises(StateError):
        Store(tmp_path / "missing-dir" / "q.db")


# -- _split_sql -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("", []),
        ("   \n\n", []),
        ("-- only a comment\n-- another", []),
        ("CREATE TABLE a (x);", ["CREATE TABLE a (x);"]),
        ("CREATE TABLE a (x);\nCREATE TABLE b (y);", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]),
        (
            "CREATE TABLE a (\n  x INTEGER, -- the x\n  y TEXT -- the y; not the end\n);",
            ["CREATE TABLE a (\n  x INTEGER, -- the x\n  y TEXT -- the y; not the end\n);"],
        ),
        (
            "-- header; with a semicolon\nCREATE TABLE a (x); -- trailing\n",
            ["-- header; with a semicolon\nCREATE TABLE a (x); -- trailing"],
        ),
        ("CREATE TABLE a (x)", ["CREATE TABLE a (x)"]),
        (";\n;\n", []),
        ("INSERT INTO t VALUES ('a--b');", ["INSERT INTO t VALUES ('a--b');"]),
    ],
)
def test_split_sql(script, expected):
    assert [" ".join(s.split()) for s in _split_sql(script)] == [" ".join(s.split()) for s in expected]


def test_split_sql_of_the_real_migrations_executes(tmp_path):
    conn = sqlite3.connect(":memory:")
    for m in MIGRATIONS:
        for stmt in _split_sql(m):
            conn.execute(stmt)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES_V1 <= names


# -- transactions -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "q.db", migrations=["CREATE TABLE t (n INTEGER, who TEXT);"])
    yield s
    s.close()


def count(s: Store) -> int:
    return s.query_one("SELECT count(*) FROM t")[0]


def test_transaction_commits(store):
    with store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    assert count(store) == 1
    assert not store.conn.in_transaction


def test_transaction_rolls_back_on_error(store):
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        raise RuntimeError("boom")
    assert count(store) == 0
    assert not store.conn.in_transaction


def test_nested_transaction_joins_the_outer_one(store):
    with pytest.raises(RuntimeError), store.transaction() as outer:
        outer.execute("INSERT INTO t VALUES (1, 'outer')")
        with store.transaction() as inner:
            assert inner is outer
            inner.execute("INSERT INTO t VALUES (2, 'inner')")
        assert store.conn.in_transaction  # the inner block did not commit
        store.execute("INSERT INTO t VALUES (3, 'execute')")  # joins as well
        raise RuntimeError("roll everything back")
    assert count(store) == 0


def test_nested_transaction_commits_once(store):
    with store.transaction():
        with store.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (1, 'x')")
        store.execute("INSERT INTO t VALUES (2, 'y')")
    assert count(store) == 2


def test_execute_returns_rowcount(store):
    store.execute("INSERT INTO t VALUES (1, 'a')")
    store.execute("INSERT INTO t VALUES (2, 'a')")
    assert store.execute("DELETE FROM t WHERE who='a'") == 2
    assert store.execute("DELETE FROM t WHERE who='a'") == 0


# -- concurrency ------------------------------------------------------------------


def test_two_stores_in_two_threads_lose_no_writes(tmp_path):
    path = tmp_path / "q.db"
    migrations = ["CREATE TABLE t (n INTEGER, who TEXT);"]
    stores = [Store(path, migrations=migrations), Store(path, migrations=migrations)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(s: Store, who: str) -> None:
        try:
            start.wait()
            for n in range(200):
                s.execute("INSERT INTO t VALUES (?, ?)", (n, who))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for who in ("w0", "w1"):
        rows = stores[0].query("SELECT n FROM t WHERE who=? ORDER BY n", (who,))
        assert [r[0] for r in rows] == list(range(200))
    for s in stores:
        s.close()


def test_concurrent_first_open_of_a_fresh_db(tmp_path):
    """Several qlite processes (CLI, TUI, daemon) may open a new home at
    the same moment; each must get a migrated store, not an error."""
    failures: list[str] = []
    # The race is narrow (a few percent of rounds hit it), so try many rounds.
    for round_ in range(300):
        path = tmp_path / f"fresh-{round_}.db"
        barrier = threading.Barrier(4)

        def opener(path=path, barrier=barrier) -> None:
            barrier.wait()
            try:
                s = Store(path)
                assert s.version == len(MIGRATIONS)
                s.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=opener) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if failures:
            break
    assert not failures, f"{len(failures)} opens failed, e.g. {failures[0]}"
