"""The measurement chain, the component diff and passphrase sealing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.aem import passphrase as pp
from qlite.aem.measure import ZERO, Measurement, chain, changed, extend, tree_digest

A, B, C = Measurement("qlite", "aa"), Measurement("policy", "bb"), Measurement("template:t", "cc")


def test_chain_extends_like_a_tpm_pcr():
    event = hashlib.sha256(b"qlite\0aa").digest()
    assert A.event == event
    assert chain([A]) == hashlib.sha256(ZERO + event).digest()
    assert chain([A, B]) == extend(extend(ZERO, A.event), B.event)
    assert chain([]) == ZERO


def test_order_and_every_digest_matter():
    assert chain([A, B]) != chain([B, A])
    assert chain([A, B]) != chain([A, Measurement("policy", "bc")])
    assert chain([A, B]) != chain([A, B, C])


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ([A, B], [A, B], []),
        ([A, B], [A, Measurement("policy", "b2")], [("policy", "bb", "b2")]),
        ([A, B], [A, B, C], [("template:t", None, "cc")]),
        ([A, B, C], [A, B], [("template:t", "cc", None)]),
        (
            [A, B],
            [Measurement("qlite", "a2"), Measurement("policy", "b2")],
            [("qlite", "aa", "a2"), ("policy", "bb", "b2")],
        ),
    ],
)
def test_changed_names_each_component(old, new, want):
    assert changed(old, new) == want


def test_tree_digest_sees_names_contents_and_absence(tmp_path):
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("one")
    first = tree_digest([root])
    (root / "sub" / "f").write_text("two")
    second = tree_digest([root])
    (root / "sub" / "f").rename(root / "sub" / "g")
    third = tree_digest([root])
    assert len({first, second, third}) == 3
    assert tree_digest([tmp_path / "missing"]) != tree_digest([tmp_path / "other-missing"])
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert tree_digest([root]) == third  # bytecode caches are not the installation


PCR = hashlib.sha256(b"measurements").digest()


@settings(max_examples=15)  # scrypt is slow on purpose
@given(st.binary(min_size=1, max_size=200))
def test_passphrase_round_trip(secret):
    blob = pp.seal(secret, b"pass", PCR, salt=b"s" * 16, nonce=b"n" * 16)
    assert pp.unseal(blob, b"pass", PCR) == secret
    assert bytes.fromhex(blob["ciphertext"]) != secret or len(secret) < 4


def test_wrong_passphrase_and_changed_measurements_are_told_apart():
    blob = pp.seal(b"secret", b"pass", PCR)
    with pytest.raises(pp.WrongPassphrase):
        pp.unseal(blob, b"Pass", PCR)
    with pytest.raises(pp.MeasurementsDiffer):
        pp.unseal(blob, b"pass", hashlib.sha256(b"other").digest())
    tampered = {**blob, "ciphertext": ("00" if blob["ciphertext"][:2] != "00" else "01") + blob["ciphertext"][2:]}
    with pytest.raises(pp.MeasurementsDiffer):
        pp.unseal(tampered, b"pass", PCR)
