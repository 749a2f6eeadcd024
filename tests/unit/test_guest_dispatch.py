"""The dispatcher the broker runs in the target qube: lookup order, the
argument and environment handed to the service, and the 127 cases."""

from __future__ import annotations

import subprocess

import pytest

from .guest_helpers import GUEST


def dispatch(dirs, *args: str, input: bytes = b"", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GUEST.dispatch), *args],
        input=input,
        capture_output=True,
        timeout=30,
        env=GUEST.env(QLITE_RPC_DIRS=":".join(str(d) for d in dirs), **env),
    )


@pytest.fixture
def dirs(tmp_path):
    out = [tmp_path / name for name in ("run", "local", "etc")]
    for d in out:
        d.mkdir()
    return out


def service(path, body: str = "", mode: int = 0o755) -> None:
    path.write_text(f'#!/bin/sh\necho {path.parent.name}/{path.name} "$#" "$@"\n{body}')
    path.chmod(mode)


def test_full_name_is_looked_for_in_every_directory_before_the_bare_one(dirs):
    run, local, etc = dirs
    service(run / "my.Svc")
    service(etc / "my.Svc+arg")
    assert dispatch(dirs, "my.Svc", "arg").stdout == b"etc/my.Svc+arg 1 arg\n"
    assert dispatch(dirs, "my.Svc", "other").stdout == b"run/my.Svc 1 other\n"
    assert dispatch(dirs, "my.Svc").stdout == b"run/my.Svc 0\n"


def test_directories_are_searched_in_order(dirs):
    run, local, etc = dirs
    service(etc / "my.Svc")
    service(local / "my.Svc")
    assert dispatch(dirs, "my.Svc").stdout == b"local/my.Svc 0\n"


def test_non_executable_entries_are_skipped(dirs):
    run, local, etc = dirs
    service(run / "my.Svc", mode=0o644)
    (local / "my.Svc").mkdir()
    service(etc / "my.Svc")
    assert dispatch(dirs, "my.Svc").stdout == b"etc/my.Svc 0\n"


def test_stdio_environment_and_exit_code_pass_through(dirs):
    service(dirs[2] / "my.Svc", 'cat; echo "from $QREXEC_REMOTE_DOMAIN" >&2; exit 42\n')
    proc = dispatch(dirs, "my.Svc", input=b"payload\n", QREXEC_REMOTE_DOMAIN="work")
    assert (proc.returncode, proc.stdout, proc.stderr) == (42, b"etc/my.Svc 0\npayload\n", b"from work\n")


def test_missing_service_is_127_with_a_message(dirs):
    proc = dispatch(dirs, "no.Such", "arg")
    assert proc.returncode == 127
    assert b"no such service no.Such+arg" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("../etc/my.Svc",),
        ("a/b",),
        ("",),
        (".",),
        ("..",),
        ("x" * 65,),
        ("my.Svc", "a/b"),
        ("my.Svc", "a b"),
        ("my.Svc", "../../x"),
        ("my.Svc", "x" * 257),
        ("my.Svc", "a", "b"),
        (),
    ],
)
def test_unsafe_names_are_127(dirs, args):
    service(dirs[0] / "my.Svc")
    proc = dispatch(dirs, *args)
    assert proc.returncode == 127
    assert proc.stdout == b""


def test_default_directories_are_the_qubes_ones():
    text = GUEST.dispatch.read_text()
    assert "${QLITE_RPC_DIRS:-/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc}" in text


def test_empty_directories_in_the_list_are_skipped(dirs):
    service(dirs[2] / "my.Svc")
    proc = subprocess.run(
        [str(GUEST.dispatch), "my.Svc"],
        capture_output=True,
        timeout=30,
        env=GUEST.env(QLITE_RPC_DIRS=f"::{dirs[0]}::{dirs[2]}:"),
    )
    assert proc.stdout == b"etc/my.Svc 0\n"


def test_a_service_that_is_not_executable_or_a_directory_is_passed_over(dirs):
    service(dirs[0] / "my.Svc", mode=0o644)
    (dirs[1] / "my.Svc").mkdir()
    service(dirs[2] / "my.Svc")
    assert dispatch(dirs, "my.Svc").stdout == b"etc/my.Svc 0\n"


def test_names_are_not_globbed(dirs):
    service(dirs[0] / "my.Svc")
    proc = dispatch(dirs, "my.Sv*")
    assert proc.returncode == 127 and proc.stdout == b""


def test_shipped_services_are_executable_and_found():
    for name in ("qubes.Filecopy", "qubes.OpenInVM", "qubes.VMShell", "qubes.VMExec", "qubes.ConnectTCP"):
        path = GUEST.rpc_dir / name
        assert path.is_file() and path.stat().st_mode & 0o111, name


def test_vmshell_runs_stdin_as_commands():
    proc = dispatch([GUEST.rpc_dir], "qubes.VMShell", input=b"echo one; echo two >&2; exit 3\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"one\n", b"two\n")
