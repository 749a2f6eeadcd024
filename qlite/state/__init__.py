"""The SQLite store: what qubes *should* be. Engine facts are read live."""

from qlite.state.store import Store

__all__ = ["Store"]
