"""Split GPG over qlite RPC: qlite-gpg (the gpg a client qube runs) and the
qubes.Gpg service in the vault, which runs the real gpg with the keys.

Request (caller -> service stdin): a 4-byte big-endian length (at most
64 KiB), a UTF-8 JSON header {"version": 1, "args": [...], "files":
[{"name": "file1", "size": N}, ...]} ("version" and an empty "files" may
be left out), the files' bytes in that order, then gpg's stdin. "args" is
GpgRequest.args() with the i-th FILE operand renamed "file<i>". Reply:
gpg's own stdout, stderr and exit code.

Both sides run gpgopts.parse; the service trusts only its own run.

Both sides start a Python for every request, so neither imports what its
common path does not need: no dataclasses, and in the vault no subprocess,
tempfile or shutil (each costs milliseconds of a start in a qube).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator

from qlite_guest import frames, gpgopts
from qlite_guest.names import printable

SERVICE = "qubes.Gpg"
GPG = "/usr/bin/gpg"
DOMAIN_ENVS = ("QLITE_GPG_DOMAIN", "QUBES_GPG_DOMAIN")
DEFAULT_DOMAIN = "@default"  # the policy's target= picks the vault
HEADER_VERSION = 1
LENGTH = struct.Struct(">I")
MAX_HEADER = 64 * 1024
MAX_FILE_BYTES = 100 * 1024 ** 2  # all files of one request together
_DIGITS = "0123456789"


def is_file_name(name: str) -> bool:
    """file1 ... file99: what re's file[1-9][0-9]? matches, without re."""
    n = name[4:]
    return name[:4] == "file" and 0 < len(n) <= 2 and n[0] in _DIGITS[1:] and all(c in _DIGITS for c in n)
CHUNK = 256 * 1024
EXIT_FAILURE = 2  # gpg's exit code for errors, usage errors included
EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127


class RequestError(Exception):
    """A malformed request, or an input that cannot be sent: one line."""


class Header(gpgopts.FrozenRecord):
    __slots__ = ("args", "files")
    args: list[str]
    files: list[tuple[str, int]]  # (name, size), in the order the bytes follow

    def __init__(self, args: list[str], files: list[tuple[str, int]]) -> None:
        self._set(args=args, files=files)


def encode_header(header: Header) -> bytes:
    obj = {"version": HEADER_VERSION, "args": header.args,
           "files": [{"name": name, "size": size} for name, size in header.files]}
    data = frames.dumps(obj, ascii=False).encode("utf-8")
    if len(data) > MAX_HEADER:
        raise RequestError(f"the command line is too long ({len(data)} bytes of header; at most {MAX_HEADER})")
    return LENGTH.pack(len(data)) + data


def decode_header(data: bytes) -> Header:
    """The header's JSON, checked for shape and limits (not the options)."""
    obj = _header_object(data)
    return Header(_header_args(obj), _header_files(obj))


def _header_object(data: bytes) -> dict:
    try:
        obj = frames.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("bad header: not UTF-8 JSON") from None
    # "version" may be left out; anything but 1 is a format this side does not know.
    if not isinstance(obj, dict) or obj.get("version", HEADER_VERSION) != HEADER_VERSION:
        raise RequestError(f"bad header: not a version {HEADER_VERSION} JSON object")
    return obj


def _header_args(obj: dict) -> list[str]:
    args = obj.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise RequestError("bad header: args is not a list of strings")
    return args


def _header_files(obj: dict) -> list[tuple[str, int]]:
    files = obj.get("files", [])
    if not isinstance(files, list):
        raise RequestError("bad header: files is not a list")
    out: list[tuple[str, int]] = []
    total = 0
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not is_file_name(name):
            raise RequestError("bad header: a file name is not file1, file2, ...")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"bad header: {name} has no size")
        total += size
        out.append((name, size))
    if total > MAX_FILE_BYTES:
        raise RequestError(f"the files are {total} bytes, over the {MAX_FILE_BYTES}-byte limit")
    return out


