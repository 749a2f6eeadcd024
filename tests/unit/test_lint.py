"""ruff over the repository, with the rules pyproject.toml selects: a
lint error fails CI like a failing test. And what ruff cannot see: every
function-local import in qlite/ and tui/ says why it is local."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "check", "--no-cache", "qlite", "tests", "tui", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_code_is_as_ruff_format_writes_it():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "format", "--check", "--no-cache", "qlite", "tests", "tui", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, "run: ruff format qlite tests tui bench\n" + done.stdout[-4000:] + done.stderr[-2000:]


LOCAL_IMPORT_NOQA = re.compile(r"#\s*noqa:[^#]*\bPLC0415\b")
WITH_REASON = re.compile(r"#\s*noqa: PLC0415 - \S")


def unexplained_local_imports(text: str) -> list[int]:
    """The numbers of the lines of TEXT whose noqa for PLC0415 (import
    outside top level) gives no reason, as "# noqa: PLC0415 - <reason>"."""
    return [
        n
        for n, line in enumerate(text.splitlines(), 1)
        if LOCAL_IMPORT_NOQA.search(line) and not WITH_REASON.search(line)
    ]


@pytest.mark.parametrize(
    "line, unexplained",
    [
        ("    import gnupg  # noqa: PLC0415 - python-gnupg is slow to import", False),
        ("    import gnupg  # noqa: PLC0415", True),
        ("    import gnupg  # noqa: PLC0415 -", True),
        ("    import gnupg  # noqa: PLC0415 slow", True),
        ("    import gnupg  # noqa:PLC0415", True),
        ("    import gnupg  # noqa: E501, PLC0415", True),
        ("    import gnupg", False),  # ruff itself reports a local import without a noqa
        ("except Exception:  # noqa: BLE001 - logged", False),
    ],
)
def test_a_local_import_without_a_reason_is_found(line, unexplained):
    assert unexplained_local_imports(f"def f():\n{line}\n") == ([2] if unexplained else [])


def test_every_local_import_says_why_it_is_local():
    """A function-local import is there for start-up time (or to break a
    cycle that cannot be designed away); its noqa says which, so that the
    next reader can tell whether it still holds."""
    files = {p.resolve() for top in ("qlite", "tui") for p in (REPO / top).rglob("*.py")}
    bare = [f"{p.relative_to(REPO)}:{n}" for p in sorted(files) for n in unexplained_local_imports(p.read_text())]
    assert bare == [], "give each a reason, as '# noqa: PLC0415 - <why it is local>': " + ", ".join(bare)
