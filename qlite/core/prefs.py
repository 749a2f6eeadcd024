"""Global preferences (qubes-prefs) and features (qvm-features)."""

from __future__ import annotations

from qlite.core.model import HOST_UPLINK
from qlite.errors import InvalidValue, NotFound
from qlite.state import Store

GLOBAL_PREFS: dict[str, str] = {
    # name -> default
    "default_template": "",
    "default_dispvm": "",
    "default_netvm": HOST_UPLINK,
}


class GlobalPrefs:
    def __init__(self, store: Store):
        self.store = store

    def get(self, key: str) -> str:
        self._check(key)
        row = self.store.query_one("SELECT value FROM global_prefs WHERE key=?", (key,))
        return row["value"] if row else GLOBAL_PREFS[key]

    def is_default(self, key: str) -> bool:
        self._check(key)
        return self.store.query_one("SELECT 1 FROM global_prefs WHERE key=?", (key,)) is None

    def all(self) -> dict[str, str]:
        return {k: self.get(k) for k in GLOBAL_PREFS}

    def set(self, key: str, value: str) -> None:
        """Store VALUE (already validated by the caller against the system)."""
        self._check(key)
        self.store.execute(
            "INSERT INTO global_prefs(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def reset(self, key: str) -> None:
        self._check(key)
        self.store.execute("DELETE FROM global_prefs WHERE key=?", (key,))

    @staticmethod
    def _check(key: str) -> None:
        if key not in GLOBAL_PREFS:
            raise InvalidValue(f"no such global property {key!r}; known: {', '.join(GLOBAL_PREFS)}")


class Features:
    """String features per qube, as in Qubes. ``dom0`` may hold features too."""

    def __init__(self, store: Store):
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
