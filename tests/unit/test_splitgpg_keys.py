"""qlite splitgpg list: algorithm names and ISO 8601 dates from gpg's raw
listing (pure), with the JSON keys pinned."""

from __future__ import annotations

import pytest

from qlite.gpg.vault import KeyInfo, algorithm_name, iso_time, key_info

# python-gnupg 0.5's list_keys() entry for the key 'qlite splitgpg gen-key' makes.
GENERATED = {
    "type": "pub",
    "trust": "u",
    "length": "255",
    "algo": "22",
    "keyid": "1171ABF95EC9E523",
    "date": "1700000000",
    "expires": "",
    "cap": "scESC",
    "curve": "ed25519",
    "uids": ["Vault Test <vault@qlite.test>"],
    "subkeys": [
        [
            "B8CD438326720C11",
            "e",
            "232F26EE097B28A80F753B83B8CD438326720C11",
            "E78906C2C4393F55299B7C955D442D9949499280",
        ]
    ],
    "fingerprint": "CE631D38109873416A89C4881171ABF95EC9E523",
    "subkey_info": {
        "B8CD438326720C11": {
            "type": "sub",
            "length": "255",
            "algo": "18",
            "keyid": "B8CD438326720C11",
            "date": "1700000001",
            "expires": "1893456000",
            "cap": "e",
            "curve": "cv25519",
        }
    },
}
RSA = {
    "type": "pub",
    "length": "4096",
    "algo": "1",
    "keyid": "FA7AF4B3A8FD862F",
    "date": "1700000000",
    "expires": "1893456000",
    "cap": "escaESCA",
    "curve": "",
    "uids": ["R <r@x.y>"],
    "subkeys": [],
    "fingerprint": "FE53BC52CB360D7885496461FA7AF4B3A8FD862F",
}


@pytest.mark.parametrize(
    ("algo", "length", "curve", "name"),
    [
        ("22", "255", "ed25519", "ed25519"),
        ("18", "255", "cv25519", "cv25519"),
        ("19", "256", "nistp256", "nistp256"),
        ("1", "4096", "", "rsa4096"),
        ("1", "3072", "", "rsa3072"),
        ("17", "2048", "", "dsa2048"),
        ("16", "2048", "", "elg2048"),
        ("22", "255", "", "eddsa"),
        ("99", "1", "", "algo99"),
        ("", "", "", ""),
    ],
)
def test_algorithm_name(algo, length, curve, name):
    assert algorithm_name(algo, length, curve) == name


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("1700000000", "2023-11-14T22:13:20Z"),
        ("0", "1970-01-01T00:00:00Z"),
        ("20250102T030405", "2025-01-02T03:04:05Z"),
        ("", None),
        ("  ", None),
    ],
)
def test_iso_time(raw, iso):
    assert iso_time(raw) == iso


def test_a_generated_key_reads_as_gpg_shows_it():
    k = key_info(GENERATED, secret=True)
    assert (k.algorithm, k.created_at, k.expires_at) == ("ed25519", "2023-11-14T22:13:20Z", None)
    assert k.algorithms == "ed25519, cv25519"
    (sub,) = k.subkeys
    assert (sub.keyid, sub.algorithm, sub.usage) == ("B8CD438326720C11", "cv25519", "e")
    assert (sub.created_at, sub.expires_at) == ("2023-11-14T22:13:21Z", "2030-01-01T00:00:00Z")
    rsa = key_info(RSA, secret=False)
    assert (rsa.algorithms, rsa.expires_at, rsa.subkeys) == ("rsa4096", "2030-01-01T00:00:00Z", [])


def test_json_keys_are_pinned_and_the_raw_fields_stay():
    row = key_info(GENERATED, secret=True).as_json()
    assert set(row) == {
        "fingerprint",
        "keyid",
        "uids",
        "secret",
        "algo",
        "length",
        "created",
        "expires",
        "algorithm",
        "created_at",
        "expires_at",
        "subkeys",
    }
    # Scripts that read gpg's raw fields still find them.
    assert (row["algo"], row["length"], row["created"], row["expires"]) == ("22", "255", "1700000000", "")
    assert row["subkeys"] == [
        {
            "keyid": "B8CD438326720C11",
            "algorithm": "cv25519",
            "usage": "e",
            "created_at": "2023-11-14T22:13:21Z",
            "expires_at": "2030-01-01T00:00:00Z",
        }
    ]
    assert isinstance(key_info(RSA, secret=False), KeyInfo)
