"""The TPM seam (qlite.domain.context.Tpm): tpm2-tools, run against the TCTI
qlite is given.

qlite owns PCR 23: the TCG assigns it to applications and it may be reset
from locality 0, so qlite resets it, then extends its own measurements
into it. A secret is sealed under the owner hierarchy's primary key with a
policy on PCR 23 (and, optionally, on the host's boot PCRs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qlite.errors import AccessDenied, EngineError
from qlite.runtime.command import run_tool

PCR = 23
TIMEOUT_S = 60
DEVICE = Path("/dev/tpmrm0")


def tcti() -> str | None:
    """The TCTI to use: QLITE_TPM_TCTI (tests: swtpm's socket), else the
    kernel's resource manager when there is one, else None (no TPM)."""
    env = os.environ.get("QLITE_TPM_TCTI", "").strip()
    if env:
        return None if env == "none" else env
    return f"device:{DEVICE}" if DEVICE.exists() else None


def host_tpm() -> Tpm2Tools | None:
    """The TPM at tcti(), or None when there is none."""
    conf = tcti()
    return Tpm2Tools(conf) if conf else None


class Tpm2Tools:
    def __init__(self, tcti_conf: str) -> None:
        self.tcti = tcti_conf

    def _step(self, args: list[str], what: str, cwd: str, stdin: bytes | None = None) -> bytes:
        """One tool run of a seal or unseal. Without a resource manager
        (swtpm's socket) the objects a tool loads stay loaded, and a TPM
        holds only a few: flush them after every step (the next tool loads
        what it needs again from its context file)."""
        try:
            return self._run(args, what, stdin=stdin, cwd=cwd)
        finally:
            self._flush(cwd)

    def _run(self, args: list[str], what: str, stdin: bytes | None = None, cwd: str | None = None) -> bytes:
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        return run_tool(
            args,
            f"TPM: {what}",
            TIMEOUT_S,
            cwd,
            stdin=stdin,
            env=env,
            text=False,
            install="install tpm2-tools; setup.sh does",
        )

    def replay(self, events: list[bytes]) -> None:
        """Reset qlite's PCR and extend EVENTS (sha256 digests) into it."""
        self._run(["tpm2_pcrreset", str(PCR)], f"resetting PCR {PCR}")
        for ev in events:
            self._run(["tpm2_pcrextend", f"{PCR}:sha256={ev.hex()}"], f"extending PCR {PCR}")

    def read(self, pcrs: list[int]) -> dict[int, str]:
        out = self._run(["tpm2_pcrread", f"sha256:{','.join(map(str, pcrs))}"], "reading PCRs").decode()
        values = {}
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key.strip().isdigit() and value.strip().startswith("0x"):
                values[int(key)] = value.strip()[2:].lower()
        return values

    def _selection(self, pcrs: list[int]) -> str:
        return f"sha256:{','.join(str(p) for p in sorted(set(pcrs)))}"

    def seal(self, secret: bytes, pcrs: list[int]) -> tuple[bytes, bytes]:
        """Seal SECRET to the PCRs' current values; the (public, private) blobs."""
        with tempfile.TemporaryDirectory(prefix="qlite-aem-") as d:
            sel = self._selection(pcrs)
            try:
                self._step(
                    ["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"],
                    "creating the primary key",
                    d,
                )
                self._step(["tpm2_pcrread", "-Q", "-o", "pcrs.bin", sel], "reading PCRs", d)
                self._step(
                    ["tpm2_createpolicy", "-Q", "--policy-pcr", "-l", sel, "-f", "pcrs.bin", "-L", "policy"],
                    "making the PCR policy",
                    d,
                )
                self._step(
                    [
                        "tpm2_create",
                        "-Q",
                        "-C",
                        "primary.ctx",
                        "-L",
                        "policy",
                        "-i",
                        "-",
                        "-u",
                        "seal.pub",
                        "-r",
                        "seal.priv",
                    ],
                    "sealing",
                    d,
                    stdin=secret,
                )
                return Path(d, "seal.pub").read_bytes(), Path(d, "seal.priv").read_bytes()
            finally:
                self._flush(d)

    def unseal(self, public: bytes, private: bytes, pcrs: list[int]) -> bytes:
        """The sealed secret, if the PCRs hold what they held at sealing."""
        with tempfile.TemporaryDirectory(prefix="qlite-aem-") as d:
            Path(d, "seal.pub").write_bytes(public)
            Path(d, "seal.priv").write_bytes(private)
            try:
                self._step(
                    ["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"],
                    "creating the primary key",
                    d,
                )
                self._step(
                    ["tpm2_load", "-Q", "-C", "primary.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "seal.ctx"],
                    "loading the sealed secret",
                    d,
                )
                try:
                    return self._step(
                        ["tpm2_unseal", "-c", "seal.ctx", "-p", f"pcr:{self._selection(pcrs)}"], "unsealing", d
                    )
                except EngineError as exc:
                    raise AccessDenied("the TPM refused to unseal: the measurements differ from sealing time") from exc
            finally:
                self._flush(d)

    def _flush(self, cwd: str) -> None:
        for kind in ("-t", "-l", "-s"):  # transient objects, loaded and saved sessions
            try:
                self._run(["tpm2_flushcontext", kind], "flushing contexts", cwd=cwd)
            except EngineError:
                pass
