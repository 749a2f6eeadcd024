"""QubeStore: the one owner of the qube tables (qubes, tags, features,
firewall rules, device assignments). Every other module asks it; none runs
SQL on those tables itself. It records what qubes *should* be; what runs
is the engine's and the runtimes' business."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from qlite.domain.model import Qube
from qlite.errors import InvalidValue, NotFound
from qlite.state.store import Store

# The qubes table's columns a caller may set one at a time (set_column):
# what a property or the lifecycle changes.
SETTABLE = frozenset(
    {
        "label",
        "template",
        "netvm",
        "provides_network",
        "memory",
        "maxmem",
        "vcpus",
        "autostart",
        "default_dispvm",
        "template_for_dispvms",
        "default_user",
        "include_in_backups",
        "mode",
        "owner",
        "pending",
    }
)
COLUMNS = (
    "name",
    "class",
    "label",
    "template",
    "netvm",
    "provides_network",
    "memory",
    "maxmem",
    "vcpus",
    "autostart",
    "default_dispvm",
    "template_for_dispvms",
    "default_user",
    "include_in_backups",
    "mode",
    "owner",
    "pending",
    "created_at",
    "uuid",
)


class QubeStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.features = Features(store)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic write; QubeStore's calls inside it join it."""
        return self.store.transaction()

    # -- qubes ------------------------------------------------------------------

    def _qube(self, row: sqlite3.Row) -> Qube:
        tags = {r["tag"] for r in self.store.query("SELECT tag FROM tags WHERE qube=?", (row["name"],))}
        return Qube(
            name=row["name"],
            klass=row["class"],
            label=row["label"],
            template=row["template"],
            netvm_raw=row["netvm"],
            provides_network=bool(row["provides_network"]),
            memory=row["memory"],
            maxmem=row["maxmem"],
            vcpus=row["vcpus"],
            autostart=bool(row["autostart"]),
            default_dispvm_raw=row["default_dispvm"],
            template_for_dispvms=bool(row["template_for_dispvms"]),
            default_user=row["default_user"],
            include_in_backups=bool(row["include_in_backups"]),
            mode=row["mode"],
            owner=row["owner"],
            pending=row["pending"],
            created_at=row["created_at"],
            tags=tags,
            uuid=row["uuid"],
        )

    def find(self, name: str) -> Qube | None:
        row = self.store.query_one("SELECT * FROM qubes WHERE name=?", (name,))
        return None if row is None else self._qube(row)

    def exists(self, name: str) -> bool:
        return self.store.query_one("SELECT 1 FROM qubes WHERE name=?", (name,)) is not None

    def names(self) -> set[str]:
        return {r["name"] for r in self.store.query("SELECT name FROM qubes")}

    def insert(self, q: Qube) -> None:
        """Q's row and tags (in the caller's transaction, if any). Raises
        sqlite3.IntegrityError if the name or uuid is taken."""
        values = (
            q.name,
            q.klass,
            q.label,
            q.template,
            q.netvm_raw,
            int(q.provides_network),
            q.memory,
            q.maxmem,
            q.vcpus,
            int(q.autostart),
            q.default_dispvm_raw,
            int(q.template_for_dispvms),
            q.default_user,
            int(q.include_in_backups),
            q.mode,
            q.owner,
            q.pending,
            q.created_at,
            q.uuid,
        )
        with self.transaction() as conn:
            conn.execute(f"INSERT INTO qubes({', '.join(COLUMNS)}) VALUES({', '.join('?' * len(COLUMNS))})", values)
            for tag in sorted(q.tags):
                conn.execute("INSERT INTO tags(qube, tag) VALUES(?, ?)", (q.name, tag))

    def copy_settings(self, src: str, dst: str) -> None:
        """Give DST (a new row) SRC's features and firewall rules."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO features(qube, key, value) SELECT ?, key, value FROM features WHERE qube=?", (dst, src)
            )
            conn.execute("INSERT INTO firewall(qube, rules) SELECT ?, rules FROM firewall WHERE qube=?", (dst, src))

    def delete(self, name: str) -> None:
        """NAME's row, with its tags, features, firewall rules and device
        assignments."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM qubes WHERE name=?", (name,))
            conn.execute("DELETE FROM features WHERE qube=?", (name,))

    def set_column(self, name: str, column: str, value: object) -> None:
        if column not in SETTABLE:
            raise ValueError(f"not a settable qube column: {column}")
        if isinstance(value, bool):
            value = int(value)
        self.store.execute(f"UPDATE qubes SET {column}=? WHERE name=?", (value, name))

    def unfinished(self) -> list[sqlite3.Row]:
        """(name, class, owner, pending) of every disposable and of every qube
        whose create, clone or remove is under way: what reaping looks at."""
        return self.store.query(
            "SELECT name, class, owner, pending FROM qubes WHERE class='DispVM' OR pending IS NOT NULL"
        )

    def take_over(self, name: str, still_orphaned: Callable[[sqlite3.Row], bool], me: str) -> sqlite3.Row | None:
        """Atomically: if STILL_ORPHANED(row) holds for NAME's row, mark it as
        ME's (its pending mark, or a disposable's owner) and return the row
        as it was; else None. Of two reapers, only one gets it."""
        with self.transaction() as conn:
            row = conn.execute("SELECT class, owner, pending FROM qubes WHERE name=?", (name,)).fetchone()
            if row is None or not still_orphaned(row):
                return None
            column = "pending" if row["pending"] is not None else "owner"
            conn.execute(f"UPDATE qubes SET {column}=? WHERE name=?", (me, name))
            return row

    def names_with_templates(self) -> set[str]:
        """Every name a qube or a template holds."""
        return {r[0] for r in self.store.query("SELECT name FROM qubes UNION SELECT name FROM templates")}

    def is_template(self, name: str) -> bool:
        return self.store.query_one("SELECT 1 FROM templates WHERE name=?", (name,)) is not None

    # -- tags -----------------------------------------------------------------------

    def add_tags(self, name: str, tags: Iterable[str]) -> None:
        with self.transaction() as conn:
            for tag in tags:
                conn.execute("INSERT OR IGNORE INTO tags(qube, tag) VALUES(?, ?)", (name, tag))

    def del_tags(self, name: str, tags: list[str]) -> None:
        """Remove every one of TAGS, or none: a missing one raises NotFound."""
        with self.transaction() as conn:
            for tag in tags:
                if not conn.execute("DELETE FROM tags WHERE qube=? AND tag=?", (name, tag)).rowcount:
                    raise NotFound(f"qube {name!r} has no tag {tag!r}")

    def untag(self, name: str, tag: str) -> bool:
        """Take TAG off NAME; False if it did not have it (someone else took it)."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM tags WHERE qube=? AND tag=?", (name, tag)).rowcount == 1

    def tagged(self, tag: str) -> list[str]:
        return [r["qube"] for r in self.store.query("SELECT qube FROM tags WHERE tag=?", (tag,))]

    def disposables_of(self, dvm: str, tag: str) -> list[str]:
        """DVM's disposables that carry TAG, oldest first."""
        rows = self.store.query(
            "SELECT q.name FROM qubes q JOIN tags t ON t.qube = q.name "
            "WHERE q.class='DispVM' AND q.default_dispvm=? AND t.tag=? ORDER BY q.created_at",
            (dvm, tag),
        )
        return [r["name"] for r in rows]

    def dvms_with_tagged_disposables(self, tag: str) -> set[str]:
        return {
            r["default_dispvm"]
            for r in self.store.query(
                "SELECT DISTINCT q.default_dispvm FROM qubes q JOIN tags t ON t.qube=q.name WHERE t.tag=?", (tag,)
            )
        }

    def take_tagged_disposable(self, dvm: str, tag: str, owner: str) -> tuple[str, str] | None:
        """Atomically: the oldest of DVM's disposables with TAG loses the tag
        and becomes OWNER's; its name and its owner before. None if none."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT q.name, q.owner FROM qubes q JOIN tags t ON t.qube = q.name WHERE q.class='DispVM' "
                "AND q.default_dispvm=? AND t.tag=? ORDER BY q.created_at LIMIT 1",
                (dvm, tag),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM tags WHERE qube=? AND tag=?", (row["name"], tag))
            conn.execute("UPDATE qubes SET owner=? WHERE name=?", (owner, row["name"]))
        return row["name"], row["owner"]

    def hand_to(self, name: str, tag: str, owner: str) -> None:
        """Tag NAME and make it OWNER's, at once."""
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO tags(qube, tag) VALUES(?, ?)", (name, tag))
            conn.execute("UPDATE qubes SET owner=? WHERE name=?", (owner, name))

    # -- firewall rules (as the JSON text net/ writes) --------------------------------

    def firewall(self, name: str) -> str | None:
        row = self.store.query_one("SELECT rules FROM firewall WHERE qube=?", (name,))
        return None if row is None else row["rules"]

    def set_firewall(self, name: str, rules: str | None) -> None:
        """Store RULES for NAME; None goes back to the default."""
        if rules is None:
            self.store.execute("DELETE FROM firewall WHERE qube=?", (name,))
        else:
            self.store.execute(
                "INSERT INTO firewall(qube, rules) VALUES(?, ?) ON CONFLICT(qube) DO UPDATE SET rules=excluded.rules",
                (name, rules),
            )

    # -- device assignments --------------------------------------------------------------

    def assignments(self, qube: str | None = None, paired: bool | None = None) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM device_assignments", list[object]()
        where = []
        if qube is not None:
            where.append("qube=?")
            args.append(qube)
        if paired is not None:
            where.append("paired=?")
            args.append(int(paired))
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.store.query(sql + " ORDER BY qube", tuple(args))

    def assign(self, qube: str, ident: str, read_only: bool, required: bool, paired: bool) -> None:
        self.store.execute(
            "INSERT INTO device_assignments(qube, ident, read_only, required, paired) VALUES(?,?,?,?,?) "
            "ON CONFLICT(qube, ident) DO UPDATE SET read_only=excluded.read_only, required=excluded.required, "
            "paired=excluded.paired",
            (qube, ident, int(read_only), int(required), int(paired)),
        )

    def unassign(self, qube: str, ident: str) -> bool:
        return bool(self.store.execute("DELETE FROM device_assignments WHERE qube=? AND ident=?", (qube, ident)))

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[Qube]:
        return [self._qube(r) for r in self.store.query("SELECT * FROM qubes ORDER BY name")]


