"""The ports of the domain: what the rooms below the lifecycle may ask of
it, and what every runtime answers, as protocols. Rooms such as
qlite.devices and qlite.vm depend on these, never on the orchestrator
(qlite.core.qubes) itself, which implements them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from qlite.domain.model import Qube, State
from qlite.domain.spec import exec_place
from qlite.engines.base import ContainerInfo, Stdio


class QubeRuntime(Protocol):
    # What the mode can do, so that callers ask the runtime, not the mode.
    title: str  # the mode as messages name it
    gateways: bool  # a qube of this mode may provide network to others
    preloadable: bool  # its disposables may be started ahead of time
    resources_fixed_because: str  # why memory and vCPUs wait for the next start
    # A drive is given as a block device (True), or the host mounts its
    # filesystem in the qube's devices directory (False).
    takes_block_devices: bool

    def check_private(self, q: Qube) -> None:
        """Raise InvalidValue if Q's private data cannot be used in this mode."""

    def state(self, q: Qube, info: ContainerInfo | None) -> State:
        """Q's state, given its engine container (None: there is none)."""

    def start(self, q: Qube, stale: ContainerInfo | None = None) -> None:
        """Start halted Q (STALE: a container of an earlier run to replace)."""

    def shutdown(self, q: Qube, timeout: float) -> bool:
        """Stop Q, by force after TIMEOUT; False if it was not running."""

    def kill(self, q: Qube) -> bool:
        """Stop Q at once and discard what its run made; False if nothing was there."""

    def pause(self, q: Qube) -> None: ...

    def resume(self, q: Qube) -> None: ...

    def exec(self, q: Qube, argv: list[str], stdio: Stdio, user: str, workdir: str, env: dict[str, str]) -> int:
        """Run ARGV in running Q; its exit code."""

    def run(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int:
        """A user's command in running Q, with Ctrl-C (stdio.interrupts) passed to it."""

    def run_if_linked(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int | None:
        """As run, if Q's agent is linked to the daemon (so Q runs: no
        engine round trip to ask); None, with nothing run, if it is not."""

    def attach_block(self, q: Qube, node: str, path: str, read_only: bool) -> str:
        """Give block device PATH to running Q as NODE (takes_block_devices only)."""

    def detach_block(self, q: Qube, node: str) -> None:
        """Take NODE back from Q; nothing if Q no longer runs."""

    def run_disposable(
        self,
        q: Qube,
        argv: list[str],
        stdio: Stdio,
        user: str,
        env: dict[str, str],
        on_created: Callable[[Qube], None] | None,
    ) -> int:
        """Make new disposable Q's run and run its one command; the caller destroys Q."""


class QubeAccess(Protocol):
    """Qubes by name, their state and runtime, and the lifecycle calls that
    a lower room's own operations imply (an eject stops a paired qube)."""

    def get(self, name: str) -> Qube: ...

    def exists(self, name: str) -> bool: ...

    def state_of(self, q: Qube) -> State: ...

    def runtime(self, q: Qube) -> QubeRuntime: ...

    def exec_in(self, q: Qube, argv: list[str], stdio: Stdio, user: str, env: dict[str, str]) -> int: ...

    def shutdown(self, name: str, timeout: float = ..., force: bool = False) -> bool: ...


class TemplateImages(Protocol):
    """What anti-evil-maid measures of the templates."""

    def images(self) -> list[tuple[str, str | None]]:
        """Each template's name, sorted, and the image its current revision
        resolves to now (None: none)."""


class QubeAdmin(QubeAccess, Protocol):
    """What a feature set up on qubes (split GPG) asks of the lifecycle."""

    def create(self, name: str, *, label: str, netvm: str | None = None) -> Qube: ...

    def resolved_netvm(self, q: Qube) -> str | None: ...

    def set_pref(self, name: str, prop: str, text: str) -> None: ...

    def run(self, name: str, argv: list[str], stdio: Stdio) -> int: ...


class NetQubes(Protocol):
    """What the network room asks of the lifecycle: qubes, the chain of
    gateways behind each, and a gateway running when a client needs it."""

    def get(self, name: str) -> Qube: ...

    def resolved_netvm(self, q: Qube) -> str | None: ...

    def netvm_chain(self, q: Qube, default_netvm: str | None = None) -> list[str]: ...

    def ensure_running(self, q: Qube) -> ContainerInfo: ...

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[Qube]: ...


class PolicyFacts(Protocol):
    """The facts RPC policy is evaluated on: every qube, and the disposable
    template each one's calls default to (all that 'qlite policy eval' needs)."""

    def resolved_default_dispvm(self, q: Qube | None) -> str | None: ...

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[Qube]: ...


class RpcTargets(QubeAccess, PolicyFacts, Protocol):
    """What the RPC broker asks of the lifecycle for one call: the facts
    policy is evaluated on, and the call's command in a qube (started if
    need be) or in a new disposable."""

    def start(self, name: str, skip_if_running: bool = False) -> Qube: ...

    def run_disposable(
        self,
        argv: list[str],
        stdio: Stdio,
        dvm: str | None,
        user: str | None,
        env: dict[str, str],
        on_created: Callable[[Qube], None] | None,
    ) -> int: ...


def exec_env(q: Qube, user: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Where a command run as USER in Q starts, and its environment."""
    workdir, place = exec_place(user)
    return workdir, {"QLITE_QUBE": q.name, **place, **env}
