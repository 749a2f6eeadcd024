"""RPC questions: polled from the asks source, answered in a modal."""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import Button, RadioButton, Static

from qlite.tui.asks import Question
from qlite.tui.screens.ask import AskScreen
from qlite.tui.screens.templates import TemplatesScreen

from .conftest import SIZE, wait_for, wait_for_screen


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def question(
    ask_id: int = 1, *, choices=("vault", "personal"), default=None, seconds=60, service="qubes.Filecopy"
) -> Question:
    return Question(
        id=ask_id,
        source="work",
        service=service,
        argument="",
        target="@default",
        choices=tuple(choices),
        default_target=default,
        seconds_left=seconds,
    )


def shown_targets(screen: AskScreen) -> list[tuple[str, bool]]:
    return [(str(b.label), b.value) for b in screen.query(RadioButton)]


async def wait_for_question(pilot, app, ask_id: int | None = None) -> AskScreen:
    """The question's screen once it is laid out: a pushed screen is the
    app's screen at once, but its widgets come a moment later."""
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, AskScreen) and ask_id in (None, app.screen.question.id),
        what=f"question {ask_id or ''}",
    )
    # query(), not query_one(): on a loaded machine the dialog may not be composed yet.
    await wait_for(pilot, lambda: any(d.region.area for d in app.screen.query(".dialog")), what="the dialog's layout")
    return app.screen


async def test_only_the_choices_and_nothing_preselected(core):
    core.asks.questions = [question(choices=("vault", "personal"))]
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_question(pilot, app)
        assert shown_targets(screen) == [("vault", False), ("personal", False)]
        summary = str(screen.query_one("#summary", Static).content)
        assert "work wants to call qubes.Filecopy" in summary
        assert screen.query_one("#allow", Button).disabled
        await pilot.press("a")  # no target chosen: nothing is sent
        await pilot.pause(0.1)
        assert core.asks.answers == [] and isinstance(app.screen, AskScreen)
        await pilot.press("down", "enter")  # the second choice
        assert not screen.query_one("#allow", Button).disabled
        await pilot.press("a")
        await wait_for(pilot, lambda: core.asks.answers, what="the answer")
        assert core.asks.answers == [(1, True, "personal")]
        await wait_for(pilot, lambda: not isinstance(app.screen, AskScreen))
        await pilot.pause(0.2)  # later polls: nothing left to ask
        assert not isinstance(app.screen, AskScreen)


async def test_default_target_is_preselected_and_allowed(core):
    core.asks.questions = [question(choices=("vault", "personal"), default="vault")]
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_question(pilot, app)
        assert shown_targets(screen) == [("vault", True), ("personal", False)]
        await pilot.click("#allow")
        await wait_for(pilot, lambda: core.asks.answers)
    assert core.asks.answers == [(1, True, "vault")]


async def test_deny(core):
    core.asks.questions = [question(default="vault")]
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_question(pilot, app)
        await pilot.press("d")
        await wait_for(pilot, lambda: core.asks.answers)
    assert core.asks.answers == [(1, False, None)]


async def test_counts_down_and_closes_at_the_deadline(core):
    clock = Clock()
    core.asks.questions = [question(seconds=30)]
    app = core.app(clock=clock, ask_tick=0.02)
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_question(pilot, app)
        countdown = screen.query_one("#countdown", Static)
        assert str(countdown.content).startswith("30 s left")
        clock.now += 12
        await wait_for(pilot, lambda: str(countdown.content).startswith("18 s left"), what="the countdown")
        clock.now += 18
        await wait_for(pilot, lambda: not isinstance(app.screen, AskScreen), what="the question to close")
        # Still pending at the daemon for a moment: it must not pop up again.
        await pilot.pause(0.3)
        assert not isinstance(app.screen, AskScreen)
    assert core.asks.answers == []  # no answer is a deny, decided by the daemon


async def test_closes_when_answered_elsewhere_then_shows_the_next(core):
    core.asks.questions = [question(1), question(2, service="qubes.Gpg", choices=("vault",))]
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_question(pilot, app)
        assert screen.question.id == 1
        core.asks.questions = core.asks.questions[1:]  # e.g. qlite policy ask 1 deny
        gpg = await wait_for_question(pilot, app, 2)
        assert "Split GPG" in str(gpg.query_one(".dialog-title").content)
        assert shown_targets(gpg) == [("vault", False)]
    assert core.asks.answers == []


async def test_a_question_comes_up_over_any_screen(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for_screen(pilot, TemplatesScreen)
        core.asks.questions = [question()]
        await wait_for_question(pilot, app)
        await pilot.press("1")  # no leaving the question by switching screens
        await pilot.pause(0.1)
        assert isinstance(app.screen, AskScreen)
        await pilot.press("escape")
        await wait_for_screen(pilot, TemplatesScreen)
    assert core.asks.answers == [(1, False, None)]
