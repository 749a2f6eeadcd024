"""Managing the keys in a vault qube with python-gnupg.

python-gnupg drives a gpg binary; here that binary is a small wrapper that
runs gpg *inside the vault* through 'qlite run', so secret keys never
leave it: the host only sees what gpg prints (listings, public keys)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from functools import cached_property

from qlite.core.context import Context
from qlite.errors import InvalidValue, QliteError


@dataclass
class KeyInfo:
    fingerprint: str
    keyid: str
    uids: list[str]
    secret: bool
    algo: str
    length: str
    created: str
    expires: str

    def as_json(self) -> dict:
        return self.__dict__.copy()


class VaultGPG:
    def __init__(self, ctx: Context, vault: str):
        self.ctx = ctx
        self.vault = vault

    @cached_property
    def wrapper(self) -> str:
        path = self.ctx.paths.run_dir / f"gpg-in-{self.vault}"
        self.ctx.paths.run_dir.mkdir(parents=True, exist_ok=True)
        script = (
            "#!/bin/sh\n"
            "# Written by qlite: python-gnupg runs this as its gpg binary.\n"
            f"QLITE_HOME={shlex.quote(str(self.ctx.paths.home))} exec {shlex.quote(sys.executable)} "
            f"-m qlite run {shlex.quote(self.vault)} -- gpg \"$@\"\n"
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(script)
        os.chmod(tmp, 0o700)
        tmp.replace(path)
        return str(path)

    @cached_property
    def gpg(self):  # -> gnupg.GPG
        import gnupg  # noqa: PLC0415

        try:
            return gnupg.GPG(gpgbinary=self.wrapper)
        except (OSError, ValueError, RuntimeError) as exc:
            raise QliteError(f"cannot run gpg in {self.vault}: {exc}") from None

    def list_keys(self, secret: bool = False) -> list[KeyInfo]:
        keys = self.gpg.list_keys(secret)
        return [
            KeyInfo(fingerprint=k.get("fingerprint", ""), keyid=k.get("keyid", ""), uids=list(k.get("uids", [])),
                    secret=secret, algo=str(k.get("algo", "")), length=str(k.get("length", "")),
                    created=str(k.get("date", "")), expires=str(k.get("expires", "")))
            for k in keys
        ]

    def generate(self, name: str, email: str) -> str:
        """An ed25519 signing key with a cv25519 encryption subkey, without a
        passphrase (the vault's isolation guards it); its fingerprint."""
        if not name.strip() or "@" not in email or any(c in name + email for c in "\n\r<>"):
            raise InvalidValue("give a name and an email address for the key")
        params = (
            "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\n"
            "Subkey-Type: ECDH\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
            f"Name-Real: {name}\nName-Email: {email}\nExpire-Date: 0\n%no-protection\n%commit\n"
        )
        result = self.gpg.gen_key(params)
        if not result.fingerprint:
            raise QliteError(f"gpg could not generate the key in {self.vault}: {result.stderr.strip()[-200:]}")
        return str(result.fingerprint)

    def import_keys(self, data: bytes) -> dict:
        result = self.gpg.import_keys(data)
        if not result.count:
            raise InvalidValue(f"gpg imported nothing into {self.vault}: {(result.stderr or '').strip()[-200:]}")
        return {"count": result.count, "imported": result.imported, "secret": result.sec_imported,
                "fingerprints": list(result.fingerprints)}

    def export_public(self, key: str) -> str:
        if not key or key.startswith("-"):
            raise InvalidValue(f"bad key name {key!r}")
        armored = self.gpg.export_keys(key, secret=False, armor=True)
        if not armored:
            raise InvalidValue(f"no public key {key!r} in {self.vault}")
        return str(armored)
