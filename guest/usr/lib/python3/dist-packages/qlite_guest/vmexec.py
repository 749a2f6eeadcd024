"""qubes.VMExec: a command line carried in the service argument.

Qubes' encoding: the arguments are joined with '+'; inside each, the bytes
[A-Za-z0-9._] stand for themselves, '-' is written '--' and every other
byte is '-HH' (two upper-case hex digits). The result fits the service
argument alphabet [A-Za-z0-9._+-].
"""

from __future__ import annotations

import os
import re
import sys

PLAIN = re.compile(rb"[A-Za-z0-9_.]")
ESCAPE = re.compile(r"--|-([0-9A-F]{2})")
PART = re.compile(r"[A-Za-z0-9._-]*")


class DecodeError(ValueError):
    """An argument that is not in VMExec encoding."""


def encode_part(arg: str | bytes) -> str:
    raw = arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg
    out = []
    for b in raw:
        ch = bytes([b])
        if PLAIN.fullmatch(ch):
            out.append(ch.decode("ascii"))
        elif ch == b"-":
            out.append("--")
        else:
            out.append(f"-{b:02X}")
    return "".join(out)


def encode(args: list[str] | list[bytes]) -> str:
    """The service argument for running ARGS (at least one) with qubes.VMExec."""
    if not args:
        raise ValueError("qubes.VMExec needs a command")
    return "+".join(encode_part(a) for a in args)


def decode_part(part: str) -> bytes:
    if not PART.fullmatch(part):
        raise DecodeError("illegal characters")
    if "-" in ESCAPE.sub("", part):
        raise DecodeError("'-' may only start '--' or '-HH' (upper-case hex)")
    out = bytearray()
    pos = 0
    for m in ESCAPE.finditer(part):
        out += part[pos:m.start()].encode("ascii")
        out += b"-" if m.group(0) == "--" else bytes([int(m.group(1), 16)])
        pos = m.end()
    out += part[pos:].encode("ascii")
    return bytes(out)


def decode(argument: str) -> list[bytes]:
    """The argv (as bytes) that ARGUMENT encodes; raises DecodeError."""
    return [decode_part(p) for p in argument.split("+")]


def service_main(argv: list[str], env: dict[str, str] | os._Environ = os.environ) -> int:
    """Decode the command from the argument and exec it."""
    argument = argv[1] if len(argv) > 1 else env.get("QREXEC_SERVICE_ARGUMENT", "")
    if not argument:
        print("qubes.VMExec: needs the command as its argument (qubes.VMExec+ENCODED)", file=sys.stderr)
        return 1
    try:
        command = decode(argument)
    except DecodeError as exc:
        print(f"qubes.VMExec: bad argument: {exc}", file=sys.stderr)
        return 1
    if not command[0]:
        print("qubes.VMExec: empty command", file=sys.stderr)
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"qubes.VMExec: cannot run {os.fsdecode(command[0])!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 1  # not reached
