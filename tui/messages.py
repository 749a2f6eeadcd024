"""Typed messages that workers post back to the screens and the app."""

from __future__ import annotations

from textual.message import Message

from qlite.aem.manager import VerifyResult
from qlite.net.firewall import Rule
from qlite.tui.asks import Question
from qlite.tui.backend import AemStatus, DevicesView, Pref, Snapshot, TemplateRow


class CoreWarning(Message):
    """Something core said the user must know (ctx.warn)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class QubesRefreshed(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class RefreshFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ActionDone(Message):
    """A qube action finished; ERROR is the one-line QliteError, or ''."""

    def __init__(self, qube: str, action: str, error: str = "") -> None:
        super().__init__()
        self.qube = qube
        self.action = action
        self.error = error


class CommandOutput(Message):
    def __init__(self, title: str, line: str) -> None:
        super().__init__()
        self.title = title
        self.line = line


class CommandExited(Message):
    def __init__(self, title: str, code: int) -> None:
        super().__init__()
        self.title = title
        self.code = code


class AsksPolled(Message):
    def __init__(self, questions: list[Question]) -> None:
        super().__init__()
        self.questions = questions


class AsksPollFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class AskAnswered(Message):
    def __init__(self, ask_id: int, allow: bool, target: str | None, error: str = "") -> None:
        super().__init__()
        self.ask_id = ask_id
        self.allow = allow
        self.target = target
        self.error = error


class PrefsLoaded(Message):
    def __init__(
        self, prefs: list[Pref], error: str = "", features: dict[str, str] | None = None, tags: list[str] | None = None
    ) -> None:
        super().__init__()
        self.prefs = prefs
        self.error = error
        self.features = features or {}
        self.tags = tags or []


class PrefSaved(Message):
    def __init__(self, prop: str, error: str = "") -> None:
        super().__init__()
        self.prop = prop
        self.error = error


class RulesLoaded(Message):
    def __init__(self, rules: tuple[Rule, ...], error: str = "") -> None:
        super().__init__()
        self.rules = rules
        self.error = error


class TemplatesLoaded(Message):
    def __init__(self, templates: list[TemplateRow], error: str = "", seq: int = 0) -> None:
        super().__init__()
        self.templates = templates
        self.error = error
        self.seq = seq  # which load this answers; only the latest is shown


class TemplateProgress(Message):
    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class TemplateJobDone(Message):
    def __init__(self, template: str, action: str, revision: int | None, error: str = "") -> None:
        super().__init__()
        self.template = template
        self.action = action
        self.revision = revision
        self.error = error


class LogsLoaded(Message):
    def __init__(self, rpc: list[dict], daemon: list[str], error: str = "") -> None:
        super().__init__()
        self.rpc = rpc
        self.daemon = daemon
        self.error = error


class QubeCreated(Message):
    def __init__(self, name: str, error: str = "") -> None:
        super().__init__()
        self.name = name
        self.error = error


class DevicesLoaded(Message):
    def __init__(self, view: DevicesView | None, error: str = "", seq: int = 0) -> None:
        super().__init__()
        self.view = view
        self.error = error
        self.seq = seq  # which load this answers; only the latest is shown


class CallDone(Message):
    """A screen's blocking call finished (tui/screens/calls.py): DONE says
    what happened, ERROR is the one-line QliteError (then nothing changed)."""

    def __init__(self, action: str, done: str = "", error: str = "") -> None:
        super().__init__()
        self.action = action
        self.done = done
        self.error = error


class AemLoaded(Message):
    def __init__(self, status: AemStatus | None, error: str = "") -> None:
        super().__init__()
        self.status = status
        self.error = error


class AemVerified(Message):
    def __init__(self, result: VerifyResult | None, error: str = "") -> None:
        super().__init__()
        self.result = result
        self.error = error