# -- the client (qlite-gpg, qubes-gpg-client) -------------------------------------------

HELP = """\
usage: {prog} [gpg options] [FILE...]

gpg for a qube without keys: the command runs in the vault qube through the
qubes.Gpg service, with the vault's keys. Only an allowlist of options gets
through (signing, verifying, encrypting, decrypting, listing, exporting
public keys); anything else is refused with "Forbidden option". Input files
are read here and sent; output always comes back on stdout.

The vault is $QLITE_GPG_DOMAIN (or $QUBES_GPG_DOMAIN), else @default, which
the RPC policy's target= decides. For git: git -c gpg.program={prog} ..."""


def target_domain(env: dict[str, str] | os._Environ = os.environ) -> str:
    for name in DOMAIN_ENVS:
        if env.get(name):
            return env[name]
    return DEFAULT_DOMAIN


def read_inputs(paths: tuple[str, ...], limit: int = MAX_FILE_BYTES) -> list[bytes]:
    """The contents of PATHS (FIFOs and /dev/fd/N included), within LIMIT bytes in all."""
    blobs: list[bytes] = []
    left = limit
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(left + 1)
        except OSError as exc:
            raise RequestError(f"{printable(path)}: {exc.strerror or exc}") from None
        if len(data) > left:
            raise RequestError(f"the input files are over the {limit}-byte limit")
        left -= len(data)
        blobs.append(data)
    return blobs


def request_prefix(request: gpgopts.GpgRequest, blobs: list[bytes]) -> tuple[gpgopts.GpgRequest, Iterator[bytes]]:
    """(the request as sent, the header and file bytes to send before stdin)."""
    names = [f"file{i}" for i in range(1, len(blobs) + 1)]
    sent = request.with_files(names)
    header = encode_header(Header(sent.args(), [(n, len(b)) for n, b in zip(names, blobs, strict=True)]))

    def chunks() -> Iterator[bytes]:
        yield header
        for blob in blobs:
            view = memoryview(blob)
            for i in range(0, len(view), CHUNK):
                yield bytes(view[i:i + CHUNK])

    return sent, chunks()


def _stdin_open() -> bool:
    try:
        os.fstat(0)
    except OSError:
        return False
    return True


def client_main(argv: list[str], prog: str = "qlite-gpg") -> int:
    from qlite_guest.client import Refused, RpcError, connect, fd_sink, pump  # noqa: PLC0415

    if argv in (["-h"], ["--help"]):
        print(HELP.format(prog=prog))
        return 0
    try:
        request = gpgopts.parse(argv)
    except gpgopts.ForbiddenOption as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except gpgopts.UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        _, prefix = request_prefix(request, read_inputs(request.files))
    except RequestError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    target = target_domain()
    try:
        call = connect(target, SERVICE)
    except Refused as exc:
        print(f"{prog}: the vault refused the request ({exc})", file=sys.stderr)
        return EXIT_FAILURE
    except RpcError as exc:
        print(f"{prog}: cannot reach the vault ({target}): {exc}", file=sys.stderr)
        return EXIT_FAILURE
    with call:
        try:
            # Stdin is read only when gpg will read it: `qlite-gpg -k` on a
            # terminal must not wait for input.
            if request.reads_stdin and _stdin_open():
                code = pump(call, 0, fd_sink(1), fd_sink(2), prefix=prefix)
            else:
                code = pump(call, prefix, fd_sink(1), fd_sink(2))
        except RpcError as exc:
            print(f"{prog}: the call to the vault ({call.target}) failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    if code == EXIT_REFUSED:
        print(f"{prog}: the vault refused the request (exit {code})", file=sys.stderr)
        return EXIT_FAILURE
    if code == EXIT_NO_SERVICE:
        print(f"{prog}: {call.target} has no {SERVICE} service (is it a split GPG vault?)", file=sys.stderr)
        return EXIT_FAILURE
    return code


# -- the service (qubes.Gpg, in the vault) ----------------------------------------------


def _read_exact(fd: int, n: int) -> bytes:
    """N bytes from FD with plain read(2)s, so that nothing past them is
    consumed: the rest of the stream is gpg's stdin."""
    parts = bytearray()
    while len(parts) < n:
        data = os.read(fd, min(CHUNK, n - len(parts)))
        if not data:
            raise RequestError("the request ended early")
        parts += data
    return bytes(parts)


def _copy_exact(fd: int, path: str, size: int) -> None:
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(out, "wb") as f:
        left = size
        while left:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                raise RequestError("the request ended in the middle of a file")
            f.write(data)
            left -= len(data)


def read_request(fd: int = 0) -> tuple[gpgopts.GpgRequest, Header]:
    """Read and check the header: its shape, then the options (again)."""
    (length,) = LENGTH.unpack(_read_exact(fd, LENGTH.size))
    if not 0 < length <= MAX_HEADER:
        raise RequestError(f"bad header length {length} (at most {MAX_HEADER})")
    obj = _header_object(_read_exact(fd, length))
    # The options first: a forbidden one is named whatever else is wrong.
    args = _header_args(obj)
    request = gpgopts.parse(args)
    files = _header_files(obj)
    names = [name for name, _ in files]
    if list(request.files) != names or len(set(names)) != len(names):
        raise RequestError("bad header: the files sent are not the file operands")
    return request, Header(args, files)


def _make_workdir() -> str:
    """A new private (0700) directory for the request's files, as
    tempfile.mkdtemp makes one, without importing tempfile."""
    base = next((os.environ[name] for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)), "/tmp")
    try:
        for _ in range(100):
            path = os.path.abspath(os.path.join(base, "qlite-gpg-" + os.urandom(6).hex()))
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            return path
    except OSError:
        pass  # no usable base: tempfile knows the other places to try
    import tempfile  # noqa: PLC0415

    return tempfile.mkdtemp(prefix="qlite-gpg-")


def _remove_workdir(path: str) -> None:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        # Something other than the plain files written here (gpg's own?).
        import shutil  # noqa: PLC0415

        shutil.rmtree(path, ignore_errors=True)


def _run_gpg(argv: list[str], stdin_fd: int | None, cwd: str) -> int:
    """Run ARGV in CWD with stdin from STDIN_FD (None: /dev/null) and our
    stdout and stderr; return its exit status. posix_spawn rather than
    subprocess, whose import and fork cost more than the rest of the service
    in a qube; like subprocess, it restores the signals Python ignores."""
    import signal  # noqa: PLC0415 (its enum is loaded by now, with json's re)

    actions: list[tuple[object, ...]]
    if stdin_fd is None:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    else:
        actions = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0)] if stdin_fd != 0 else []
    try:
        back: str | None = os.getcwd()
    except OSError:
        back = None
    # posix_spawn has no chdir of its own: the child inherits ours.
    os.chdir(cwd)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        if back is not None:
            try:
                os.chdir(back)
            except OSError:
                pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def service_main(fd: int = 0, gpg: str = GPG) -> int:
    prog = SERVICE
    try:
        request, header = read_request(fd)
    except gpgopts.ForbiddenOption as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except (gpgopts.UsageError, RequestError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    workdir = _make_workdir()
    try:
        paths = []
        for name, size in header.files:
            path = os.path.join(workdir, name)
            _copy_exact(fd, path, size)
            paths.append(path)
        argv = request.with_files(paths).gpg_argv(gpg)
        try:
            # stdout and stderr are the caller's; so is stdin when gpg reads it.
            code = _run_gpg(argv, fd if request.reads_stdin else None, workdir)
        except OSError as exc:
            print(f"{prog}: cannot run {gpg}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        return 128 - code if code < 0 else code
    except RequestError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        _remove_workdir(workdir)
