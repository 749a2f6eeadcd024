"""Fixtures for the TUI suite: the real screens over a fake core.

The core is qlite's own (QubeManager, TemplateManager, NetworkManager...)
over a temporary QLITE_HOME, with the unit suite's recording FakeEngine,
FakeNetApply and FakeDaemon underneath. Questions come from FakeAsks and
commands go to FakeRunner. Nothing here touches podman, runsc or the
kernel's network state."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qlite.core.context import Context
from qlite.core.prefs import GlobalPrefs
from qlite.core.templates import TemplateManager, image_ref
from qlite.core.usage import Usage
from qlite.errors import NotFound
from qlite.paths import Paths
from qlite.runtime.probe import RuntimeProbe
from qlite.state import Store
from tests.unit.fake_engine import FakeEngine
from tests.unit.fake_net import FakeDaemon, FakeMounts, FakeNetApply
from tui.app import QliteApp
from tui.asks import Question
from tui.backend import Backend

TEMPLATE = "debian-12"
IMAGE_ID = "ab" * 32
SIZE = (120, 36)
FAKE_PROBE = RuntimeProbe(
    runsc="/usr/bin/runsc", version="fake", platform="systrap", netstack=True, netstack_error="", key="fake",
)
# What every running qube costs in these tests: fixed, so snapshots are stable.
FIXED_USAGE = Usage(rss_mib=96.0, pss_mib=64.0, cpu_percent=1.5, processes=5)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests in a fresh event loop (Pilot needs one)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture(autouse=True)
def no_kernel_network_changes(monkeypatch):
    """TUI tests must never change nftables, routes or sysctls, nor start a daemon."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a TUI test tried to change kernel network state: {args}")

    def no_daemon(*args, **kwargs):
        raise AssertionError("a TUI test tried to start qlite daemon")

    monkeypatch.setattr("qlite.net.apply._run", refuse)
    monkeypatch.setattr("qlite.rpc.daemonctl.DaemonControl.ensure", no_daemon)


class LockedEngine:
    """The FakeEngine behind one lock: the TUI calls it from several worker
    threads, and the fake's dicts are not made for that."""

    def __init__(self, engine: FakeEngine):
        self._engine = engine
        self._lock = threading.RLock()

    def __getattr__(self, name: str):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)

        return locked


@dataclass
class FakeAsks:
    """Pending questions and the answers given, like the daemon's admin socket."""

    questions: list[Question] = field(default_factory=list)
    answers: list[tuple[int, bool, str | None]] = field(default_factory=list)

    def pending(self) -> list[Question]:
        return list(self.questions)

    def answer(self, ask_id: int, allow: bool, target: str | None) -> None:
        if not any(q.id == ask_id for q in self.questions):
            raise NotFound(f"no pending question {ask_id} (answered, or timed out)")
        self.answers.append((ask_id, allow, target))
        self.questions = [q for q in self.questions if q.id != ask_id]


@dataclass
class FakeRunner:
    interactive_calls: list[list[str]] = field(default_factory=list)
    capture_calls: list[list[str]] = field(default_factory=list)
    output: tuple[str, ...] = ("hello from the qube",)
    code: int = 0

    def interactive(self, app, args: list[str]) -> int:
        self.interactive_calls.append(list(args))
        return self.code

    def capture(self, args: list[str], on_line) -> int:
        self.capture_calls.append(list(args))
        for line in self.output:
            on_line(line)
        return self.code

    def stop_all(self) -> None:
        pass


@dataclass
class FakeCore:
    paths: Paths
    engine: FakeEngine
    net_apply: FakeNetApply
    daemon: FakeDaemon
    asks: FakeAsks
    runner: FakeRunner
    store: Store  # the test's own connection, for assertions

    def context(self) -> Context:
        ctx = Context(self.paths, engine=LockedEngine(self.engine), store=Store(self.paths.db))
        ctx.__dict__["runtime_probe"] = FAKE_PROBE
        ctx.__dict__["net_apply"] = self.net_apply
        ctx.__dict__["mounts"] = FakeMounts()
        ctx.__dict__["daemon"] = self.daemon
        return ctx

    def app(self, **kwargs) -> QliteApp:
        backend = Backend(self.context, usage=lambda ctx, containers: {
            name: FIXED_USAGE for name, c in containers.items() if c.state in ("running", "paused")
        })
        options = {"refresh_interval": 0, "ask_interval": 0.05, **kwargs}
        return QliteApp(backend, self.asks, self.runner, **options)

    def qube_row(self, name: str):
        return self.store.query_one("SELECT * FROM qubes WHERE name=?", (name,))

    def calls(self, method: str) -> list[tuple]:
        return [args for m, args in self.engine.calls if m == method]


@pytest.fixture
def core(tmp_path: Path) -> FakeCore:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "volumes").mkdir()
    paths = Paths(home)
    engine = FakeEngine(volume_root=tmp_path / "volumes")
    fake = FakeCore(paths, engine, FakeNetApply(), FakeDaemon(), FakeAsks(), FakeRunner(), Store(paths.db))
    ctx = fake.context()
    engine.add_image(IMAGE_ID, (image_ref(TEMPLATE, 1),), {"qlite.origin": "build"})
    TemplateManager(ctx)._record(TEMPLATE, 1, IMAGE_ID, "build")
    GlobalPrefs(ctx.store).set("default_template", TEMPLATE)
    ctx.store.close()
    engine.calls.clear()
    yield fake
    fake.store.close()


async def wait_for_screen(pilot, screen_type: type, what: str = "") -> None:
    """Until the app's screen is a SCREEN_TYPE with its widgets mounted: a
    pushed screen is the app's screen at once, its widgets come a moment
    later, and a key pressed or a query made before then finds nothing."""
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, screen_type) and pilot.app.screen.is_mounted,
                   what=what or screen_type.__name__)


async def wait_for(pilot, predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Let the app run until PREDICATE holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)
