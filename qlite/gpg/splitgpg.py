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
from dataclasses import dataclass
from pathlib import Path

from qlite.core.context import Context
from qlite.core.model import State
from qlite.core.qubes import QubeManager
from qlite.engines.base import Stdio
from qlite.errors import InvalidValue, QliteError

SERVICE = "qubes.Gpg"
POLICY_FILE = "40-splitgpg.policy"
CLIENTS_FEATURE = "splitgpg.clients"
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
        return self.__dict__.copy()


def render_policy(vaults: dict[str, list[str]]) -> str:
    """The managed policy file for VAULTS (vault -> clients). Pure."""
    lines = [
        "# Managed by 'qlite splitgpg setup': rewritten on every change.",
        "# Split GPG: each client may ask its vault to sign, decrypt, encrypt and",
        "# list keys; the user is asked, and a 'yes' stands for the client's",
        "# autoaccept.qubes.Gpg feature (300 s by default). To override, put",
        "# your own qubes.Gpg lines in an earlier file such as 30-user.policy.",
        "",
    ]
    defaults_given: set[str] = set()
    for vault in sorted(vaults):
        for client in sorted(vaults[vault]):
            lines.append(f"{SERVICE}  *  {client}  {vault}  ask default_target={vault}")
            if client not in defaults_given:
                # Without QLITE_GPG_DOMAIN the client names no target: the
                # first vault set up for it is the one asked.
                lines.append(f"{SERVICE}  *  {client}  @default  ask target={vault} default_target={vault}")
                defaults_given.add(client)
    return "\n".join(lines) + "\n"


def setup(ctx: Context, vault: str, clients: list[str], autoaccept: int | None = None) -> SplitGpgSetup:
    """Create or configure VAULT (offline), add CLIENTS, write the policy."""
    qm = QubeManager(ctx)
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
    known = set(qm.features.all(vault).get(CLIENTS_FEATURE, "").split())
    known |= set(clients)
    qm.features.set(vault, CLIENTS_FEATURE, " ".join(sorted(known)))
    for client in clients:
        if autoaccept is not None or AUTOACCEPT_FEATURE not in qm.features.all(client):
            qm.features.set(client, AUTOACCEPT_FEATURE, str(DEFAULT_AUTOACCEPT if autoaccept is None else autoaccept))
    path = write_policy(ctx, qm)
    quiet_vault_gpg(ctx, qm, vault)
    return SplitGpgSetup(vault=vault, clients=sorted(known), created=created, policy_file=str(path))


def quiet_vault_gpg(ctx: Context, qm: QubeManager, vault: str) -> bool:
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
        ctx.warn(f"could not add no-secmem-warning to {vault}'s gpg.conf ({why}); "
                 "gpg run there directly will warn about insecure memory")
    return code == 0


def vaults(qm: QubeManager) -> dict[str, list[str]]:
    out = {}
    for q in qm.list():
        clients = qm.features.all(q.name).get(CLIENTS_FEATURE, "").split()
        if clients:
            out[q.name] = [c for c in clients if qm.exists(c)]
    return out


def forget_qube(ctx: Context, qm: QubeManager, name: str) -> bool:
    """After qube NAME is removed: take it off every vault's client list and
    rewrite the managed policy, so that a qube created later under that
    name inherits nothing. True if anything named it."""
    named = False
    for row in ctx.store.query("SELECT qube, value FROM features WHERE key=?", (CLIENTS_FEATURE,)):
        clients = row["value"].split()
        if row["qube"] == name:
            named = True
        elif name in clients:
            qm.features.set(row["qube"], CLIENTS_FEATURE, " ".join(c for c in clients if c != name))
            named = True
    policy = ctx.paths.policy_dir / POLICY_FILE
    if named or (policy.is_file() and name in policy.read_text().split()):
        write_policy(ctx, qm)
        return True
    return False


def write_policy(ctx: Context, qm: QubeManager) -> Path:
    directory = ctx.paths.policy_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / POLICY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_policy(vaults(qm)))
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path
