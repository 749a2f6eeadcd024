"""Pending "ask" decisions: the broker waits, the user answers through
``qlite policy ask`` (or the TUI). No answer in time means deny."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qlite.errors import AccessDenied, InvalidValue, NotFound
from qlite.host.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from qlite.domain.context import Clock

# A qube may keep at most this many questions waiting for the user; one
# more is denied at once, so that a qube cannot flood the user with them.
MAX_PENDING_ASKS_PER_SOURCE = 4


@dataclass
class Ask:
    id: int
    source: str
    service: str
    argument: str
    target: str  # as the caller asked
    choices: tuple[str, ...]
    default_target: str | None
    deadline: float
    answered: threading.Event = field(default_factory=threading.Event)
    allow: bool = False
    chosen: str | None = None

    def as_json(self, now: float) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "service": self.service,
            "argument": self.argument,
            "target": self.target,
            "choices": list(self.choices),
            "default_target": self.default_target,
            "seconds_left": max(0, round(self.deadline - now)),
        }


@dataclass(frozen=True)
class Approval:
    chosen: str  # the target the user chose
    chosen_id: str  # and who that was (its uuid)
    until: float


class Approvals:
    """Remembered "yes" answers: (caller's uuid, service, requested target)
    -> Approval. Within its window an ask is accepted again without a
    question, as Qubes' split GPG does (QUBES_GPG_AUTOACCEPT). Names are not
    identities: it is kept by uuid, and holds only while the chosen target
    is still the qube it was given for."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str, str], Approval] = {}

    def remember(self, source_id: str, service: str, target: str, chosen: str, chosen_id: str, seconds: float) -> None:
        if seconds <= 0 or not source_id:
            return
        with self._lock:
            self._until[(source_id, service, target)] = Approval(chosen, chosen_id, self.clock.time() + seconds)

    def lookup(self, source_id: str, service: str, target: str) -> Approval | None:
        with self._lock:
            found = self._until.get((source_id, service, target))
            if found is None:
                return None
            if found.until <= self.clock.time():
                del self._until[(source_id, service, target)]
                return None
            return found

    def forget(self, uuid: str) -> int:
        """Drop every approval given to or for the qube UUID; how many."""
        with self._lock:
            gone = [k for k, a in self._until.items() if uuid in (k[0], a.chosen_id)]
            for k in gone:
                del self._until[k]
            return len(gone)


class TooManyAsks(AccessDenied):
    """SOURCE already has MAX_PENDING_ASKS_PER_SOURCE questions waiting."""


class AskQueue:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, Ask] = {}
        self._ids = itertools.count(1)

    def add(
        self,
        source: str,
        service: str,
        argument: str,
        target: str,
        choices: tuple[str, ...],
        default_target: str | None,
        timeout: float,
    ) -> Ask:
        """Queue a question; TooManyAsks if SOURCE has too many waiting."""
        with self._lock:
            if sum(a.source == source for a in self._pending.values()) >= MAX_PENDING_ASKS_PER_SOURCE:
                raise TooManyAsks(f"too many questions pending from {source}")
            ask = Ask(
                next(self._ids), source, service, argument, target, choices, default_target, self.clock.time() + timeout
            )
            self._pending[ask.id] = ask
            return ask

    def pending(self) -> list[Ask]:
        with self._lock:
            return sorted(self._pending.values(), key=lambda a: a.id)

    def wait(self, ask: Ask) -> tuple[bool, str | None]:
        """Block until ASK is answered or its deadline passes (then deny)."""
        ask.answered.wait(max(0.0, ask.deadline - self.clock.time()))
        with self._lock:
            self._pending.pop(ask.id, None)
        return (ask.allow, ask.chosen) if ask.answered.is_set() else (False, None)

    def answer(self, ask_id: int, allow: bool, target: str | None = None) -> Ask:
        with self._lock:
            ask = self._pending.get(ask_id)
            if ask is None:
                raise NotFound(f"no pending question {ask_id} (answered, or timed out)")
            if allow:
                chosen = target or ask.default_target or (ask.choices[0] if len(ask.choices) == 1 else None)
                if chosen is None:
                    raise InvalidValue(f"name a target for question {ask_id}: one of {', '.join(ask.choices)}")
                if chosen not in ask.choices:
                    raise InvalidValue(
                        f"{chosen!r} is not allowed for question {ask_id}; choose one of {', '.join(ask.choices)}"
                    )
                ask.chosen = chosen
            ask.allow = allow
            del self._pending[ask_id]
            ask.answered.set()
            return ask
