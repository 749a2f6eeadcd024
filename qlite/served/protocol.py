"""What the thin client and the fork server say to each other on
run/cli.sock, in JSON lines.

The client's request is one message sent with SCM_RIGHTS [stdin, stdout,
stderr, cwd]: {"argv": [...], "env": {...}, "umask": N}. Then the client
sends {"signal": N} for each signal it forwards, and the server ends with
{"exit": N} (the command's exit code; with "daemon_stopped": true if the
daemon died while it ran), {"error": "..."} (nothing was run;
the client exits 125) or {"fallback": "..."} (nothing was run; the client
runs the command itself).

The client imports this module, so it imports only C modules: the Python
wrappers of json, signal and socket import enum and re (~20 ms), more
than a served command takes.
"""

from __future__ import annotations

import _json
import _signal
import os

SOCKET_NAME = "cli.sock"  # in the home's run/ (Paths.cli_sock)
DAEMON_LOG_NAME = "daemon.log"  # in the home's log/ (Paths.daemon_log)

# The client's environment that the command sees; the rest is the daemon's.
ENV_PREFIX = "QLITE_"
ENV_KEYS = frozenset(
    {"DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY", "TERM", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"}
)

FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGWINCH)
MAX_MESSAGE = 256 * 1024  # one request line, or one reply line
FDS = 4  # stdin, stdout, stderr, working directory
EXIT_QLITE = 125  # qlite's own failures, as in qlite.cli


def served_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The part of ENVIRON that the client passes."""
    return {k: v for k, v in environ.items() if passed_env_key(k)}


def passed_env_key(key: str) -> bool:
    return key.startswith(ENV_PREFIX) or key in ENV_KEYS


class _Scan:
    """What _json's scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None


def _unencodable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not in the protocol")


_scan = _json.make_scanner(_Scan())  # type: ignore[arg-type]  # it reads only _Scan's attributes
_encode = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False)


def encode(message: dict[str, object]) -> bytes:
    """MESSAGE as one JSON line (ASCII: argv's undecodable bytes survive)."""
    return "".join(_encode(message, 0)).encode() + b"\n"


def decode(line: bytes) -> dict[str, object]:
    """One JSON line as an object; ValueError if it is not one."""
    try:
        text = line.decode()
        try:
            value, end = _scan(text, 0)
        except SystemError:
            # _json raises json.decoder's error class, found only once that
            # is loaded: load it (a malformed line only) and scan again.
            __import__("json.decoder")  # json brings re: only a malformed line pays for it

            value, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError) as exc:
        raise ValueError(f"not a JSON line: {exc}") from None
    if not isinstance(value, dict) or text[end:].strip():
        raise ValueError("not a JSON object")
    return value
