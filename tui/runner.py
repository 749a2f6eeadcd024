"""Running ``qlite`` CLI commands from the TUI: interactive ones in the
terminal the TUI hands over (suspended), others with their output captured.

The CLI is qlite's own front end. Going through it gives terminals the
CLI's tty handling, and disposables its clean-up on every kind of exit (the
CLI destroys the disposable on Ctrl-C and SIGTERM, which a thread inside the
TUI could not do)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from textual.app import App

from qlite.paths import Paths

QLITE_EXIT = 125  # qlite's own errors
SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec /bin/sh -l; fi"]


class CommandRunner(Protocol):
    def interactive(self, app: App, args: list[str]) -> int:
        """Suspend APP, run ``qlite ARGS`` on the terminal, resume; the exit code."""

    def capture(self, args: list[str], on_line: Callable[[str], None]) -> int:
        """Run ``qlite ARGS`` with no terminal; each output line to ON_LINE."""

    def stop_all(self) -> None:
        """Terminate captured commands that still run (the app is quitting)."""


class CliRunner:
    def __init__(self, paths: Paths):
        self.argv0 = [sys.executable, "-m", "qlite"]
        self.env = {**os.environ, "QLITE_HOME": str(paths.home)}
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def interactive(self, app: App, args: list[str]) -> int:
        with app.suspend():
            code = subprocess.run([*self.argv0, *args], env=self.env, check=False).returncode
            if code == QLITE_EXIT:
                # qlite's one-line error is on the screen; the TUI would hide it.
                with contextlib.suppress(OSError, EOFError):
                    input("[press Enter to return to qlite] ")
        return code

    def capture(self, args: list[str], on_line: Callable[[str], None]) -> int:
        proc = subprocess.Popen(
            [*self.argv0, *args], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
        )
        with self._lock:
            self._running.add(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            return proc.wait()
        finally:
            with self._lock:
                self._running.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            for proc in self._running:
                proc.terminate()  # the CLI then destroys its disposable
