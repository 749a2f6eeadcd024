"""Managing the keys in a vault qube with python-gnupg.

python-gnupg drives a gpg binary; here that binary is a small wrapper that
runs gpg *inside the vault* through 'qlite run', so secret keys never
leave it: the host only sees what gpg prints (listings, public keys)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from qlite.domain.context import Context
from qlite.errors import InvalidValue, QliteError

if TYPE_CHECKING:  # python-gnupg loads when a vault is first used
    import gnupg

# OpenPGP public-key algorithm numbers (RFC 4880 9.1, RFC 6637, RFC 9580),
# named as gpg --list-keys names them; ECC keys are named by their curve.
ALGORITHMS = {
    "1": "rsa",
    "2": "rsa",
    "3": "rsa",
    "16": "elg",
    "17": "dsa",
    "18": "ecdh",
    "19": "ecdsa",
    "20": "elg",
    "22": "eddsa",
    "25": "x25519",
    "26": "x448",
    "27": "ed25519",
    "28": "ed448",
}
SIZED = ("rsa", "elg", "dsa")


def algorithm_name(algo: str, length: str, curve: str = "") -> str:
    """gpg's name for a key's algorithm: rsa4096, dsa2048, ed25519,
    cv25519, nistp256… Pure. An unknown number stays as "algoN"."""
    if curve:
        return curve
    name = ALGORITHMS.get(algo)
    if name is None:
        return f"algo{algo}" if algo else ""
    return f"{name}{length}" if name in SIZED and length.isdigit() else name


def iso_time(value: str) -> str | None:
    """A gpg listing's date (seconds since the epoch, or already ISO 8601
    as in gpg's "20250102T030405") as ISO 8601 UTC; None when empty. Pure."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return value


@dataclass
class SubkeyInfo:
    keyid: str
    algorithm: str
    usage: str  # gpg's capability letters: s(ign), e(ncrypt), a(uthenticate), c(ertify)
    created_at: str | None
    expires_at: str | None


@dataclass
class KeyInfo:
    """One key in a vault. ``algo``, ``length``, ``created`` and ``expires``
    are gpg's raw fields (algorithm number, bits, seconds since the epoch),
    kept for scripts; ``algorithm``, ``created_at`` and ``expires_at`` are
    the readable forms (expires_at is None for a key that never expires)."""

    fingerprint: str
    keyid: str
    uids: list[str]
    secret: bool
    algo: str
    length: str
    created: str
    expires: str
    algorithm: str = ""
    created_at: str | None = None
    expires_at: str | None = None
    subkeys: list[SubkeyInfo] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)  # the subkeys too

    @property
    def algorithms(self) -> str:
        """The key's algorithm and its subkeys', as gpg lists them: "ed25519, cv25519"."""
        names = [self.algorithm] + [s.algorithm for s in self.subkeys if s.algorithm != self.algorithm]
        return ", ".join(n for n in names if n)


def key_info(k: dict, secret: bool) -> KeyInfo:
    """A KeyInfo from one of python-gnupg's list_keys() entries. Pure."""

    def text(d: dict, key: str) -> str:
        return str(d.get(key) or "")

    subkeys = []
    for sub in k.get("subkeys") or []:
        keyid = str(sub[0]) if sub else ""
        info = (k.get("subkey_info") or {}).get(keyid, {})
        subkeys.append(
            SubkeyInfo(
                keyid=keyid,
                algorithm=algorithm_name(text(info, "algo"), text(info, "length"), text(info, "curve")),
                usage=text(info, "cap") or (str(sub[1]) if len(sub) > 1 else ""),
                created_at=iso_time(text(info, "date")),
                expires_at=iso_time(text(info, "expires")),
            )
        )
    return KeyInfo(
        fingerprint=text(k, "fingerprint"),
        keyid=text(k, "keyid"),
        uids=[str(u) for u in k.get("uids") or []],
        secret=secret,
        algo=text(k, "algo"),
        length=text(k, "length"),
        created=text(k, "date"),
        expires=text(k, "expires"),
        algorithm=algorithm_name(text(k, "algo"), text(k, "length"), text(k, "curve")),
        created_at=iso_time(text(k, "date")),
        expires_at=iso_time(text(k, "expires")),
        subkeys=subkeys,
    )


class VaultGPG:
    def __init__(self, ctx: Context, vault: str) -> None:
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
            f'-m qlite run {shlex.quote(self.vault)} -- gpg "$@"\n'
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(script)
        os.chmod(tmp, 0o700)
        tmp.replace(path)
        return str(path)

    @cached_property
    def gpg(self) -> gnupg.GPG:
        import gnupg  # noqa: PLC0415 - python-gnupg costs ~30 ms; only key operations need it

        try:
            return gnupg.GPG(gpgbinary=self.wrapper)
        except (OSError, ValueError, RuntimeError) as exc:
            raise QliteError(f"cannot run gpg in {self.vault}: {exc}") from None

    def list_keys(self, secret: bool = False) -> list[KeyInfo]:
        return [key_info(k, secret) for k in self.gpg.list_keys(secret)]

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
        return {
            "count": result.count,
            "imported": result.imported,
            "secret": result.sec_imported,
            "fingerprints": list(result.fingerprints),
        }

    def export_public(self, key: str) -> str:
        if not key or key.startswith("-"):
            raise InvalidValue(f"bad key name {key!r}")
        armored = self.gpg.export_keys(key, secret=False, armor=True)
        if not armored:
            raise InvalidValue(f"no public key {key!r} in {self.vault}")
        return str(armored)
