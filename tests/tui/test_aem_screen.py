"""The anti-evil-maid screen over the real AemManager: a temporary home,
no TPM (a software seal with a passphrase), and components measured from
small files of the test's own. The TPM path is covered by
tests/integration/test_aem.py with swtpm."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Static

from qlite.aem.manager import AemManager, boot_id
from qlite.core.qubes import QubeManager
from qlite.core.templates import TemplateManager
from qlite.errors import StateError
from qlite.tui.screens.aem import AemScreen
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.secrets import PassphraseScreen, SecretScreen

from .conftest import AEM_COMPONENTS, PASSPHRASE, SECRET, SIZE, TEMPLATE, wait_for, wait_for_screen


async def open_aem(pilot, app) -> AemScreen:
    await pilot.press("5")
    await wait_for_screen(pilot, AemScreen)
    screen = app.screen
    await wait_for(pilot, lambda: screen.status is not None, what="the measurements")
    return screen


def status_text(screen) -> str:
    return str(screen.query_one("#aem-status", Static).content)


def verdict(screen) -> str:
    return str(screen.query_one("#verdict", Static).content)


def error(screen) -> str:
    return screen.query_one("#error").text


async def give_passphrase(pilot, app, passphrase: bytes) -> None:
    await wait_for_screen(pilot, PassphraseScreen)
    field = app.screen.query_one("#passphrase", Input)
    assert field.password  # not shown as typed
    field.value = passphrase.decode()
    await pilot.press("enter")


def stamped(core) -> bool:
    stamp = core.paths.run_dir / "aem-verified"
    return stamp.exists() and stamp.read_text().strip() == boot_id()


def enforced(core) -> bool:
    row = core.store.query_one("SELECT value FROM features WHERE qube='dom0' AND key='aem.enforce'")
    return row is not None and row["value"] == "1"


async def test_the_log_with_its_chain_and_the_seal_state(core, aem):
    aem.seal()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        table = screen.query_one("#measurements", DataTable)
        names = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert names == [*AEM_COMPONENTS, f"template:{TEMPLATE}"]
        # Each row shows the chain after it; the last is the whole chain, in the status.
        ctx = core.context()
        log = AemManager(ctx, TemplateManager(ctx)).log()
        ctx.store.close()
        assert str(table.get_row_at(table.row_count - 1)[3]) == log["chain"][:16] + "…"
        text = status_text(screen)
        assert f"Chain {log['chain']}" in text
        assert "Sealed: with a passphrase (no TPM: weaker)" in text
        assert "Enforced: no" in text and "This boot: not confirmed" in text
        assert "software only (no TPM here)" in text


async def test_nothing_sealed_says_so_and_verify_gives_one_line(core, aem):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        assert "Sealed: nothing yet" in status_text(screen)
        await pilot.press("v")
        await wait_for(pilot, lambda: error(screen))
        assert error(screen) == "nothing is sealed: run 'qlite aem seal --secret-file F' first"
        await pilot.press("e")  # enforcing needs something sealed
        await wait_for(pilot, lambda: error(screen) and "enforc" not in verdict(screen) and not screen.busy)
        assert error(screen).startswith("nothing is sealed")
    assert not enforced(core)


async def test_verify_asks_the_passphrase_and_shows_the_secret(core, aem):
    aem.seal()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("v")
        await give_passphrase(pilot, app, PASSPHRASE)
        await wait_for_screen(pilot, SecretScreen, what="the secret")
        assert str(app.screen.query_one("#secret", Static).content) == SECRET.decode()
        assert not app.screen.query("#yes")  # not enforced: nothing to confirm
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, AemScreen))
        assert verdict(screen).startswith("Verified at") and not error(screen)
    assert not stamped(core)


async def test_a_wrong_passphrase_is_one_line(core, aem):
    aem.seal()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("v")
        await give_passphrase(pilot, app, b"not it")
        await wait_for(pilot, lambda: error(screen))
        assert error(screen) == "wrong passphrase"
        assert isinstance(app.screen, AemScreen) and not verdict(screen)


async def test_verify_names_what_changed(core, aem):
    aem.seal()
    aem.change("binary:runsc")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("v")
        await give_passphrase(pilot, app, PASSPHRASE)
        await wait_for(pilot, lambda: "FAILED" in verdict(screen), what="the verdict")
        text = verdict(screen)
        assert "CHANGED binary:runsc: sealed" in text and "CHANGED policy" not in text
        assert screen.query_one("#verdict").has_class("-failed")
        assert not any(isinstance(s, SecretScreen) for s in app.screen_stack)
        table = screen.query_one("#measurements", DataTable)
        assert str(table.get_cell("binary:runsc", table.ordered_columns[4].key)) == "CHANGED"
        assert str(table.get_cell("policy", table.ordered_columns[4].key)) == ""


async def test_reseal_asks_first_then_verify_passes(core, aem):
    aem.seal()
    aem.change("policy")  # an update the user made
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("R")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, AemScreen))
        await pilot.press("R")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await give_passphrase(pilot, app, PASSPHRASE)
        await wait_for(pilot, lambda: not screen.busy and screen.status is not None, what="the reseal")
        await pilot.pause(0.1)
        assert not error(screen)
    ctx = core.context()
    result = AemManager(ctx, TemplateManager(ctx)).verify(PASSPHRASE)
    ctx.store.close()
    assert result.ok and result.secret == SECRET


async def test_enforce_then_verify_and_confirm_lets_qubes_start(core, aem):
    aem.seal()
    ctx = core.context()
    QubeManager(ctx).create("work", label="blue")
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("e")
        await wait_for(pilot, lambda: "Enforced: yes" in status_text(screen), what="enforcement")
        assert enforced(core)
        ctx = core.context()
        with pytest.raises(StateError, match="may not start"):
            QubeManager(ctx).start("work")
        ctx.store.close()

        # Saying no keeps qubes held back.
        await pilot.press("v")
        await give_passphrase(pilot, app, PASSPHRASE)
        await wait_for_screen(pilot, SecretScreen)
        await pilot.click("#no")
        await wait_for(pilot, lambda: "not your secret" in verdict(screen))
        assert not stamped(core)

        await pilot.press("v")
        await give_passphrase(pilot, app, PASSPHRASE)
        await wait_for_screen(pilot, SecretScreen)
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "This boot: verified and confirmed" in status_text(screen), what="the stamp")
    assert stamped(core)
    ctx = core.context()
    QubeManager(ctx).start("work")
    ctx.store.close()


async def test_relax_asks_first(core, aem):
    aem.seal()
    ctx = core.context()
    AemManager(ctx, TemplateManager(ctx)).set_enforced(True)
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_aem(pilot, app)
        await pilot.press("x")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.1)
        assert enforced(core)
        await pilot.press("x")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: "Enforced: no" in status_text(screen), what="relax")
    assert not enforced(core)
