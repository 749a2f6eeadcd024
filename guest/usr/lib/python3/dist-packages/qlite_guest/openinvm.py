"""qubes.OpenInVM: open a file in a (disposable) qube and take edits back.

Request (caller -> service stdin): a 4-byte big-endian length, a UTF-8 JSON
header {"name": "report.odt", "size": N, "view_only": false}, then N bytes.

Reply (service stdout), after the program has exited: a 4-byte length and
a JSON header, either {"result": "unchanged"} or {"result": "changed",
"size": N} followed by N bytes of new content.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from qlite_guest.names import component_problem, printable

SERVICE = "qubes.OpenInVM"
LENGTH = struct.Struct(">I")
MAX_HEADER = 8192
CHUNK = 256 * 1024
MAX_BYTES_ENV = "QLITE_OPENINVM_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 * 1024 ** 3


class OpenError(Exception):
    """One-line reason the open failed."""


def max_bytes(env: dict[str, str] | os._Environ = os.environ) -> int:
    raw = env.get(MAX_BYTES_ENV, "")
    if raw and not raw.isdigit():
        raise OpenError(f"{MAX_BYTES_ENV}={raw!r} is not a non-negative integer")
    return int(raw) if raw else DEFAULT_MAX_BYTES


def encode_header(header: dict) -> bytes:
    data = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return LENGTH.pack(len(data)) + data


def parse_header(data: bytes) -> dict:
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OpenError("bad header: not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise OpenError("bad header: not a JSON object")
    return header


def _size_field(header: dict, limit: int) -> int:
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OpenError("bad header: no size")
    if size > limit:
        raise OpenError(f"the file is {size} bytes, over the {limit}-byte limit")
    return size


def safe_name(name: str) -> str:
    """NAME with anything the receiving side would refuse replaced by '_'."""
    name = "".join("_" if component_problem(ch) and ch != "." else ch for ch in name) or "file"
    if name in (".", ".."):
        name = "file"
    while len(name.encode("utf-8")) > 255:
        name = name[1:]
    return name


# -- the calling side (qlite-open-in-dvm) ---------------------------------------------


def request_stream(fd: int, name: str, size: int, view_only: bool) -> Iterator[bytes]:
    yield encode_header({"name": name, "size": size, "view_only": view_only})
    left = size
    while left:
        data = os.read(fd, min(CHUNK, left))
        if not data:
            raise OpenError("the file got shorter while being sent")
        left -= len(data)
        yield data


class ReplyReader:
    """Parses the reply as it arrives; new content goes to a file opened by
    OPEN_OUTPUT only when the reply says "changed"."""

    def __init__(self, open_output: Callable[[], BinaryIO], limit: int):
        self.open_output = open_output
        self.limit = limit
        self.buf = bytearray()
        self.header: dict | None = None
        self.left = 0
        self.output: BinaryIO | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            raise OpenError("data after the end of the reply")
        if self.header is None:
            self.buf += data
            if len(self.buf) < LENGTH.size:
                return
            (length,) = LENGTH.unpack_from(self.buf)
            if not 0 < length <= MAX_HEADER:
                raise OpenError(f"bad reply: header length {length}")
            if len(self.buf) < LENGTH.size + length:
                return
            self.header = parse_header(bytes(self.buf[LENGTH.size:LENGTH.size + length]))
            data = bytes(self.buf[LENGTH.size + length:])
            self.buf.clear()
            result = self.header.get("result")
            if result == "unchanged":
                self.done = True
                if data:
                    raise OpenError("data after the end of the reply")
                return
            if result != "changed":
                raise OpenError("bad reply: result is neither 'unchanged' nor 'changed'")
            self.left = _size_field(self.header, self.limit)
            self.output = self.open_output()
            if not self.left:
                self.done = True
        if not data:
            return
        if len(data) > self.left:
            raise OpenError("the reply is longer than it said")
        assert self.output is not None
        self.output.write(data)
        self.left -= len(data)
        if not self.left:
            self.done = True

    @property
    def changed(self) -> bool:
        return self.done and self.output is not None


def open_main(argv: list[str]) -> int:
    """qlite-open-in-dvm FILE [--view-only]"""
    from qlite_guest.client import RpcError, connect, fd_sink, pump  # noqa: PLC0415

    prog = "qlite-open-in-dvm"
    parser = argparse.ArgumentParser(
        prog=prog, description="Open FILE in a new disposable qube (qubes.OpenInVM to @dispvm); "
                               "if it was edited there, write the new content back over FILE.")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--view-only", action="store_true", help="never write changes back")
    args = parser.parse_args(argv)

    real = os.path.realpath(args.file)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        print(f"{prog}: {printable(args.file)}: {exc.strerror}", file=sys.stderr)
        return 1
    tmp_path: str | None = None
    reader: ReplyReader | None = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            print(f"{prog}: {printable(args.file)}: not a regular file", file=sys.stderr)
            return 1
        name = safe_name(os.path.basename(os.path.normpath(args.file)))
        directory = os.path.dirname(real)

        def open_output() -> BinaryIO:
            nonlocal tmp_path
            out_fd, tmp_path = tempfile.mkstemp(prefix=f".{name[:100]}.", suffix=".qlite-tmp", dir=directory)
            return os.fdopen(out_fd, "wb")

        reader = ReplyReader(open_output, max_bytes())
        try:
            with connect("@dispvm", SERVICE) as call:
                code = pump(call, request_stream(fd, name, st.st_size, args.view_only), reader.feed,
                            fd_sink(2, filter_escapes=True))
                where = call.target
        except RpcError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return exc.code
        except (OpenError, OSError) as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        if code != 0:
            print(f"{prog}: the program in {where} failed (exit {code}); {printable(args.file)} is unchanged",
                  file=sys.stderr)
            return code
        if not reader.done:
            print(f"{prog}: {where} sent an incomplete reply; {printable(args.file)} is unchanged", file=sys.stderr)
            return 1
        if not reader.changed:
            return 0
        if args.view_only:
            print(f"{prog}: {printable(args.file)} was changed in {where}; not saved (--view-only)",
                  file=sys.stderr)
            return 0
        assert reader.output is not None and tmp_path is not None
        reader.output.flush()
        os.fsync(reader.output.fileno())
        os.fchmod(reader.output.fileno(), stat.S_IMODE(st.st_mode))
        reader.output.close()
        os.replace(tmp_path, real)
        tmp_path = None
        print(f"{prog}: saved the changes made in {where} to {printable(args.file)}", file=sys.stderr)
        return 0
    finally:
        os.close(fd)
        if reader is not None and reader.output is not None:
            reader.output.close()
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)


# -- the service side (qubes.OpenInVM) -------------------------------------------------


# With no program configured and no display, the file is shown as text on
# the caller's terminal: the program's output reaches the caller's stderr
# (escape sequences filtered there). The service has no terminal, so no
# editor could run; cat is in every template.
SHOW_AS_TEXT = (
    'printf "%s\\n" "--- $(basename -- "$1") (shown as text; to open files with a program, set one in '
    '~/.config/qlite/open-program of the disposable template) ---"; exec cat -- "$1"'
)


def program_argv(path: str, home: str | None = None, env: dict[str, str] | os._Environ | None = None) -> list[str]:
    """The command that opens PATH: ~/.config/qlite/open-program (a shell
    command line; PATH is appended as its last argument), else xdg-open
    when there is a display to open it on, else PATH shown as text."""
    env = os.environ if env is None else env
    config = os.path.join(home or os.path.expanduser("~"), ".config", "qlite", "open-program")
    try:
        with open(config, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        raise OpenError(f"cannot read {config}: {exc.strerror}") from None
    command = next((line for line in lines if line and not line.startswith("#")), None)
    if command:
        return ["/bin/sh", "-c", f"{command} \"$@\"", "open-program", path]
    found = shutil.which("xdg-open", path=env.get("PATH", os.defpath))
    if found and (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return [found, path]
    return ["/bin/sh", "-c", SHOW_AS_TEXT, "show", path]


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise OpenError("the request ended early")
    return data


def _digest(path: str) -> tuple[str, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # removed, or replaced by a symlink: treat as not edited
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        h = hashlib.sha256()
        size = 0
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def service_main(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    workdir = tempfile.mkdtemp(prefix="qlite-open-")
    try:
        (length,) = LENGTH.unpack(_read_exact(stdin, LENGTH.size))
        if not 0 < length <= MAX_HEADER:
            raise OpenError(f"bad header length {length}")
        header = parse_header(_read_exact(stdin, length))
        name = header.get("name")
        problem = component_problem(name) if isinstance(name, str) else "no file name"
        if problem or not isinstance(name, str):
            raise OpenError(problem)
        size = _size_field(header, max_bytes())
        view_only = header.get("view_only") is True
        path = os.path.join(workdir, name)
        h = hashlib.sha256()
        with open(path, "xb") as f:
            left = size
            while left:
                chunk = stdin.read(min(CHUNK, left))
                if not chunk:
                    raise OpenError("the request ended in the middle of the file")
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        if view_only:
            os.chmod(path, 0o400)
        before = (h.hexdigest(), size)
        argv = program_argv(path)
        # The program's output must not mix with the reply on stdout.
        code = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
        if code != 0:
            print(f"qubes.OpenInVM: the program that opened the file exited {code}", file=sys.stderr)
            return code if 0 < code < 256 else 1
        after = None if view_only else _digest(path)
        if after is None or after == before:
            stdout.write(encode_header({"result": "unchanged"}))
        else:
            _send_file(path, stdout)
        stdout.flush()
        return 0
    except OpenError as exc:
        print(f"qubes.OpenInVM: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _send_file(path: str, stdout: BinaryIO) -> None:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        stdout.write(encode_header({"result": "changed", "size": size}))
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise OpenError("the edited file got shorter while being sent back")
            stdout.write(chunk)
            left -= len(chunk)

