"""The qlite TUI: ``qlite tui``.

Screens (switched with 1-5): qubes, templates, logs, devices, anti-evil-maid.
Every blocking call runs in a worker thread and reports back with a
message; the RPC broker's questions are polled every second and answered in
a modal, whatever screen is showing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen

from qlite.domain.context import Context
from qlite.errors import QliteError
from qlite.tui.asks import AsksSource, DaemonAsks, Question
from qlite.tui.backend import Backend
from qlite.tui.messages import AskAnswered, AsksPolled, AsksPollFailed, CoreWarning
from qlite.tui.runner import CliRunner, CommandRunner
from qlite.tui.screens.aem import AemScreen
from qlite.tui.screens.ask import AskAnswer, AskScreen
from qlite.tui.screens.devices import DevicesScreen
from qlite.tui.screens.dialogs import ConfirmScreen, ErrorScreen
from qlite.tui.screens.logs import LogsScreen
from qlite.tui.screens.nav import MODES as NAV_KEYS
from qlite.tui.screens.qubes import QubesScreen
from qlite.tui.screens.templates import TemplatesScreen

REFRESH_INTERVAL_S = 2.0
ASK_INTERVAL_S = 1.0
# Workers that change something: quitting asks first while one runs.
BUSY_GROUPS = ("qube:", "template:", "device-action", "aem-action")


class QliteApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "qlite"
    MODES = {
        "qubes": QubesScreen,
        "templates": TemplatesScreen,
        "logs": LogsScreen,
        "devices": DevicesScreen,
        "aem": AemScreen,
    }
    DEFAULT_MODE = "qubes"
    BINDINGS = [
        *(Binding(key, f"switch_mode('{mode}')", title, show=False) for key, mode, title in NAV_KEYS),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        backend: Backend,
        asks: AsksSource,
        runner: CommandRunner,
        *,
        refresh_interval: float = REFRESH_INTERVAL_S,
        ask_interval: float = ASK_INTERVAL_S,
        ask_tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.asks = asks
        self.runner = runner
        self.refresh_interval = refresh_interval
        self.ask_interval = ask_interval
        self.ask_tick = ask_tick
        self.clock = clock
        self.ask_screen: AskScreen | None = None
        self._polling = False
        self._handled: set[int] = set()  # answered or timed out here; the daemon may not know yet
        self._poll_error = ""
        self._deferred_errors: list[str] = []
        backend.on_warning = lambda text: self.post_message(CoreWarning(text))

    def on_mount(self) -> None:
        self.poll_asks()
        if self.ask_interval:
            self.set_interval(self.ask_interval, self.poll_asks)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A dialog (an RPC question above all) stays in front until answered.
        if action == "switch_mode" and isinstance(self.screen, ModalScreen):
            return False
        return True

    # -- errors and warnings ---------------------------------------------------

    def show_error(self, message: str) -> None:
        """A QliteError's one line, in a dialog. While an RPC question is
        open it waits: the question must not be hidden (or closed) by it."""
        if self.ask_screen is not None:
            self._deferred_errors.append(message)
            self.notify(message, severity="error", markup=False)
            return
        self.push_screen(ErrorScreen(message))

    def on_core_warning(self, message: CoreWarning) -> None:
        self.notify(message.text, severity="warning", markup=False, timeout=8)

    # -- RPC questions -----------------------------------------------------------

    def poll_asks(self) -> None:
        if self._polling:
            return
        self._polling = True
        self._poll()

    @work(thread=True, exclusive=True, group="asks")
    def _poll(self) -> None:
        try:
            self.post_message(AsksPolled(self.asks.pending()))
        except QliteError as exc:
            self.post_message(AsksPollFailed(str(exc)))

    def on_asks_poll_failed(self, message: AsksPollFailed) -> None:
        self._polling = False
        if message.error != self._poll_error:  # say it once, not every second
            self._poll_error = message.error
            self.notify(f"cannot read RPC questions: {message.error}", severity="warning", markup=False)

    def on_asks_polled(self, message: AsksPolled) -> None:
        self._polling = False
        self._poll_error = ""
        pending = {q.id: q for q in message.questions}
        self._handled &= set(pending)
        if self.ask_screen is not None:
            if self.ask_screen.question.id not in pending:
                # Answered elsewhere (qlite policy ask), or the daemon gave up.
                self._handled.add(self.ask_screen.question.id)
                self.ask_screen.finish(None)
            return
        for q in message.questions:
            if q.id not in self._handled:
                self.show_question(q)
                return

    def show_question(self, question: Question) -> None:
        screen = AskScreen(question, clock=self.clock, tick=self.ask_tick)
        self.ask_screen = screen

        def answered(answer: AskAnswer | None) -> None:
            self.ask_screen = None
            self._handled.add(question.id)
            if answer is None:
                self.notify(
                    f"question {question.id} from {question.source} closed without an answer (denied)", markup=False
                )
            else:
                self._answer(question, answer)
            for error in self._deferred_errors:
                self.push_screen(ErrorScreen(error))
            self._deferred_errors.clear()

        self.push_screen(screen, answered)

    # Not exclusive: an answer must never be cancelled by the next one.
    @work(thread=True, group="answers")
    def _answer(self, question: Question, answer: AskAnswer) -> None:
        try:
            self.asks.answer(question.id, answer.allow, answer.target)
        except QliteError as exc:
            self.post_message(AskAnswered(question.id, answer.allow, answer.target, str(exc)))
            return
        self.post_message(AskAnswered(question.id, answer.allow, answer.target))

    def on_ask_answered(self, message: AskAnswered) -> None:
        if message.error:
            self.show_error(message.error)
        elif message.allow:
            self.notify(f"question {message.ask_id}: allowed to {message.target}", markup=False)
        else:
            self.notify(f"question {message.ask_id}: denied")

    # -- leaving -----------------------------------------------------------------

    async def action_quit(self) -> None:
        busy = [w.name for w in self.workers if w.is_running and w.group.startswith(BUSY_GROUPS)]
        if not busy:
            self.runner.stop_all()
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.runner.stop_all()
                self.exit()

        self.push_screen(
            ConfirmScreen(
                f"Still running: {', '.join(busy)}. Quit anyway? qlite waits for them to finish before it exits.",
                "Quit",
            ),
            answered,
        )


def build_app(ctx_factory: Callable[[], Context] | None = None) -> QliteApp:
    """The production app: core over this home, questions from its daemon,
    commands through the qlite CLI."""
    factory = ctx_factory or Context.from_env
    paths = factory().paths
    return QliteApp(Backend(factory), DaemonAsks(paths), CliRunner(paths))


def main() -> int:
    build_app().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
