"""Setting up split GPG: the vault, its clients and their policy.

The policy lines live in a file qlite manages in the admin policy
directory (40-splitgpg.policy), in Qubes' format, so a 30-user.policy of
the admin's still comes first. Which qubes use which vault is recorded as
the vault's feature ``splitgpg.clients``; each client's approval window is
its feature ``autoaccept.qubes.Gpg``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

from qlite.domain.context import Context
from qlite.domain.model import State
from qlite.domain.ports import QubeAdmin
from qlite.engines.base import Stdio
from qlite.errors import InvalidValue, QliteError
from qlite.gpg.policyfile import CLIENTS_FEATURE, SERVICE, write_policy

AUTOACCEPT_FEATURE = f"autoaccept.{SERVICE}"
DEFAULT_AUTOACCEPT = 300
GPG_CONF_OPTION = "no-secmem-warning"
QUIET_GPG_SCRIPT = (
    'umask 077; mkdir -p "$HOME/.gnupg" && f="$HOME/.gnupg/gpg.conf" && '
    f'{{ grep -qsx {GPG_CONF_OPTION} "$f" || echo {GPG_CONF_OPTION} >> "$f"; }}'
)


@dataclass
class SplitGpgSetup:
    vault: str
    clients: list[str]
    created: bool
    policy_file: str

    def as_json(self) -> dict:
        return asdict(self)


def setup(ctx: Context, qm: QubeAdmin, vault: str, clients: list[str], autoaccept: int | None = None) -> SplitGpgSetup:
    """Create or configure VAULT (offline), add CLIENTS, write the policy."""
    features = ctx.qube_store.features
    if autoaccept is not None and not 0 <= autoaccept <= 86400:
        raise InvalidValue("--autoaccept takes seconds, from 0 to 86400")
    for client in clients:
        if client == vault:
            raise InvalidValue("a vault cannot be its own client")
        qm.get(client)
    created = False
    if not qm.exists(vault):
        qm.create(vault, label="black", netvm="none")
        created = True
    v = qm.get(vault)
    if v.is_disposable:
        raise InvalidValue("a disposable cannot be a vault")
    if qm.resolved_netvm(v) is not None:
        qm.set_pref(vault, "netvm", "")
    known = set(features.all(vault).get(CLIENTS_FEATURE, "").split())
    known |= set(clients)
    features.set(vault, CLIENTS_FEATURE, " ".join(sorted(known)))
    for client in clients:
        if autoaccept is not None or AUTOACCEPT_FEATURE not in features.all(client):
            features.set(client, AUTOACCEPT_FEATURE, str(DEFAULT_AUTOACCEPT if autoaccept is None else autoaccept))
    path = write_policy(ctx.paths, ctx.qube_store)
    quiet_vault_gpg(ctx, qm, vault)
    return SplitGpgSetup(vault=vault, clients=sorted(known), created=created, policy_file=str(path))


def quiet_vault_gpg(ctx: Context, qm: QubeAdmin, vault: str) -> bool:
    """Put ``no-secmem-warning`` in the vault's ~/.gnupg/gpg.conf (a halted
    vault is started for it, and shut down again). gVisor cannot lock
    memory, so gpg would print "using insecure memory" on every call; the
    key's protection is the vault's isolation, not locked pages. A failure
    is a warning: split GPG works without it (the qubes.Gpg service passes
    the option too)."""
    was_running = qm.state_of(qm.get(vault)) != State.HALTED
    code, why = 1, ""
    with open(os.devnull, "wb") as null:
        try:
            code = qm.run(vault, ["/bin/sh", "-c", QUIET_GPG_SCRIPT], Stdio(stdin=None, stdout=null, stderr=null))
            why = f"exit {code}"
        except QliteError as exc:
            why = str(exc)
    if not was_running:
        with contextlib.suppress(QliteError):
            qm.shutdown(vault)
    if code != 0:
        ctx.warn(
            f"could not add no-secmem-warning to {vault}'s gpg.conf ({why}); "
            "gpg run there directly will warn about insecure memory"
        )
    return code == 0
