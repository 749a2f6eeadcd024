"""run_tool, through which every one-shot host command runs: what it
returns, and the one line a user reads when the tool is missing, hangs or
fails."""

from __future__ import annotations

import pytest

from qlite.errors import EngineError, EngineUnavailable
from qlite.runtime.command import ToolTimedOut, run_tool

WHAT = "doing the thing"


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# (case, command, options, the error class, its message)
FAILURES = [
    (
        "missing tool",
        ["qlite-no-such-tool", "x"],
        {},
        EngineUnavailable,
        f"{WHAT}: qlite-no-such-tool is not installed (run setup.sh)",
    ),
    (
        "missing tool, with how to get it",
        ["qlite-no-such-tool"],
        {"install": "apt install qlite-tools"},
        EngineUnavailable,
        f"{WHAT}: qlite-no-such-tool is not installed (apt install qlite-tools)",
    ),
    ("timeout", ["sleep", "30"], {"timeout": 1}, ToolTimedOut, f"{WHAT}: sleep took over 1s"),
    (
        "the last line of complaint",
        sh("echo starting >&2; echo 'disk full' >&2; exit 3"),
        {},
        EngineError,
        f"{WHAT}: disk full",
    ),
    (
        "the first line, for tools that quote context after it",
        sh("echo 'Error: syntax error' >&2; echo '  tcp dport' >&2; echo '  ^^^^' >&2; exit 1"),
        {"complaint": "first"},
        EngineError,
        f"{WHAT}: Error: syntax error",
    ),
    (
        "apt's warnings are not complaints",
        sh("echo 'E: Unable to locate package x' >&2; echo 'W: no sandbox user' >&2; echo >&2; exit 100"),
        {},
        EngineError,
        f"{WHAT}: E: Unable to locate package x",
    ),
    ("stdout when stderr says nothing", sh("echo 'no such table'; exit 1"), {}, EngineError, f"{WHAT}: no such table"),
    ("the exit code when it says nothing", sh("exit 7"), {}, EngineError, f"{WHAT}: exit 7"),
    (
        "binary output is never shown",
        sh("printf 'sealed secret\\n'; exit 1"),
        {"text": False},
        EngineError,
        f"{WHAT}: exit 1",
    ),
    (
        "stderr of a binary tool is",
        sh("echo 'ERROR: esys call failed' >&2; exit 1"),
        {"text": False},
        EngineError,
        f"{WHAT}: ERROR: esys call failed",
    ),
    (
        "a missing directory to run in is not a missing tool",
        ["true"],
        {"cwd": "/nonexistent/qlite"},
        EngineError,
        f"{WHAT}: [Errno 2] No such file or directory: '/nonexistent/qlite'",
    ),
]


@pytest.mark.parametrize(
    ("cmd", "options", "error", "message"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES]
)
def test_a_failure_is_one_line_that_says_what_and_why(cmd, options, error, message):
    options = {"timeout": 10, **options}
    with pytest.raises(error) as exc:
        run_tool(cmd, WHAT, **options)
    assert type(exc.value) is error
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


# (case, command, options, its stdout)
OUTPUTS = [
    ("text", sh("echo hello"), {}, "hello\n"),
    ("bytes", sh("printf '\\001\\377'"), {"text": False}, b"\x01\xff"),
    ("text in, text out", ["cat"], {"stdin": "ruleset\n"}, "ruleset\n"),
    ("bytes in, bytes out", ["cat"], {"stdin": b"\x00secret\xff", "text": False}, b"\x00secret\xff"),
    ("text in, bytes out", ["cat"], {"stdin": "caf\u00e9", "text": False}, "caf\u00e9".encode()),
    ("bytes in, text out", ["cat"], {"stdin": b"plain"}, "plain"),
    (
        "its environment",
        sh('echo "$TCTI"'),
        {"env": {"TCTI": "swtpm:port=2321", "PATH": "/usr/bin:/bin"}},
        "swtpm:port=2321\n",
    ),
    ("its working directory", ["pwd"], {"cwd": "/"}, "/\n"),
    ("warnings on stderr do not fail it", sh("echo 'W: something' >&2; echo done"), {}, "done\n"),
]


@pytest.mark.parametrize(("cmd", "options", "stdout"), [c[1:] for c in OUTPUTS], ids=[c[0] for c in OUTPUTS])
def test_a_tool_that_succeeds_gives_its_stdout(cmd, options, stdout):
    assert run_tool(cmd, WHAT, 10, **options) == stdout


@pytest.mark.parametrize(
    ("script", "code", "stdout"),
    [
        ("echo 'UUID=ab'; exit 2", 2, "UUID=ab\n"),  # blkid: 2 is "found nothing"
        ("echo ok", 0, "ok\n"),
    ],
)
def test_without_check_the_exit_code_is_the_callers(script, code, stdout):
    proc = run_tool(sh(script), WHAT, 10, check=False)
    assert (proc.returncode, proc.stdout) == (code, stdout)


@pytest.mark.parametrize(
    ("cmd", "options", "error"),
    [
        (["qlite-no-such-tool"], {}, EngineUnavailable),
        (["sleep", "30"], {"timeout": 1}, ToolTimedOut),
    ],
)
def test_without_check_a_tool_that_cannot_answer_still_raises(cmd, options, error):
    with pytest.raises(error):
        run_tool(cmd, WHAT, **{"timeout": 10, **options}, check=False)