class Features:
    """String features per qube, as in Qubes. ``dom0`` may hold features too."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self, qube: str) -> dict[str, str]:
        rows = self.store.query("SELECT key, value FROM features WHERE qube=? ORDER BY key", (qube,))
        return {r["key"]: r["value"] for r in rows}

    def get(self, qube: str, key: str) -> str:
        row = self.store.query_one("SELECT value FROM features WHERE qube=? AND key=?", (qube, key))
        if row is None:
            raise NotFound(f"qube {qube!r} has no feature {key!r}")
        return row["value"]

    def set(self, qube: str, key: str, value: str) -> None:
        if not key or any(c.isspace() for c in key):
            raise InvalidValue(f"invalid feature name {key!r}")
        self.store.execute(
            "INSERT INTO features(qube, key, value) VALUES(?, ?, ?) "
            "ON CONFLICT(qube, key) DO UPDATE SET value=excluded.value",
            (qube, key, value),
        )

    def delete(self, qube: str, key: str) -> None:
        if not self.store.execute("DELETE FROM features WHERE qube=? AND key=?", (qube, key)):
            raise NotFound(f"qube {qube!r} has no feature {key!r}")

    def holders(self, key: str) -> dict[str, str]:
        """Every qube (dom0 too) that has feature KEY, with its value."""
        rows = self.store.query("SELECT qube, value FROM features WHERE key=? ORDER BY qube", (key,))
        return {r["qube"]: r["value"] for r in rows}
