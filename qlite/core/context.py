"""The context every command receives: paths, the store and the engine.

Unit tests build it over a temporary QLITE_HOME with a fake engine;
integration tests and the CLI use the real one. The engine and the store
are created on first use, so commands that need neither stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property

from qlite.engines.base import Engine
from qlite.errors import InvalidValue
from qlite.paths import Paths
from qlite.state import Store
from qlite.state.qubes import QubeStore

ENGINES = ("podman", "docker")


class Context:
    def __init__(self, paths: Paths, engine: Engine | None = None, store: Store | None = None):
        self.paths = paths
        self.warnings: list[str] = []
        # Where warnings go as they happen; the CLI prints them on stderr.
        self.on_warning: Callable[[str], None] | None = None
        # Where progress of long work goes (the CLI: stderr); silent by default.
        self.on_progress: Callable[[str], None] | None = None
        if engine is not None:
            self.__dict__["engine"] = engine
        if store is not None:
            self.__dict__["store"] = store

    @classmethod
    def from_env(cls) -> Context:
        return cls(Paths.from_env())

    @cached_property
    def store(self) -> Store:
        self.paths.ensure()
        return Store(self.paths.db)

    @cached_property
    def qube_store(self) -> QubeStore:
        """The qube tables (qubes, tags, features, firewall, assignments)."""
        return QubeStore(self.store)

    @cached_property
    def engine(self) -> Engine:
        choice = os.environ.get("QLITE_ENGINE", "podman")
        if choice == "podman":
            from qlite.engines.podman import PodmanEngine  # noqa: PLC0415

            return PodmanEngine(self.paths)
        if choice == "docker":
            from qlite.engines.docker import DockerEngine  # noqa: PLC0415

            return DockerEngine(self.paths, os.environ.get("QLITE_DOCKER_HOST"))
        raise InvalidValue(f"QLITE_ENGINE={choice!r}: expected one of {', '.join(ENGINES)}")

    def warn(self, message: str) -> None:
        """Something the user must know that did not stop the operation."""
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def progress(self, message: str) -> None:
        """A step of long work (downloads, exports), for the user to follow."""
        if self.on_progress is not None:
            self.on_progress(message)

    @property
    def home_hash(self) -> str:
        return self.paths.home_hash

    @cached_property
    def daemon(self):  # -> DaemonControl, or a test's stand-in
        """The seam to qlite daemon (the RPC broker) of this home."""
        from qlite.rpc.daemonctl import DaemonControl  # noqa: PLC0415

        return DaemonControl(self.paths)

    @cached_property
    def net_apply(self):  # -> the qlite.net.apply module, or a test's stand-in
        """The seam through which qlite changes the kernel's network state."""
        from qlite.net import apply  # noqa: PLC0415

        return apply

    @cached_property
    def mounts(self):  # -> the qlite.devices.mounts module, or a test's stand-in
        """The seam through which qlite mounts on the host (devices)."""
        from qlite.devices import mounts  # noqa: PLC0415

        return mounts

    @cached_property
    def runtime_probe(self):  # -> RuntimeProbe | None
        from qlite.runtime.probe import probe  # noqa: PLC0415

        return probe(self.paths.probe_file)
