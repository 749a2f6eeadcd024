"""Global preferences (qubes-prefs). A qube's features are the
QubeStore's (qlite.state.qubes.Features)."""

from __future__ import annotations

from qlite.domain.model import HOST_UPLINK
from qlite.errors import InvalidValue
from qlite.state import Store

GLOBAL_PREFS: dict[str, str] = {
    # name -> default
    "default_template": "",
    "default_dispvm": "",
    "default_netvm": HOST_UPLINK,
}


class GlobalPrefs:
    def __init__(self, store: Store) -> None:
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
            "INSERT INTO global_prefs(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def reset(self, key: str) -> None:
        self._check(key)
        self.store.execute("DELETE FROM global_prefs WHERE key=?", (key,))

    @staticmethod
    def _check(key: str) -> None:
        if key not in GLOBAL_PREFS:
            raise InvalidValue(f"no such global property {key!r}; known: {', '.join(GLOBAL_PREFS)}")
