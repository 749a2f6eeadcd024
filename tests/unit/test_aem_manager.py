"""AemManager over the TPM seam: sealing to the measurements, and a changed
component refusing the secret, without tpm2-tools or a TPM
(tests/integration/test_aem.py does the same against swtpm)."""

from __future__ import annotations

import hashlib
import json

import pytest

from qlite.aem.manager import AemManager
from qlite.aem.measure import default_components
from qlite.domain.context import Context
from qlite.errors import AccessDenied, InvalidValue, NotFound
from qlite.host.tpm import PCR


class FakeTpm:
    """One PCR bank that extends as a TPM does; a sealed blob opens only
    while the PCR holds what it held at sealing."""

    tcti = "fake:0"

    def __init__(self) -> None:
        self.pcr = bytes(32)
        self.replays = 0

    def replay(self, events: list[bytes]) -> None:
        self.replays += 1
        self.pcr = bytes(32)
        for ev in events:
            self.pcr = hashlib.sha256(self.pcr + ev).digest()

    def read(self, pcrs: list[int]) -> dict[int, str]:
        return {PCR: self.pcr.hex()}

    def seal(self, secret: bytes, pcrs: list[int]) -> tuple[bytes, bytes]:
        assert PCR in pcrs
        return self.pcr, secret

    def unseal(self, public: bytes, private: bytes, pcrs: list[int]) -> bytes:
        if public != self.pcr:
            raise AccessDenied("the TPM refused to unseal: the measurements differ from sealing time")
        return private


class Images:
    def __init__(self) -> None:
        self.image = "sha256:" + "a" * 64

    def images(self) -> list[tuple[str, str | None]]:
        return [("debian-12", self.image)]


@pytest.fixture
def aem(paths, engine, ctx, tmp_path):
    tpm = FakeTpm()
    actx = Context(paths, engine=engine, store=ctx.store, clock=ctx.clock, tpm=tpm)
    images = Images()
    mgr = AemManager(actx, images)
    # Every component measured is a file of this test's own.
    parts = tmp_path / "parts"
    parts.mkdir()
    overrides = {}
    for name in default_components(paths):
        f = parts / name.replace(":", "_")
        f.write_text(name)
        overrides[name] = str(f)
    mgr.dir.mkdir(parents=True, exist_ok=True)
    mgr.config.write_text(json.dumps(overrides))
    return mgr, tpm, images, overrides


def test_sealed_with_the_tpm_the_secret_comes_back_while_nothing_changed(aem):
    mgr, tpm, _, _ = aem
    assert mgr.seal(b"my phrase") == "tpm"
    sealed = json.loads(mgr.sealed_path.read_text())
    assert sealed["pcrs"] == [PCR] and sealed["sealed_at"] == mgr.ctx.clock.time()
    result = mgr.verify()
    assert (result.ok, result.mode, result.secret, result.changes) == (True, "tpm", b"my phrase", [])
    assert mgr.log()["tpm"] == "fake:0"


@pytest.mark.parametrize("change", ["component", "template"])
def test_a_changed_component_or_template_keeps_the_secret_sealed_and_is_named(aem, change):
    mgr, _, images, overrides = aem
    mgr.seal(b"my phrase")
    if change == "component":
        name = next(iter(overrides))
        with open(overrides[name], "a") as f:
            f.write("tampered")
    else:
        name = "template:debian-12"
        images.image = "sha256:" + "b" * 64
    result = mgr.verify()
    assert not result.ok and not result.secret
    assert [c[0] for c in result.changes] == [name]


def test_reseal_after_a_legitimate_change_opens_again(aem):
    mgr, _, images, _ = aem
    mgr.seal(b"my phrase")
    images.image = "sha256:" + "c" * 64
    assert not mgr.verify().ok
    assert mgr.reseal() == "tpm"
    assert mgr.verify().secret == b"my phrase"


def test_pcr_numbers_are_checked_before_anything_is_sealed(aem):
    mgr, tpm, _, _ = aem
    with pytest.raises(InvalidValue, match="PCR numbers run from 0 to 23"):
        mgr.seal(b"s", boot_pcrs=[24])
    assert not mgr.sealed_path.exists()


def test_enforcement_is_switched_on_only_with_a_seal_and_relaxing_twice_is_harmless(aem):
    mgr, _, _, _ = aem
    mgr.set_enforced(False)  # never enforced: nothing to do, no error
    assert not mgr.enforced()
    with pytest.raises(NotFound, match="nothing is sealed"):
        mgr.set_enforced(True)
    mgr.seal(b"my phrase")
    mgr.set_enforced(True)
    assert mgr.enforced()
    mgr.set_enforced(False)
    mgr.set_enforced(False)
    assert not mgr.enforced()
