"""The TUI end to end, in tmux, against real qubes: create a qube through
the form, start it, open a terminal in it (which says which qube it is),
run a command in a terminal (its output stays until a key), look at the
devices and anti-evil-maid screens, answer an RPC question in the modal,
and remove the qube with a confirmation.

tmux gives the TUI a real terminal (so App.suspend really hands it to
``qlite run -t``); the test types into it with send-keys and reads it back
with capture-pane. What the TUI did is checked through the CLI."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import REPO

# tmux comes from setup.sh: if it is missing, this fails rather than skips.
pytestmark = pytest.mark.integration

QUBE = "tui-work"
OTHER = "tui-other"
WIDTH, HEIGHT = 160, 45


class Tmux:
    """One tmux server of our own (its own socket), running one TUI."""

    def __init__(self, socket: str):
        self.socket = socket

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, check=check
        )

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), command)

    def keys(self, *keys: str) -> None:
        """Named keys (Enter, Tab, Down, Escape...) one at a time: an Escape
        followed at once by a letter would reach the app as Alt+letter."""
        for key in keys:
            self.tmux("send-keys", key)
            time.sleep(0.15)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)
        time.sleep(0.15)

    def screen(self, colours: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if colours else []), check=False).stdout

    def title(self) -> str:
        return self.tmux("display-message", "-p", "#{pane_title}", check=False).stdout.strip()

    def wait(self, predicate: Callable[[str], object], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the screen:\n{text}")
            time.sleep(0.25)

    def wait_text(self, needle: str, timeout: float = 60) -> str:
        return self.wait(lambda text: needle in text, repr(needle), timeout)

    def kill(self) -> None:
        self.tmux("kill-server", check=False)
        # tmux may leave its socket file behind; it is ours, by its unique name.
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(tmpdir, f"tmux-{os.getuid()}", self.socket))


def row_state(text: str, name: str) -> str | None:
    """The STATE cell of NAME's row in the qube list (rows start with the name)."""
    m = re.search(rf"^ {re.escape(name)}\s+(\S+)", text, re.M)
    return m.group(1) if m else None


def ls(home) -> dict[str, dict]:
    return {row["name"]: row for row in home.json("ls")}


