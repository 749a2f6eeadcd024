"""qubes.VMExec: Qubes' argument encoding, and the service that runs it."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .guest_helpers import GUEST

vmexec = GUEST.module("vmexec")
ARGUMENT_RE = re.compile(r"[A-Za-z0-9._+-]*")


@given(st.lists(st.binary(max_size=30), min_size=1, max_size=6))
def test_encode_decode_round_trip(args):
    encoded = vmexec.encode(args)
    assert ARGUMENT_RE.fullmatch(encoded)
    assert vmexec.decode(encoded) == args


@given(st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_text_arguments_round_trip_as_utf8(args):
    assert vmexec.decode(vmexec.encode(args)) == [a.encode("utf-8", "surrogateescape") for a in args]


@pytest.mark.parametrize(
    "args, encoded",
    [
        (["ls", "-la", "/tmp"], "ls+--la+-2Ftmp"),
        (["echo", "a b+c"], "echo+a-20b-2Bc"),
        (["x", ""], "x+"),
        (["ü"], "-C3-BC"),
    ],
)
def test_known_encodings(args, encoded):
    assert vmexec.encode(args) == encoded
    assert vmexec.decode(encoded) == [a.encode() for a in args]


@pytest.mark.parametrize("bad", ["a-", "-2f", "a-G0", "a b", "a/b", "-", "x---", "caf\u00e9"])
def test_malformed_arguments_are_refused(bad):
    with pytest.raises(vmexec.DecodeError):
        vmexec.decode(bad)


def run_service(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GUEST.rpc_dir / "qubes.VMExec"), *argv], capture_output=True, timeout=30, env=GUEST.env(**env)
    )


def test_service_execs_the_decoded_command():
    encoded = vmexec.encode(["sh", "-c", 'printf "%s|" "$@"; exit 6', "sh", "a b", "-x", "+"])
    proc = run_service(encoded)
    assert (proc.returncode, proc.stdout) == (6, b"a b|-x|+|")
    # From the environment too, as the broker also sets it.
    assert run_service(QREXEC_SERVICE_ARGUMENT=vmexec.encode(["echo", "hi"])).stdout == b"hi\n"


@pytest.mark.parametrize("argument, code", [("", 1), ("a-zz", 1), ("no-2Dsuch-2Dcommand", 127)])
def test_service_failures(argument, code):
    proc = run_service(argument) if argument else run_service()
    assert proc.returncode == code
    assert proc.stderr.startswith(b"qubes.VMExec: ")
