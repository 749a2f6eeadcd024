"""Finding, starting, stopping and talking to ``qlite daemon``.

The daemon holds an exclusive lock on ``run/daemon.lock`` for as long as
it lives, so "is it running" is a lock test, not a guess from a pid file.
The CLI talks to it over ``run/admin.sock`` in JSON lines."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from qlite.errors import QliteError, StateError
from qlite.paths import Paths

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
ADMIN_TIMEOUT_S = 120.0  # an ask answered through it may wait for the user


class DaemonControl:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def running(self) -> bool:
        try:
            fd = os.open(self.paths.daemon_lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def pid(self) -> int | None:
        try:
            return int(self.paths.daemon_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ensure(self) -> None:
        """Start the daemon unless it runs; wait until it answers."""
        if self.running() and self._ping():
            return
        self.paths.ensure()
        log = open(self.paths.daemon_log, "ab")
        try:
            subprocess.Popen(
                [sys.executable, "-m", "qlite", "daemon", "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, "QLITE_HOME": str(self.paths.home)},
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._ping():
                return
            time.sleep(0.05)
        raise StateError(f"qlite daemon did not start; see {self.paths.daemon_log}")

    def stop(self) -> bool:
        """Stop the daemon of this home. True if one was running."""
        if not self.running():
            return False
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and self.running():
            time.sleep(0.05)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True

    def request(self, message: dict[str, Any], timeout: float = ADMIN_TIMEOUT_S) -> dict[str, Any]:
        """One request on the admin socket; raises QliteError on failure."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.paths.admin_sock))
            s.sendall(json.dumps(message).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise StateError(f"qlite daemon does not answer ({exc}); is it running? 'qlite daemon start'") from None
        finally:
            s.close()
        try:
            reply = json.loads(buf)
        except ValueError:
            raise StateError("qlite daemon sent a malformed reply") from None
        if not reply.get("ok"):
            raise QliteError(reply.get("error") or "qlite daemon refused the request")
        return reply

    def asks(self, timeout: float = 10) -> list[dict[str, Any]]:
        """The questions waiting for an answer ([] when no daemon runs)."""
        if not self.running():
            return []
        return self.request({"op": "asks"}, timeout=timeout).get("asks", [])

    def answer(self, ask_id: int, allow: bool, target: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """Answer question ASK_ID; raises QliteError if it is gone or TARGET
        is not one the policy offers."""
        return self.request({"op": "answer", "id": ask_id, "allow": allow, "target": target}, timeout=timeout)

    def notify(self, qube: str) -> None:
        """Best effort: a qube started; create its socket now."""
        if self.running():
            with contextlib.suppress(QliteError):
                self.request({"op": "rescan", "qube": qube}, timeout=10)

    def forget(self, uuid: str) -> None:
        """Best effort: a qube was removed; drop what the broker remembers
        about it (its approvals)."""
        if self.running():
            with contextlib.suppress(QliteError):
                self.request({"op": "forget", "uuid": uuid}, timeout=10)

    def _ping(self) -> bool:
        try:
            self.request({"op": "ping"}, timeout=2)
        except QliteError:
            return False
        return True
