"""Where the TUI finds pending RPC questions and sends its answers.

In production that is qlite daemon's admin socket (DaemonControl); tests
give the app a fake with the same two methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from qlite.host.daemonctl import DaemonControl
from qlite.paths import Paths

POLL_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Question:
    """One pending ask, as the daemon describes it."""

    id: int
    source: str
    service: str
    argument: str
    target: str
    choices: tuple[str, ...]
    default_target: str | None
    seconds_left: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Question:
        return cls(
            id=int(data["id"]),
            source=str(data["source"]),
            service=str(data["service"]),
            argument=str(data.get("argument") or ""),
            target=str(data.get("target") or ""),
            choices=tuple(str(c) for c in data.get("choices") or ()),
            default_target=data.get("default_target") or None,
            seconds_left=int(data.get("seconds_left") or 0),
        )


class AsksSource(Protocol):
    def pending(self) -> list[Question]:
        """The questions waiting for an answer ([] when nobody asks)."""

    def answer(self, ask_id: int, allow: bool, target: str | None) -> None:
        """Answer one; raises QliteError if it is gone or the target is wrong."""


class DaemonAsks:
    """The asks of this home's qlite daemon, over its admin socket. A daemon
    that does not run has no questions; the TUI never starts one."""

    def __init__(self, paths: Paths) -> None:
        self.control = DaemonControl(paths)

    def pending(self) -> list[Question]:
        return [Question.from_json(a) for a in self.control.asks(timeout=POLL_TIMEOUT_S)]

    def answer(self, ask_id: int, allow: bool, target: str | None) -> None:
        self.control.answer(ask_id, allow, target, timeout=POLL_TIMEOUT_S)
