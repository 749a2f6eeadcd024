"""SQLite access: WAL, versioned migrations, one writer at a time.

Several qlite processes (CLI, TUI, daemon) share one database. Reads run
concurrently under WAL; every write runs inside ``BEGIN IMMEDIATE`` so
writers queue on SQLite's lock instead of failing half-way.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qlite.errors import StateError
from qlite.state.migrations import MIGRATIONS

BUSY_TIMEOUT_S = 30.0


class Store:
    def __init__(self, path: Path | str, migrations: list[str] | None = None) -> None:
        self.path = str(path)
        self._migrations = MIGRATIONS if migrations is None else migrations
        try:
            self.conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the qlite database {self.path}: {exc}") from exc
        self.conn.row_factory = sqlite3.Row
        try:
            self._enable_wal()
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StateError(f"cannot use the qlite database {self.path}: {exc}") from exc
        except StateError:
            self.conn.close()
            raise

    def _enable_wal(self) -> None:
        """Switch to WAL once. Several processes opening a new database at
        the same moment race for the lock this needs, and SQLite's busy
        handler does not cover it, so retry for a bounded time."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @property
    def version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Bring the schema to the newest version, one migration per step."""
        if self.version >= len(self._migrations):
            if self.version > len(self._migrations):
                raise StateError(
                    f"database {self.path} has schema {self.version}, newer than this qlite "
                    f"({len(self._migrations)}); upgrade qlite"
                )
            return
        with self.transaction():
            # Re-read under the write lock: another process may have migrated.
            for version in range(self.version, len(self._migrations)):
                for statement in _split_sql(self._migrations[version]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write. Nested use joins the outer transaction."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, args).fetchone()

    def execute(self, sql: str, args: tuple = ()) -> int:
        with self.transaction() as conn:
            return conn.execute(sql, args).rowcount

    def close(self) -> None:
        self.conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would COMMIT early).
    SQLite itself decides where a statement ends, so strings, comments and
    triggers are handled as SQLite handles them."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                out.append(buf.strip())
            buf = ""
    if _has_code(buf):
        out.append(buf.strip())
    return out


def _has_code(sql: str) -> bool:
    lines = (ln.split("--", 1)[0].strip() for ln in sql.splitlines())
    return any(ln.strip(";") for ln in lines)
