"""Anti-evil-maid: the measurement log with the chain it extends, the seal
state; verify (asking for the passphrase when the seal needs one), which
shows the secret or names each component that changed; reseal after an
update of one's own; enforce and relax."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Label, Static

from qlite.aem.manager import VerifyResult
from qlite.errors import QliteError
from qlite.tui.backend import AemStatus
from qlite.tui.messages import AemLoaded, AemVerified
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.calls import CallingScreen
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.nav import nav_bindings
from qlite.tui.screens.secrets import PassphraseScreen, SecretScreen
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.key_footer import KeyFooter

COLUMNS = ("#", "COMPONENT", "SHA256", "CHAIN AFTER", "SINCE SEALING")
DIGEST = 16  # hex digits shown of a digest; the whole chain is in the status


def digest_text(digest: str | None) -> str:
    if not digest:
        return "absent"
    return digest if digest == "absent" else digest[:DIGEST] + "…"


def status_lines(s: AemStatus) -> str:
    if s.sealed is None:
        sealed = "Sealed: nothing yet; seal a secret with 'qlite aem seal --secret-file F'"
    else:
        how = "with the TPM" if s.sealed == "tpm" else "with a passphrase (no TPM: weaker)"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.sealed_at)) if s.sealed_at is not None else "?"
        sealed = f"Sealed: {how}, {when}"
    enforced = (
        "Enforced: yes, qubes wait for a confirmed verify in each boot"
        if s.enforced
        else "Enforced: no, qubes start without a verify"
    )
    boot = "This boot: verified and confirmed" if s.confirmed else "This boot: not confirmed"
    where = f"TPM PCR {s.pcr} ({s.tpm})" if s.tpm else "software only (no TPM here)"
    return f"{sealed}\n{enforced} · {boot}\nChain {s.chain}\nExtended in: {where}"


class AemScreen(CallingScreen):
    BINDINGS = [
        Binding("v", "verify", "Verify"),
        Binding("R", "reseal", "Reseal"),
        Binding("e", "enforce", "Enforce"),
        Binding("x", "relax", "Relax"),
        Binding("r", "reload", "Reload"),
        *nav_bindings("aem"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.status: AemStatus | None = None
        self.changes: dict[str, tuple[str | None, str | None]] = {}
        self.busy = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("measuring…", id="aem-status", markup=False)
        yield Label("Measurements, in the order they extend the chain", classes="section-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="measurements")
        yield Static("", id="verdict", markup=False)
        yield ErrorLine(id="error")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "anti-evil-maid"
        self.query_one("#measurements", DataTable).add_columns(*COLUMNS)
        self.query_one("#measurements", DataTable).focus()
        self.load()

    def on_screen_resume(self) -> None:
        if self.is_mounted and not self.busy:
            self.load()

    # -- reading ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="aem-load")
    def load(self) -> None:
        try:
            self.post_message(AemLoaded(qlite_app(self).backend.aem_status()))
        except QliteError as exc:
            self.post_message(AemLoaded(None, str(exc)))

    def on_aem_loaded(self, message: AemLoaded) -> None:
        if message.status is None:
            self.error(message.error)
            return
        self.status = message.status
        self.query_one("#aem-status", Static).update(status_lines(message.status))
        self.redraw()

    def redraw(self) -> None:
        table = self.query_one("#measurements", DataTable)
        table.clear()
        if self.status is None:
            return
        for i, m in enumerate(self.status.measurements):
            change: Text | str = Text("CHANGED", style="bold red") if m.name in self.changes else ""
            table.add_row(str(i), m.name, digest_text(m.digest), digest_text(m.chain), change, key=m.name)

    # -- actions -----------------------------------------------------------------

    def _with_passphrase(self, why: str, then: Callable[[bytes | None], None]) -> None:
        """THEN(passphrase), asking for it first if the seal needs one."""
        if self.status is None or self.status.sealed != "passphrase":
            then(None)  # TPM, or nothing sealed (core says so)
            return

        def answered(passphrase: bytes | None) -> None:
            if passphrase is not None:
                then(passphrase)

        self.app.push_screen(PassphraseScreen(why), answered)

    def action_verify(self) -> None:
        def verify(passphrase: bytes | None) -> None:
            if self.begin("verifying"):
                self.query_one("#verdict", Static).update("verifying…")
                self._verify(passphrase)

        self._with_passphrase("The secret was sealed with a passphrase: give it to verify.", verify)

    @work(thread=True, exclusive=True, group="AemScreen-call")
    def _verify(self, passphrase: bytes | None) -> None:
        try:
            self.post_message(AemVerified(qlite_app(self).backend.aem_verify(passphrase)))
        except QliteError as exc:
            self.post_message(AemVerified(None, str(exc)))

    def on_aem_verified(self, message: AemVerified) -> None:
        self.busy = ""
        verdict = self.query_one("#verdict", Static)
        result = message.result
        if result is None:
            verdict.update("")
            self.error(message.error)
            return
        self.changes = {name: (old, new) for name, old, new in result.changes}
        self.redraw()
        verdict.set_class(not result.ok, "-failed")
        if not result.ok:
            verdict.update(failure_text(result))
            return
        verdict.update(f"Verified at {time.strftime('%H:%M:%S')}: every measurement matches.")
        enforced = bool(self.status and self.status.enforced)

        def answered(yes: bool | None) -> None:
            if yes:
                self.start_call("confirming", self._confirm)
            elif enforced:
                verdict.set_class(True, "-failed")
                verdict.update(
                    "You said that is not your secret: treat this machine as tampered with. Qubes stay held back."
                )

        self.app.push_screen(SecretScreen(result.secret, enforced), answered)

    def _confirm(self) -> str:
        qlite_app(self).backend.aem_confirm()
        return "confirmed: qubes may start in this boot"

    def _set_enforced(self, on: bool) -> str:
        qlite_app(self).backend.aem_set_enforced(on)
        return (
            "enforced: qubes start only after a confirmed verify in each boot"
            if on
            else "relaxed: qubes start without anti-evil-maid verification"
        )

    def action_reseal(self) -> None:
        def reseal(passphrase: bytes | None) -> None:
            self.start_call(
                "resealing",
                lambda: f"resealed to the current measurements ({qlite_app(self).backend.aem_reseal(passphrase)})",
            )

        def answered(yes: bool | None) -> None:
            if yes:
                self._with_passphrase("Give the passphrase the secret was sealed with, to seal it again.", reseal)

        self.app.push_screen(
            ConfirmScreen(
                "Reseal the secret to what is installed now? Do it only after an update you made yourself: "
                "whatever changed becomes what the next verify expects.",
                "Reseal",
            ),
            answered,
        )

    def action_enforce(self) -> None:
        self.start_call("enforcing", lambda: self._set_enforced(True))

    def action_relax(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.start_call("relaxing", lambda: self._set_enforced(False))

        self.app.push_screen(
            ConfirmScreen("Relax anti-evil-maid? Qubes then start without a verified, confirmed boot.", "Relax"),
            answered,
        )

    def call_succeeded(self, action: str) -> None:
        if action == "resealing":
            self.changes = {}
            verdict = self.query_one("#verdict", Static)
            verdict.set_class(False, "-failed")
            verdict.update("")

    def action_reload(self) -> None:
        self.load()


def failure_text(result: VerifyResult) -> str:
    lines = [f"Verification FAILED: {result.detail or 'the measurements differ from sealing time'}"]
    for name, old, new in result.changes:
        lines.append(f"  CHANGED {name}: sealed {digest_text(old)}, now {digest_text(new)}")
    lines.append("If you changed these (an update), reseal (R); if not, treat this machine as tampered with.")
    return "\n".join(lines)
