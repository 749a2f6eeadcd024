"""Running one host tool for qlite (apt, dpkg, mkfs, qemu-img, mount, …)
and turning its failure into a one-line qlite error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import Any, Literal, overload

from qlite.errors import EngineError, EngineUnavailable

SETUP_HINT = "run setup.sh"


class ToolTimedOut(EngineError):
    """The tool ran past its timeout (and was killed): for the callers that
    read a hang as an answer (the KVM probe's guest that never exits)."""


@overload
def run_tool(
    cmd: list[str],
    what: str,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    *,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: Literal[True] = True,
    check: Literal[True] = True,
    complaint: Literal["first", "last"] = "last",
    install: str = SETUP_HINT,
) -> str: ...
@overload
def run_tool(
    cmd: list[str],
    what: str,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    *,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: Literal[False],
    check: Literal[True] = True,
    complaint: Literal["first", "last"] = "last",
    install: str = SETUP_HINT,
) -> bytes: ...
@overload
def run_tool(
    cmd: list[str],
    what: str,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    *,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: bool = True,
    check: Literal[False],
    complaint: Literal["first", "last"] = "last",
    install: str = SETUP_HINT,
) -> subprocess.CompletedProcess[Any]: ...
def run_tool(
    cmd: list[str],
    what: str,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    *,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    text: bool = True,
    check: bool = True,
    complaint: Literal["first", "last"] = "last",
    install: str = SETUP_HINT,
) -> str | bytes | subprocess.CompletedProcess[Any]:
    """Run CMD to completion, within TIMEOUT seconds; its stdout (str, or
    bytes unless TEXT). STDIN is fed to it, ENV replaces the environment.

    A missing tool is EngineUnavailable (INSTALL says how to get it); a
    timeout is ToolTimedOut; a failure is EngineError with WHAT and the
    tool's COMPLAINT line: the last by default, the first for tools that
    follow their error with context (nft quotes the rule under it). apt's
    "W:" warnings are not complaints. Binary output is data, never read
    as a complaint. With CHECK false, a non-zero exit is the caller's to
    read: the completed process is returned instead."""
    if stdin is not None and text != isinstance(stdin, str):
        stdin = stdin.encode() if isinstance(stdin, str) else stdin.decode()
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=text, timeout=timeout, cwd=cwd, env=env)
    except FileNotFoundError as exc:
        if exc.filename != cmd[0]:  # the directory to run in is missing, not the tool
            raise EngineError(f"{what}: {exc}") from exc
        raise EngineUnavailable(f"{what}: {cmd[0]} is not installed ({install})") from None
    except subprocess.TimeoutExpired:
        raise ToolTimedOut(f"{what}: {cmd[0]} took over {timeout:.0f}s") from None
    except OSError as exc:
        raise EngineError(f"{what}: {exc}") from exc
    if not check:
        return proc
    if proc.returncode != 0:
        raise EngineError(f"{what}: {_complaint(proc, text, complaint)}")
    return proc.stdout


def _complaint(proc: subprocess.CompletedProcess[Any], text: bool, which: Literal["first", "last"]) -> str:
    out = proc.stderr if text else proc.stderr.decode(errors="replace")
    if text and not out:
        out = proc.stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("W:")]
    if not lines:
        return f"exit {proc.returncode}"
    return lines[0] if which == "first" else lines[-1]
