"""Every error a user can cause. Each message is one line fit to show as is."""

from __future__ import annotations


class QliteError(Exception):
    """Root of qlite's user-facing errors. The CLI prints it and exits 125."""

    exit_code = 125


class NotFound(QliteError):
    pass


class QubeNotFound(NotFound):
    """No qube of that name (or not one of the kind asked for)."""


class TemplateNotFound(NotFound):
    """No template of that name, built or defined."""


class AlreadyExists(QliteError):
    pass


class InvalidName(QliteError):
    pass


class InvalidValue(QliteError):
    pass


class EngineUnavailable(QliteError):
    pass


class EngineError(QliteError):
    pass


class AccessDenied(QliteError):
    exit_code = 126


class PolicySyntaxError(AccessDenied):
    pass


class StateError(QliteError):
    """The thing exists, but what it is doing now does not allow the operation.
    The subclasses below say which state was in the way, so that a caller
    can act on one (start the qube, wait, shut it down) and pass on the rest;
    each is still a StateError, with its exit code."""


class NotRunning(StateError):
    """It has to be running, and it is halted or paused."""


class NotPaused(StateError):
    """It has to be paused (to be unpaused), and it is not."""


class NotHalted(StateError):
    """It has to be halted (to start, be removed, change mode), and it runs or is paused."""


class Busy(StateError):
    """Something else holds it right now: another qlite command, a mount,
    a process. It may pass without anything else changing."""


class InUse(StateError):
    """Other things depend on it (qubes on a template or a gateway): they
    have to change first."""
