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
import termios
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.color import ColorSystem
from rich.style import Style
from textual.app import App

from qlite.domain.labels import label_colour
from qlite.paths import Paths

QLITE_EXIT = 125  # qlite's own errors
SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec /bin/sh -l; fi"]
APP_TITLE = "qlite"


@dataclass(frozen=True)
class Intro:
    """What a terminal opened into a qube says before its command starts:
    the window title, and a first line in the qube's label colour."""

    title: str
    line: str

    @classmethod
    def for_qube(cls, qube: str, label: str, what: str, hint: str = "", tag: str = "") -> Intro:
        """QUBE (label LABEL) runs WHAT: '[QUBE] WHAT' is the title (TAG
        replaces '[QUBE]'); the first line says the same with the label in
        words, then HINT. The tag is drawn in the label's colour (unless
        NO_COLOR)."""
        tag = tag or f"[{qube}]"
        plain = os.environ.get("NO_COLOR") or not label
        coloured = (
            tag if plain else Style.parse(f"bold {label_colour(label)}").render(tag, color_system=ColorSystem.EIGHT_BIT)
        )
        line = f"{coloured} {_printable(what)} in {qube} (label {label or 'none'})" + (f": {hint}" if hint else "")
        return cls(title=_printable(f"{tag} {what}"), line=line)


def _printable(text: str) -> str:
    """TEXT without the control characters a terminal would act on."""
    return "".join(c if c.isprintable() else "?" for c in text)


def set_title(out: TextIO, title: str) -> None:
    out.write(f"\033]0;{title}\007")


def read_key() -> None:
    """Wait for one key press on the terminal (a line, if stdin is no tty).
    Keys typed before the prompt appeared do not count."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        sys.stdin.readline()
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        termios.tcflush(fd, termios.TCIFLUSH)
        os.read(fd, 32)  # one key, escape sequences included
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class CommandRunner(Protocol):
    def interactive(self, app: App, args: list[str], *, intro: Intro | None = None, hold: bool = False) -> int:
        """Suspend APP, run ``qlite ARGS`` on the terminal, resume; the exit
        code. INTRO first says where it runs; with HOLD the output stays
        on the screen until a key is pressed."""

    def capture(self, args: list[str], on_line: Callable[[str], object]) -> int:
        """Run ``qlite ARGS`` with no terminal; each output line to ON_LINE."""

    def stop_all(self) -> None:
        """Terminate captured commands that still run (the app is quitting)."""


class CliRunner:
    def __init__(self, paths: Paths, read_key: Callable[[], None] = read_key) -> None:
        self.argv0 = [sys.executable, "-m", "qlite"]
        self.env = {**os.environ, "QLITE_HOME": str(paths.home)}
        self.read_key = read_key
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def interactive(self, app: App, args: list[str], *, intro: Intro | None = None, hold: bool = False) -> int:
        with app.suspend():
            out = sys.stdout
            if intro is not None:
                set_title(out, intro.title)
                out.write(intro.line + "\n")
                out.flush()
            try:
                code = subprocess.run([*self.argv0, *args], env=self.env, check=False).returncode
                # With HOLD the output is what the user came for; on qlite's
                # own error its one line would be hidden by the TUI too.
                if hold or code == QLITE_EXIT:
                    out.write(f"\n[exited with {code}: press any key to return to qlite] ")
                    out.flush()
                    with contextlib.suppress(OSError, EOFError):
                        self.read_key()
            finally:
                if intro is not None:
                    set_title(out, APP_TITLE)
                    out.flush()
        return code

    def capture(self, args: list[str], on_line: Callable[[str], object]) -> int:
        proc = subprocess.Popen(
            [*self.argv0, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
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
