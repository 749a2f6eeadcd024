"""Every error a user can cause. Each message is one line fit to show as is."""

from __future__ import annotations


class QliteError(Exception):
    """Root of qlite's user-facing errors. The CLI prints it and exits 125."""

    exit_code = 125


class NotFound(QliteError):
    pass


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
    pass
