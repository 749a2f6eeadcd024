"""The lifecycle as the daemon's rooms reach it: every call of QubeManager,
and a disposable's one command, behind the protocols of qlite.domain.ports.
The daemon hands it to the broker, so that qlite.rpc never imports the
lifecycle itself."""

from __future__ import annotations

from collections.abc import Callable

from qlite.core.disposables import DisposableManager
from qlite.core.qubes import QubeManager
from qlite.domain.model import Qube
from qlite.engines.base import Stdio


class Lifecycle(QubeManager):
    def run_disposable(
        self,
        argv: list[str],
        stdio: Stdio,
        dvm: str | None,
        user: str | None,
        env: dict[str, str],
        on_created: Callable[[Qube], None] | None,
    ) -> int:
        return DisposableManager(self.ctx).run(argv, stdio, dvm=dvm, user=user, env=env, on_created=on_created)
