"""Fixtures for the TUI suite: the real screens over a fake core.

The core is qlite's own (QubeManager, TemplateManager, NetworkManager,
DeviceManager, AemManager...) over a temporary QLITE_HOME, with the unit
suite's recording FakeEngine, FakeNetApply, FakeDaemon and FakeMounts
underneath, and (for devices) its table of block devices. Questions come
from FakeAsks and commands go to FakeRunner. Nothing here touches podman,
runsc, the host's devices or mounts, or the kernel's network state."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qlite.aem.manager import AemManager
from qlite.core.templates import TemplateManager, image_ref
from qlite.core.usage import Usage
from qlite.domain.context import Context
from qlite.domain.prefs import GlobalPrefs
from qlite.errors import NotFound
from qlite.host.volumes import PrivateVolumes
from qlite.paths import Paths
from qlite.runtime.probe import RuntimeProbe
from qlite.state import Store
from qlite.tui.app import QliteApp
from qlite.tui.asks import Question
from qlite.tui.backend import Backend
from tests.unit.conftest import HOME_UID, ROOT_UID
from tests.unit.fake_blockdev import FakeBlockDevices
from tests.unit.fake_engine import FakeEngine
from tests.unit.fake_net import FakeDaemon, FakeMounts, FakeNetApply

TEMPLATE = "debian-12"
IMAGE_ID = "ab" * 32
SIZE = (120, 36)
FAKE_PROBE = RuntimeProbe(
    runsc="/usr/bin/runsc",
    version="fake",
    platform="systrap",
    netstack=True,
    netstack_error="",
    key="fake",
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

    monkeypatch.setattr("qlite.host.nft.run_tool", refuse)
    monkeypatch.setattr("qlite.host.daemonctl.DaemonControl.ensure", no_daemon)


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
    interactive_options: list[dict] = field(default_factory=list)  # intro and hold, per call
    capture_calls: list[list[str]] = field(default_factory=list)
    output: tuple[str, ...] = ("hello from the qube",)
    code: int = 0

    def interactive(self, app, args: list[str], *, intro=None, hold: bool = False) -> int:
        self.interactive_calls.append(list(args))
        self.interactive_options.append({"intro": intro, "hold": hold})
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
    mounts: FakeMounts = field(default_factory=FakeMounts)  # one for every context, as the host has one
    blocks: FakeBlockDevices = field(default_factory=FakeBlockDevices)  # likewise

    def context(self) -> Context:
        return Context(
            self.paths,
            engine=LockedEngine(self.engine),
            store=Store(self.paths.db),
            runtime_probe=FAKE_PROBE,
            net_apply=self.net_apply,
            mounts=self.mounts,
            daemon=self.daemon,
            block_devices=self.blocks,
            private_volumes=PrivateVolumes(HOME_UID, ROOT_UID),
        )

    def app(self, **kwargs) -> QliteApp:
        backend = Backend(
            self.context,
            usage=lambda ctx, containers: {
                name: FIXED_USAGE for name, c in containers.items() if c.state in ("running", "paused")
            },
        )
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


@pytest.fixture
def block(core: FakeCore) -> FakeBlockDevices:
    """The block devices every context of CORE sees."""
    return core.blocks


AEM_COMPONENTS = ("qlite", "binary:runsc", "binary:podman", "binary:qemu", "runsc-config", "policy")
SECRET = b"the cat is called Mungo"
PASSPHRASE = b"correct horse battery"


@dataclass
class AemHome:
    """Anti-evil-maid over the test's home: no TPM (a software seal with a
    passphrase), and every component measured from a small file of the
    test's own instead of the host's binaries."""

    core: FakeCore
    measured: Path

    def component(self, name: str) -> Path:
        return self.measured / name.replace(":", "-")

    def change(self, name: str) -> None:
        with open(self.component(name), "a") as f:
            f.write("changed\n")

    def seal(self, secret: bytes = SECRET, passphrase: bytes = PASSPHRASE, sealed_at: float | None = None) -> None:
        ctx = self.core.context()
        try:
            am = AemManager(ctx, TemplateManager(ctx))
            am.seal(secret, passphrase)
            if sealed_at is not None:  # for pictures that do not move; not covered by the seal
                state = json.loads(am.sealed_path.read_text())
                state["sealed_at"] = sealed_at
                am.sealed_path.write_text(json.dumps(state))
        finally:
            ctx.store.close()


@pytest.fixture
def aem(core: FakeCore, monkeypatch) -> AemHome:
    monkeypatch.setenv("QLITE_TPM_TCTI", "none")
    measured = core.paths.home.parent / "measured"
    measured.mkdir()
    home = AemHome(core, measured)
    for name in AEM_COMPONENTS:
        home.component(name).write_text(f"{name} 1.0\n")
    (core.paths.home / "aem").mkdir()
    (core.paths.home / "aem" / "components.json").write_text(
        json.dumps({name: str(home.component(name)) for name in AEM_COMPONENTS})
    )
    return home


async def wait_for_screen(pilot, screen_type: type, what: str = "") -> None:
    """Until the app's screen is a SCREEN_TYPE with its widgets mounted: a
    pushed screen is the app's screen at once, its widgets come a moment
    later, and a key pressed or a query made before then finds nothing."""
    await wait_for(
        pilot,
        lambda: isinstance(pilot.app.screen, screen_type) and pilot.app.screen.is_mounted,
        what=what or screen_type.__name__,
    )


async def wait_for(pilot, predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Let the app run until PREDICATE holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


async def footer_settled(pilot) -> None:
    """Until the screen's footer shows all its rows of keys: it packs them
    once the screen's bindings are known, a moment after the screen."""
    from qlite.tui.widgets.key_footer import KeyFooter

    def settled() -> bool:
        footers = pilot.app.screen.query(KeyFooter)
        return (
            bool(footers) and footers.first()._rows != [] and footers.first().size.height == len(footers.first()._rows)
        )

    await wait_for(pilot, settled, what="the footer")
    await pilot.pause(0.05)  # and its keys are painted
