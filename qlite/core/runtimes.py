"""How a qube runs: one runtime per mode, chosen once from the qube's mode.

``QubeRuntime`` (qlite.domain.ports) is what the lifecycle asks of either
mode. ``ContainerRuntime`` runs a qube as a gVisor container; the VM
runtime is qlite.vm.runner.VmRunner, which answers the same calls with
QEMU. No code outside the runtimes needs
to ask which mode a qube is in to run it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from qlite.agent import client as agent_client
from qlite.domain.model import Qube, State
from qlite.domain.ports import exec_env
from qlite.domain.runcommand import RUN_TOKEN_ENV, new_run_token, signal_argv
from qlite.domain.spec import AGENT_COMMAND, container_name, qube_container_spec, volume_name
from qlite.engines.base import ContainerInfo, Stdio
from qlite.errors import InvalidValue, QliteError
from qlite.safepath import UnsafePath
from qlite.vm.disks import verify_private

if TYPE_CHECKING:  # the manager imports this module
    from qlite.core.qubes import QubeManager

ENGINE_STATES = {
    "running": State.RUNNING,
    "paused": State.PAUSED,
    "created": State.TRANSIENT,
    "configured": State.TRANSIENT,
    "initialized": State.TRANSIENT,
    "stopping": State.TRANSIENT,
    "removing": State.TRANSIENT,
}


class ContainerRuntime:
    """A qube as a gVisor (runsc) container on the template's image: a new
    container at every start, removed at shutdown, and its private volume."""

    title = "container"
    gateways = True
    preloadable = True
    # podman update would run the OCI runtime's "update", which runsc lacks.
    takes_block_devices = False
    resources_fixed_because = "podman cannot change a running gVisor sandbox's memory or CPUs: runsc has no 'update'"

    def __init__(self, qubes: QubeManager) -> None:  # for the glue every mode shares
        self.qubes = qubes
        self.ctx = qubes.ctx

    def attach_block(self, q: Qube, node: str, path: str, read_only: bool) -> str:
        raise InvalidValue(f"{q.name} is a container qube: it gets a drive's filesystem, not the block device")

    def detach_block(self, q: Qube, node: str) -> None:
        raise InvalidValue(f"{q.name} is a container qube: it has no block devices")

    def check_private(self, q: Qube) -> None:
        """A VM's private disk is never mounted on the host, so a qube whose
        data went into one cannot be a container qube again. What is not a
        disk qlite made is the qube's own files: that way stays open."""
        vol = self.ctx.engine.inspect_volume(volume_name(self.ctx.home_hash, q.name))
        try:
            made = vol is not None and verify_private(vol.mountpoint)
        except UnsafePath:
            made = False
        if made:
            raise InvalidValue(
                f"{q.name}'s private disk was written by a VM, and the host never mounts one; "
                "create a container qube and copy the files across with qvm-copy"
            )

    def _name(self, q: Qube) -> str:
        return container_name(self.ctx.home_hash, q.name)

    def state(self, q: Qube, info: ContainerInfo | None) -> State:
        return State.HALTED if info is None else ENGINE_STATES.get(info.state, State.HALTED)

    def start(self, q: Qube, stale: ContainerInfo | None = None) -> None:
        engine = self.ctx.engine
        image = self.qubes.image_for(q)  # first: a template that cannot start changes nothing
        if stale is not None:
            engine.remove_container(stale.id, force=True)
        cid = self.create(q, image)
        try:
            engine.start(cid)
        except BaseException:
            with contextlib.suppress(QliteError):
                engine.remove_container(cid, force=True)
            raise
        if q.provides_network:
            try:
                self.qubes.net.gateway_started(q)
            except QliteError as exc:
                self.ctx.warn(f"gateway {q.name} started, but its clients have no network: {exc}")
        self.qubes.rpc_ready(q, start_daemon=True)

    def create(
        self,
        q: Qube,
        image: str,
        command: tuple[str, ...] | None = None,
        user: str = "root",
        env: dict[str, str] | None = None,
        stdio: Stdio | None = None,
    ) -> str:
        """Q's container, created and ready to start (its volume laid out,
        its network arranged); COMMAND instead of the idle one for a
        disposable. Its id; nothing is left if this fails."""
        engine, hh = self.ctx.engine, self.ctx.home_hash
        self.ctx.private_volumes.init(self.qubes.private_mountpoint(q))
        plan = self.qubes.net.prepare(q)
        spec = qube_container_spec(
            q,
            home_hash=hh,
            image=image,
            network=plan.network,
            dns=plan.dns,
            rpc_source=str(self.qubes.rpc_dir(q)),
            devices_source=self.qubes.devices_source(q),
            command=AGENT_COMMAND if command is None else tuple(command),
            user="root" if command is None else user,
            env=None if command is None else env,
            stdin_open=command is not None,
            tty=command is not None and bool(stdio and stdio.tty),
        )
        cid = engine.create_container(spec)
        try:
            self.qubes.arrange_network(q, cid, plan)
        except BaseException:
            with contextlib.suppress(QliteError):
                engine.remove_container(cid, force=True)
            raise
        return cid

    def shutdown(self, q: Qube, timeout: float) -> bool:
        engine = self.ctx.engine
        info = engine.inspect_container(self._name(q))
        if info is None:
            return False
        if info.state == "paused":
            engine.unpause(info.id)
        was_running = info.state in ("running", "paused")
        if was_running:
            engine.stop(info.id, timeout)
        engine.remove_container(info.id, force=True)
        return was_running

    def kill(self, q: Qube) -> bool:
        engine = self.ctx.engine
        info = engine.inspect_container(self._name(q))
        if info is None:
            return False
        engine.remove_container(info.id, force=True)
        return True

    def pause(self, q: Qube) -> None:
        self.ctx.engine.pause(self._name(q))
        # The broker takes a linked agent for a running qube: it must learn
        # of the pause now, not at its next rescan.
        self.ctx.daemon.notify(q.name)

    def resume(self, q: Qube) -> None:
        self.ctx.engine.unpause(self._name(q))

    def exec(self, q: Qube, argv: list[str], stdio: Stdio, user: str, workdir: str, env: dict[str, str]) -> int:
        """Through the qube's agent, whose link the daemon holds: no exec
        session, no runsc exec. Only when the agent cannot be reached (the
        daemon is down, the agent died) is it runsc exec, as recovery."""
        try:
            return self._through_agent(q, argv, stdio, user, workdir, env)
        except agent_client.AgentUnavailable:
            return self._recovery_exec(q, argv, stdio, user, workdir, env)

    def _through_agent(
        self, q: Qube, argv: list[str], stdio: Stdio, user: str, workdir: str, env: dict[str, str]
    ) -> int:
        conn = agent_client.connect(self.ctx.paths.agent_client_sock(q.name), q.name)
        return agent_client.exec_over(conn, q.name, argv, stdio, user, workdir, env)

    def _recovery_exec(
        self, q: Qube, argv: list[str], stdio: Stdio, user: str, workdir: str, env: dict[str, str]
    ) -> int:
        return self.ctx.engine.exec(self._name(q), argv, stdio, user=user, workdir=workdir, env=env)

    def run_if_linked(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int | None:
        """The daemon listens for Q's clients only while Q runs (it drops the
        socket when Q stops or is paused): a connection is Q's answer."""
        try:
            conn = agent_client.connect(self.ctx.paths.agent_client_sock(q.name), q.name)
        except agent_client.AgentUnavailable:
            return None
        workdir, env = exec_env(q, user, {})
        try:
            return agent_client.exec_over(conn, q.name, argv, stdio, user, workdir, env)
        except agent_client.AgentUnavailable:
            return None  # connected, but the agent was not there: nothing ran

    def run(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int:
        """The agent forwards signals itself. runsc exec forwards none: on
        that path the run carries a token, and Ctrl-C reaches every process
        that carries it (qlite.domain.runcommand)."""
        workdir, env = exec_env(q, user, {})
        try:
            return self._through_agent(q, argv, stdio, user, workdir, env)
        except agent_client.AgentUnavailable:
            pass
        relay = stdio.interrupts
        token = new_run_token() if relay is not None else None
        workdir, env = exec_env(q, user, {RUN_TOKEN_ENV: token} if token else {})
        if relay is None or token is None:
            return self.exec(q, argv, stdio, user, workdir, env)
        relay.attach(lambda sig: self.signal_run(q, token, sig, user))
        try:
            return self.exec(q, argv, stdio, user, workdir, env)
        finally:
            relay.detach()

    def signal_run(self, q: Qube, token: str, sig: int, user: str) -> None:
        """Send SIG to the processes of the run TOKEN names, from inside Q,
        as the USER they run as (root has no capabilities in a container
        whose own user is not root)."""
        with open(os.devnull, "wb") as null:
            self.ctx.engine.exec(
                self._name(q),
                signal_argv(token, sig),
                Stdio(stdin=None, stdout=null, stderr=null),
                user=user,
                workdir="/",
            )

    def run_disposable(
        self,
        q: Qube,
        argv: list[str],
        stdio: Stdio,
        user: str,
        env: dict[str, str],
        on_created: Callable[[Qube], None] | None,
    ) -> int:
        """The command is the container's own: attached, then started. The
        caller's Ctrl-C goes to the command and what it started (its init
        would pass it to the command alone)."""
        token = new_run_token()
        cid = self.create(q, self.qubes.image_for(q), tuple(argv), user, {**env, RUN_TOKEN_ENV: token}, stdio)
        if on_created is not None:
            on_created(q)
        self.qubes.rpc_ready(q, start_daemon=False)
        relay = stdio.interrupts
        if relay is None:
            return self.ctx.engine.attach_and_start(cid, stdio)
        relay.attach(lambda sig: self.signal_run(q, token, sig, user))
        try:
            return self.ctx.engine.attach_and_start(cid, stdio)
        finally:
            relay.detach()