def wait_until(check: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_tui_end_to_end(home):
    home.run("create", OTHER, "--label", "green", "--netvm", "none")
    tmux = Tmux(f"qlite-test-{os.getpid()}-{int(time.time())}")
    # COLUMNS/LINES from the test process (pytest sets them) would pin the TUI at 80x24.
    tmux.start(f"cd {REPO} && env -u COLUMNS -u LINES QLITE_HOME={home.path} {sys.executable} -m qlite tui")
    copier = None
    try:
        tmux.wait_text("n New")
        tmux.wait(lambda text: row_state(text, OTHER) == "Halted", "the qube list")

        # Create through the form: name, label yellow, template (preselected), netvm none.
        tmux.keys("n")
        tmux.wait_text("New qube")
        tmux.type(QUBE)
        tmux.keys("Tab", "Enter", "Down", "Down", "Enter")  # label: red -> orange -> yellow
        tmux.keys("Tab", "Tab", "Enter", "Down", "Enter")  # netvm: default -> none
        tmux.keys("Tab", "Tab", "Enter")  # past the mode, from the memory field: submit
        tmux.wait_text(f"created {QUBE}")
        made = ls(home)[QUBE]
        assert (made["label"], made["netvm"], made["template"], made["memory"]) == ("yellow", None, "debian-12", 400)

        # Filter down to it and start it.
        tmux.type("/")
        tmux.type(QUBE)
        tmux.keys("Enter")
        tmux.wait(lambda text: row_state(text, QUBE) == "Halted" and row_state(text, OTHER) is None, "the filter")
        tmux.keys("s")
        tmux.wait(lambda text: row_state(text, QUBE) == "Running", f"{QUBE} to run", timeout=120)
        assert ls(home)[QUBE]["state"] == "Running"

        # The terminal action: the TUI steps aside for `qlite run -t`, and comes back.
        tmux.keys("t")
        # Keys typed before the TUI has stepped aside would reach its bindings.
        tmux.wait(lambda text: "n New" not in text, "the TUI to suspend", timeout=60)
        tmux.wait(lambda text: "$" in text, "a shell prompt", timeout=60)
        # It says which qube it is: in the terminal's title, and in a first line in the label's colour.
        first = f"[{QUBE}] terminal in {QUBE} (label yellow)"
        assert first in tmux.screen()
        assert tmux.title() == f"[{QUBE}] terminal"
        assert re.search(rf"\x1b\[[0-9;]*33[0-9;]*m\[{re.escape(QUBE)}\]", tmux.screen(colours=True)), tmux.screen(
            colours=True
        )
        tmux.type("echo READY-$((40+2))")
        tmux.keys("Enter")
        tmux.wait_text("READY-42", timeout=60)
        tmux.type("echo tui-ok > /home/user/t; exit")
        tmux.keys("Enter")
        tmux.wait_text(f"terminal in {QUBE}: exited with 0", timeout=60)
        assert home.run("run", QUBE, "--", "cat", "/home/user/t").stdout == "tui-ok\n"

        # A command run in a terminal: its output stays on the screen until a key is pressed.
        tmux.keys("r")
        tmux.wait_text(f"Run a command in {QUBE}")
        tmux.type("sh -c 'echo HELD-$((6*7))'")
        tmux.keys("Tab", "Space", "BTab", "Enter")  # tick "in a terminal", back to the command, run
        held = tmux.wait_text("press any key to return to qlite", timeout=120)
        assert "HELD-42" in held and "n New" not in held
        time.sleep(1)
        assert "press any key to return to qlite" in tmux.screen()  # still there: nothing was pressed
        tmux.keys("Space")
        tmux.wait_text("sh -c 'echo HELD-$((6*7))': exited with 0", timeout=60)

        # The devices and anti-evil-maid screens are real, not placeholders.
        tmux.keys("4")
        tmux.wait(lambda text: "ATTACHED TO" in text and "Device log" in text and "a Attach" in text, "devices")
        tmux.keys("5")
        tmux.wait(lambda text: "binary:runsc" in text and "Sealed: nothing yet" in text, "anti-evil-maid", timeout=120)
        tmux.keys("1")
        tmux.wait(lambda text: row_state(text, QUBE) == "Running", "the qube list again")

        # An RPC question from the qube, answered in the modal.
        copier = home.popen(
            "run",
            QUBE,
            "--",
            "qlite-copy-to-vm",
            OTHER,
            "/home/user/t",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        tmux.wait_text(f"{QUBE} wants to call qubes.Filecopy", timeout=60)
        [ask] = home.json("policy", "ask")
        assert ask["source"] == QUBE and OTHER in ask["choices"]
        screen = tmux.screen()
        for choice in ask["choices"]:
            assert choice in screen
        tmux.keys(*["Down"] * ask["choices"].index(OTHER), "Enter", "a")
        out, err = copier.communicate(timeout=120)
        assert copier.returncode == 0, f"qlite-copy-to-vm failed: {out} {err}"
        tmux.wait(lambda text: "wants to call" not in text, "the question to close", timeout=10)
        arrived = home.run("run", OTHER, "--", "cat", f"/home/user/QubesIncoming/{QUBE}/t").stdout
        assert arrived == "tui-ok\n"
        assert home.json("policy", "ask") == []

        # Shut it down, then remove it with a confirmation.
        tmux.keys("h")
        tmux.wait(lambda text: row_state(text, QUBE) == "Halted", f"{QUBE} to halt", timeout=120)
        tmux.keys("x")
        tmux.wait_text(f"Remove {QUBE} and its private data")
        tmux.keys("y")
        tmux.wait_text(f"remove {QUBE}: done", timeout=120)
        assert QUBE not in ls(home)
        assert not [v for v in home.leftovers()["volumes"] if QUBE in v]

        tmux.keys("q")
        wait_until(lambda: tmux.tmux("has-session", check=False).returncode != 0, "the TUI to exit", 15)
    finally:
        if copier is not None and copier.poll() is None:
            copier.kill()
            copier.wait()
        tmux.kill()
