"""Sealing without a TPM: a key from a passphrase (scrypt), bound to the
measurement chain. Weaker than a TPM: whoever has the passphrase and the
sealed file can decrypt anywhere; it only shows the user whether the
measurements match. Pure functions over the standard library:
SHAKE-256 keystream, encrypt-then-MAC with HMAC-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SCRYPT = {"n": 1 << 15, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}


class WrongPassphrase(Exception):
    pass


class MeasurementsDiffer(Exception):
    pass


def _key(passphrase: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, **SCRYPT)


def _subkeys(key: bytes, pcr: bytes) -> tuple[bytes, bytes]:
    bound = hmac.new(key, b"qlite-aem-v1" + pcr, hashlib.sha256).digest()
    return (hmac.new(bound, b"enc", hashlib.sha256).digest(), hmac.new(bound, b"mac", hashlib.sha256).digest())


def _xor(data: bytes, key: bytes, nonce: bytes) -> bytes:
    stream = hashlib.shake_256(key + nonce).digest(len(data))
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def seal(
    secret: bytes, passphrase: bytes, pcr: bytes, salt: bytes | None = None, nonce: bytes | None = None
) -> dict[str, str]:
    salt = salt or os.urandom(16)
    nonce = nonce or os.urandom(16)
    key = _key(passphrase, salt)
    enc, mac = _subkeys(key, pcr)
    ct = _xor(secret, enc, nonce)
    return {
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": ct.hex(),
        "mac": hmac.new(mac, nonce + ct, hashlib.sha256).hexdigest(),
        "check": hmac.new(key, b"passphrase-check", hashlib.sha256).hexdigest(),
    }


def unseal(blob: dict[str, str], passphrase: bytes, pcr: bytes) -> bytes:
    key = _key(passphrase, bytes.fromhex(blob["salt"]))
    if not hmac.compare_digest(hmac.new(key, b"passphrase-check", hashlib.sha256).hexdigest(), blob["check"]):
        raise WrongPassphrase("wrong passphrase")
    enc, mac = _subkeys(key, pcr)
    nonce, ct = bytes.fromhex(blob["nonce"]), bytes.fromhex(blob["ciphertext"])
    if not hmac.compare_digest(hmac.new(mac, nonce + ct, hashlib.sha256).hexdigest(), blob["mac"]):
        raise MeasurementsDiffer("the measurements differ from sealing time")
    return _xor(ct, enc, nonce)
