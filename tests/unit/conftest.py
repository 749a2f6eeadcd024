"""Fixtures for the unit suite: a temporary QLITE_HOME, a recording fake
engine and a Context over both. Nothing here touches podman or runsc."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from qlite.core.qubes import QubeManager
from qlite.core.templates import TemplateManager, image_ref
from qlite.domain.context import Context
from qlite.domain.model import Qube
from qlite.domain.spec import USER_UID
from qlite.host.volumes import PrivateVolumes
from qlite.paths import Paths
from qlite.runtime.probe import RuntimeProbe
from qlite.state import Store
from qlite.state.owners import owner_alive, process_start_ticks

from .fake_blockdev import FakeBlockDevices
from .fake_clock import FakeClock
from .fake_engine import FakeEngine
from .fake_net import FakeDaemon, FakeMounts, FakeNetApply

# No example database, and Hypothesis' caches go to the temp dir: the unit
# suite writes nothing into the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "qlite-unit-hypothesis")
settings.register_profile("qlite-unit", database=None, deadline=None)
settings.load_profile("qlite-unit")

TEMPLATE = "debian-12"
IMAGE_ID = "ab" * 32

# Who owns /rw/home/user in the volumes these tests lay out: the template's
# user, as in a real qube, or without root (where chown to another uid is
# refused) the test's own uid, so that the lifecycle runs as any user.
HOME_UID = USER_UID if os.geteuid() == 0 else os.geteuid()
ROOT_UID = os.geteuid()

FAKE_PROBE = RuntimeProbe(
    runsc="/usr/bin/runsc",
    version="fake",
    platform="systrap",
    netstack=True,
    netstack_error="",
    key="fake",
)


@pytest.fixture(autouse=True)
def no_kernel_network_changes(monkeypatch):
    """Unit tests must never change nftables, routes or sysctls."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test tried to change kernel network state: {args}")

    monkeypatch.setattr("qlite.host.nft.run_tool", refuse)

    def no_daemon(*args, **kwargs):
        raise AssertionError("a unit test tried to start qlite daemon")

    monkeypatch.setattr("qlite.host.daemonctl.DaemonControl.ensure", no_daemon)


@pytest.fixture
def paths(tmp_path) -> Paths:
    home = tmp_path / "home"
    home.mkdir()
    return Paths(home)


@pytest.fixture
def engine(tmp_path) -> FakeEngine:
    root = tmp_path / "volumes"
    root.mkdir()
    return FakeEngine(volume_root=root)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def blocks() -> FakeBlockDevices:
    """The host's block devices as the unit tests' contexts see them: none
    until a test adds some."""
    return FakeBlockDevices()


@pytest.fixture
def ctx(paths, engine, tmp_path, clock, blocks):
    store = Store(paths.home / "qlite.db")
    # Never run the real runsc probe, nor touch the kernel's network state.
    c = Context(
        paths,
        engine=engine,
        store=store,
        runtime_probe=FAKE_PROBE,
        net_apply=FakeNetApply(),
        mounts=FakeMounts(),
        daemon=FakeDaemon(),
        private_volumes=PrivateVolumes(HOME_UID, ROOT_UID),
        clock=clock,
        block_devices=blocks,
    )
    engine.add_image(IMAGE_ID, (image_ref(TEMPLATE, 1),), {"qlite.origin": "build"})
    TemplateManager(c)._record(TEMPLATE, 1, IMAGE_ID, "build")
    engine.calls.clear()
    yield c
    store.close()


def dump_store(store: Store) -> list[str]:
    return list(store.conn.iterdump())


def insert_row(qm: QubeManager, name: str, **kw) -> Qube:
    """A qube row without engine objects (no root needed)."""
    q = Qube(
        name=name,
        klass=kw.pop("klass", "AppVM"),
        label=kw.pop("label", "green"),
        template=kw.pop("template", TEMPLATE),
        created_at=time.time(),
        **kw,
    )
    qm.qstore.insert(q)
    return q


def dead_owner() -> str:
    """The owner tag of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ticks = process_start_ticks(child.pid)
    child.kill()
    child.wait()
    owner = f"{child.pid}:{ticks}"
    assert not owner_alive(owner)
    return owner
