"""What qlite does differently by what an engine can do (its declared
capabilities), never by the engine's name."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from qlite.core.qubes import QubeManager
from qlite.doctor import OK, check_service
from qlite.engines.base import ContainerSpec
from qlite.engines.docker import DockerEngine
from qlite.engines.podman import PodmanEngine

from .conftest import FAKE_PROBE, IMAGE_ID, insert_row

CAPABILITIES = ("gives_devices_to_containers", "runs_probed_runsc", "managed_by_qlite")


@pytest.mark.parametrize(("engine_class", "has"), [(PodmanEngine, True), (DockerEngine, False)])
def test_the_engines_declare_their_capabilities(engine_class, has):
    assert {c: getattr(engine_class, c) for c in CAPABILITIES} == dict.fromkeys(CAPABILITIES, has)


@pytest.mark.parametrize(("gives", "bound"), [(True, True), (False, False)])
def test_a_container_qube_gets_a_devices_directory_only_where_the_engine_can_give_devices(ctx, engine, gives, bound):
    engine.gives_devices_to_containers = gives
    q = insert_row(QubeManager(ctx), "work")
    source = QubeManager(ctx).devices_source(q)
    assert source == (str(ctx.paths.devices_dir("work")) if bound else "")
    assert [c[0] for c in ctx.mounts.calls] == (["bind_ro_shared"] if bound else [])


@pytest.mark.parametrize(
    ("probed", "netstack", "loopback"),
    [
        (True, False, True),  # the host-netns path: nobody else brings lo up
        (True, True, False),  # netstack brings up its own
        (False, False, False),  # another engine's runsc: its owner's configuration
    ],
)
def test_an_offline_qube_gets_its_loopback_up_only_under_the_probed_runsc(ctx, engine, probed, netstack, loopback):
    engine.runs_probed_runsc = probed
    ctx.runtime_probe = replace(FAKE_PROBE, netstack=netstack)
    q = insert_row(QubeManager(ctx), "vault")
    cid = engine.create_container(ContainerSpec(name="vault", image=IMAGE_ID, command=("true",), labels={}))
    engine.containers[cid].info = replace(engine.containers[cid].info, pid=4242)
    QubeManager(ctx).arrange_network(q, cid, SimpleNamespace(network="none", route_via=""))
    assert ctx.net_apply.calls == ([("loopback_up", "/proc/4242/ns/net")] if loopback else [])


@pytest.mark.parametrize(
    ("managed", "detail"),
    [
        (True, "fake service answers (API 0.0-fake) at {sock}"),
        (False, "fake answers (version 0.0-fake)"),
    ],
)
def test_doctor_names_the_socket_only_of_qlites_own_service(ctx, engine, managed, detail):
    engine.managed_by_qlite = managed
    check = check_service(ctx)
    assert (check.status, check.detail) == (OK, detail.format(sock=ctx.paths.podman_sock))
