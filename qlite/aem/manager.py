"""Anti-evil-maid: measure qlite's launch chain, seal a secret to it, show
the secret only when nothing changed, and hold qubes back until the user
has seen it.

State in $QLITE_HOME/aem/: ``sealed.json`` (mode, the measurement log at
sealing, the sealed blob) and ``components.json`` (the admin's measured
paths). ``run/aem-verified`` records a confirmed verification for this
boot; with enforcement on, qubes do not start without it.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qlite.aem import passphrase as pp
from qlite.aem.measure import Measurement, chain, changed, measure_files
from qlite.domain.context import Context, Tpm
from qlite.domain.ports import TemplateImages
from qlite.errors import AccessDenied, InvalidValue, NotFound, StateError
from qlite.host.tpm import PCR
from qlite.state.qubes import Features

ENFORCE_FEATURE = "aem.enforce"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass
class VerifyResult:
    ok: bool
    mode: str
    secret: bytes = b""
    changes: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    detail: str = ""

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "detail": self.detail,
            "changed": [{"component": n, "sealed": o, "now": c} for n, o, c in self.changes],
        }


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


class AemManager:
    def __init__(self, ctx: Context, templates: TemplateImages) -> None:
        self.ctx = ctx
        self.templates = templates  # qlite.core.templates.TemplateManager
        self.dir = ctx.paths.home / "aem"
        self.sealed_path = self.dir / "sealed.json"
        self.config = self.dir / "components.json"
        self.stamp = ctx.paths.run_dir / "aem-verified"

    # -- measuring -------------------------------------------------------------

    def measure(self) -> list[Measurement]:
        out = measure_files(self.ctx.paths, self.config)
        for name, image in self.templates.images():
            out.append(Measurement(f"template:{name}", image or "absent"))
        return out

    def tpm(self) -> Tpm | None:
        return self.ctx.tpm

    def log(self) -> dict:
        ms = self.measure()
        sealed = self._load() if self.sealed_path.exists() else None
        tpm = self.tpm()
        return {
            "measurements": [m.as_json() for m in ms],
            "chain": chain(ms).hex(),
            "tpm": tpm.tcti if tpm else None,
            "pcr": PCR if tpm else None,
            "sealed": sealed["mode"] if sealed else None,
            "sealed_at": sealed.get("sealed_at") if sealed else None,
            "enforced": self.enforced(),
        }

    # -- sealing -------------------------------------------------------------------

    def seal(self, secret: bytes, passphrase: bytes | None = None, boot_pcrs: list[int] | None = None) -> str:
        """Seal SECRET to the measurements now; returns the mode used."""
        if not secret:
            raise InvalidValue("the secret is empty")
        ms = self.measure()
        state: dict = {
            "version": 1,
            "log": [m.as_json() for m in ms],
            "chain": chain(ms).hex(),
            "sealed_at": self.ctx.clock.time(),
        }
        tpm = self.tpm()
        if tpm is not None:
            pcrs = sorted({PCR, *(boot_pcrs or [])})
            if any(not 0 <= p <= 23 for p in pcrs):
                raise InvalidValue("PCR numbers run from 0 to 23")
            tpm.replay([m.event for m in ms])
            public, private = tpm.seal(secret, pcrs)
            state.update(
                mode="tpm",
                pcrs=pcrs,
                public=base64.b64encode(public).decode(),
                private=base64.b64encode(private).decode(),
            )
        else:
            if not passphrase:
                raise InvalidValue("no TPM here: give a passphrase (--passphrase-file) to seal with")
            if boot_pcrs:
                raise InvalidValue("--boot-pcrs needs a TPM")
            state.update(mode="passphrase", blob=pp.seal(secret, passphrase, chain(ms)))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        tmp = self.sealed_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.sealed_path)
        self.stamp.unlink(missing_ok=True)
        return state["mode"]

    def _load(self) -> dict:
        try:
            return json.loads(self.sealed_path.read_text())
        except FileNotFoundError:
            raise NotFound("nothing is sealed: run 'qlite aem seal --secret-file F' first") from None
        except ValueError as exc:
            raise StateError(f"{self.sealed_path} is damaged: {exc}") from None

    def verify(self, passphrase: bytes | None = None) -> VerifyResult:
        state = self._load()
        sealed_log = [Measurement(d["name"], d["digest"]) for d in state["log"]]
        now = self.measure()
        changes = changed(sealed_log, now)
        if state["mode"] == "tpm":
            tpm = self.tpm()
            if tpm is None:
                raise StateError("the secret was sealed with a TPM, and no TPM is reachable now")
            tpm.replay([m.event for m in now])
            try:
                secret = tpm.unseal(
                    base64.b64decode(state["public"]), base64.b64decode(state["private"]), state["pcrs"]
                )
            except AccessDenied as exc:
                detail = str(exc) if changes else "the host's boot PCRs differ from sealing time"
                return VerifyResult(False, "tpm", changes=changes, detail=detail)
            return VerifyResult(True, "tpm", secret=secret, changes=changes)
        if not passphrase:
            raise InvalidValue("the secret was sealed with a passphrase: give it (--passphrase-file)")
        try:
            secret = pp.unseal(state["blob"], passphrase, chain(now))
        except pp.WrongPassphrase:
            raise AccessDenied("wrong passphrase") from None
        except pp.MeasurementsDiffer as exc:
            return VerifyResult(False, "passphrase", changes=changes, detail=str(exc))
        return VerifyResult(True, "passphrase", secret=secret, changes=changes)

    def reseal(self, passphrase: bytes | None = None) -> str:
        """After a legitimate update: unseal with the sealed log, seal again
        to the measurements now."""
        state = self._load()
        sealed_log = [Measurement(d["name"], d["digest"]) for d in state["log"]]
        if state["mode"] == "tpm":
            tpm = self.tpm()
            if tpm is None:
                raise StateError("the secret was sealed with a TPM, and no TPM is reachable now")
            tpm.replay([m.event for m in sealed_log])
            secret = tpm.unseal(base64.b64decode(state["public"]), base64.b64decode(state["private"]), state["pcrs"])
            return self.seal(secret, boot_pcrs=[p for p in state["pcrs"] if p != PCR])
        if not passphrase:
            raise InvalidValue("the secret was sealed with a passphrase: give it (--passphrase-file)")
        try:
            secret = pp.unseal(state["blob"], passphrase, bytes.fromhex(state["chain"]))
        except pp.WrongPassphrase:
            raise AccessDenied("wrong passphrase") from None
        except pp.MeasurementsDiffer:
            raise StateError(f"{self.sealed_path} does not match its own log: it was altered") from None
        return self.seal(secret, passphrase)

    # -- holding qubes back ----------------------------------------------------------

    def confirm(self) -> None:
        """The user saw the right secret: qubes may start in this boot."""
        self.ctx.paths.run_dir.mkdir(parents=True, exist_ok=True)
        self.stamp.write_text(boot_id())

    def enforced(self) -> bool:
        return Features(self.ctx.store).all("dom0").get(ENFORCE_FEATURE, "") in ("1", "true", "True", "yes")

    def set_enforced(self, on: bool) -> None:
        if on:
            self._load()  # only with something sealed
        features = Features(self.ctx.store)
        if on:
            features.set("dom0", ENFORCE_FEATURE, "1")
        elif self.enforced():  # relaxing what was never enforced changes nothing
            features.delete("dom0", ENFORCE_FEATURE)

    def check_start(self, qube: str) -> None:
        if not self.enforced():
            return
        try:
            confirmed = self.stamp.read_text().strip() == boot_id()
        except OSError:
            confirmed = False
        if not confirmed:
            raise StateError(
                f"anti-evil-maid: {qube} may not start before this boot's measurements are "
                "verified and confirmed: run 'qlite aem verify'"
            )
