"""The split-GPG policy file qlite manages (40-splitgpg.policy in the admin
policy directory), in Qubes' format. Which qubes use which vault is the
vault's feature ``splitgpg.clients``; the file is rewritten from those on
every change, and when a qube named in it is removed."""

from __future__ import annotations

import os
from pathlib import Path

from qlite.paths import Paths
from qlite.state.qubes import QubeStore

SERVICE = "qubes.Gpg"
POLICY_FILE = "40-splitgpg.policy"
CLIENTS_FEATURE = "splitgpg.clients"


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


def vaults(store: QubeStore) -> dict[str, list[str]]:
    """Vault -> the clients of it that exist."""
    existing = store.names()
    out = {}
    for vault, clients in store.features.holders(CLIENTS_FEATURE).items():
        if vault in existing and clients.split():
            out[vault] = [c for c in clients.split() if c in existing]
    return out


def write_policy(paths: Paths, store: QubeStore) -> Path:
    directory = paths.policy_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / POLICY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_policy(vaults(store)))
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def forget_qube(paths: Paths, store: QubeStore, name: str) -> bool:
    """After qube NAME is removed: take it off every vault's client list and
    rewrite the managed policy, so that a qube created later under that
    name inherits nothing. True if anything named it."""
    named = False
    for vault, value in store.features.holders(CLIENTS_FEATURE).items():
        clients = value.split()
        if vault == name:
            named = True
        elif name in clients:
            store.features.set(vault, CLIENTS_FEATURE, " ".join(c for c in clients if c != name))
            named = True
    policy = paths.policy_dir / POLICY_FILE
    if named or (policy.is_file() and name in policy.read_text().split()):
        write_policy(paths, store)
        return True
    return False
