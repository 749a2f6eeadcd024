"""Ctrl-C for a command that runs in a qube.

A command in a qube is not in the caller's process group, so a terminal's
Ctrl-C never reaches it. qlite catches SIGINT instead and forwards it, as
``podman run`` and ``docker run`` do, and escalates if the command does
not stop: SIGINT, then SIGTERM, then SIGKILL, each after a grace period
(or at once, on another Ctrl-C). Meanwhile the command's output keeps
flowing and its own exit status is what qlite returns: 130 when SIGINT
killed it, or whatever it chose to exit with if it handled the signal.

Whoever runs the command (core for a container qube or a disposable, the
agent client for VM qubes and preloaded disposables) attaches a sender
for the way that reaches it; the CLI installs the handler.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

INT_GRACE_S = 5.0  # from SIGINT to SIGTERM
TERM_GRACE_S = 5.0  # from SIGTERM to SIGKILL
ESCALATION: tuple[tuple[int, float], ...] = (
    (signal.SIGINT, 0.0),
    (signal.SIGTERM, INT_GRACE_S),
    (signal.SIGKILL, TERM_GRACE_S),
)


class InterruptRelay:
    """Forwards the caller's interrupts to one running command.

    ``attach(send)`` once the command runs (SEND delivers a signal number
    to it, however its runtime does that), ``detach()`` once it ended.
    ``interrupt()`` is called for each SIGINT the caller gets."""

    def __init__(self, steps: tuple[tuple[int, float], ...] = ESCALATION) -> None:
        self.steps = steps
        self.sent: list[int] = []  # what was delivered, in order
        self._send: Callable[[int], None] | None = None
        self._done = False
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._hurry = 0

    def attach(self, send: Callable[[int], None]) -> None:
        with self._cond:
            self._send, self._done = send, False

    def detach(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._send is not None and not self._done

    def interrupt(self) -> bool:
        """Start the escalation, or skip to its next step if it has begun.
        False when no command is attached (the caller stops itself)."""
        with self._cond:
            if not self.running:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._escalate, name="qlite-interrupt", daemon=True)
                self._thread.start()
            else:
                self._hurry += 1
                self._cond.notify_all()
        return True

    def _escalate(self) -> None:
        for sig, grace in self.steps:
            with self._cond:
                self._cond.wait_for(lambda: self._done or self._hurry > 0, timeout=grace)
                if self._done:
                    return
                self._hurry = max(0, self._hurry - 1)
                send = self._send
            assert send is not None
            with contextlib.suppress(Exception):  # the command may be ending by itself right now
                send(sig)
            self.sent.append(sig)


@contextlib.contextmanager
def forwarding_sigint(relay: InterruptRelay) -> Iterator[None]:
    """While the block runs (in the main thread), SIGINT goes to RELAY's
    command; with no command running yet, it interrupts qlite as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        if not relay.interrupt():
            raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # started with SIGINT ignored (a background job): so it stays
        return
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
