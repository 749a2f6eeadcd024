"""Running one host tool for qlite (apt, dpkg, mkfs, qemu-img, mount, …)
and turning its failure into a one-line qlite error."""

from __future__ import annotations

import subprocess
from pathlib import Path

from qlite.errors import EngineError, EngineUnavailable


def run_tool(cmd: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run CMD; its stdout. A missing tool is EngineUnavailable; a failure
    is EngineError with WHAT and the tool's last line of complaint (apt's
    "W:" warnings are not complaints)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise EngineUnavailable(f"{what}: {cmd[0]} is not installed (run setup.sh)") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what}: {cmd[0]} took over {timeout:.0f}s") from None
    except OSError as exc:
        raise EngineError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and not ln.startswith("W:")]
        raise EngineError(f"{what}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout
