"""The context every command receives: paths, the store and the engine.

Unit tests build it over a temporary QLITE_HOME with a fake engine;
integration tests and the CLI use the real one. The engine and the store
are created on first use, so commands that need neither stay fast.
"""

from __future__ import annotations

import os
from functools import cached_property

from qlite.engines.base import Engine
from qlite.errors import InvalidValue
from qlite.paths import Paths
from qlite.state import Store

ENGINES = ("podman", "docker")


class Context:
    def __init__(self, paths: Paths, engine: Engine | None = None, store: Store | None = None):
        self.paths = paths
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
    def engine(self) -> Engine:
        choice = os.environ.get("QLITE_ENGINE", "podman")
        if choice == "podman":
            from qlite.engines.podman import PodmanEngine  # noqa: PLC0415

            return PodmanEngine(self.paths)
        if choice == "docker":
            from qlite.engines.docker import DockerEngine  # noqa: PLC0415

            return DockerEngine(self.paths, os.environ.get("QLITE_DOCKER_HOST"))
        raise InvalidValue(f"QLITE_ENGINE={choice!r}: expected one of {', '.join(ENGINES)}")

    @property
    def home_hash(self) -> str:
        return self.paths.home_hash

    @cached_property
    def runtime_probe(self):  # -> RuntimeProbe | None
        from qlite.runtime.probe import probe  # noqa: PLC0415

        return probe(self.paths.probe_file)
