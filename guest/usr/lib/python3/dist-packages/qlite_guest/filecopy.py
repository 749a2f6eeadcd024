"""qubes.Filecopy: the stream between qlite-copy and the receiving service.

The stream (docs/rpc.md, "Service formats") is a sequence of entries, each
a 4-byte big-endian header length, a UTF-8 JSON header and, for files, the
content:

    {"type": "dir",  "name": "a",     "mode": 493, "mtime": 1700000000}
    {"type": "file", "name": "a/b.txt", "mode": 420, "size": 12, "mtime": ...} + 12 bytes
    {"type": "end"}

A directory comes before anything inside it. The receiver answers with one
line of JSON on stdout: {"ok": true, "files": N, "dirs": N, "bytes": N, "dest": "..."}
or {"ok": false, "error": "...", "files": 0, "dirs": 0, "bytes": 0, "dest": "..."}.

The sender refuses anything but regular files and directories before it
sends a byte; the receiver trusts nothing in the stream:

- Modes (received_mode): only the permission bits cross (no setuid, setgid
  or sticky bit), group and other never get write, a directory is always
  rwx for its owner and a file always rw: a directory gets
  (mode | 0o700) & ~0o022, a file (mode | 0o600) & ~0o022.
- A refused stream keeps nothing: everything it created is removed again,
  deepest first, fd-relative and never through a symlink; what was there
  before is left alone. The counts of a refusal are what could not be
  removed (normally none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from qlite_guest.names import printable, qube_problem, relpath_problem

SERVICE = "qubes.Filecopy"
LENGTH = struct.Struct(">I")
MAX_HEADER = 8192
CHUNK = 256 * 1024
DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_BYTES = 10 * 1024 ** 3
MAX_FILES_ENV = "QLITE_FILECOPY_MAX_FILES"
MAX_BYTES_ENV = "QLITE_FILECOPY_MAX_BYTES"
MAX_SUMMARY = 64 * 1024
INCOMING = "QubesIncoming"


class SourceError(Exception):
    """The sender cannot send what it was given: one-line message."""


class Refusal(Exception):
    """The receiver stops: one-line reason."""


# -- the header codec ----------------------------------------------------------------


def encode_header(header: dict) -> bytes:
    data = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_HEADER:
        raise SourceError(f"{header.get('name', '')!r}: entry header too long")
    return LENGTH.pack(len(data)) + data


def received_mode(kind: str, sent: int) -> int:
    """The mode a received KIND ("dir" or "file") gets for the SENT mode."""
    # A mode-0 directory would lock its owner out of what they just received, and
    # group/other write would let any other user of the qube change it.
    owner = 0o700 if kind == "dir" else 0o600
    return (sent & 0o777 | owner) & ~0o022


def _int_field(header: dict, key: str, default: int | None = None, maximum: int = 2 ** 63) -> int:
    value = header.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise Refusal(f"bad header: {key!r} must be an integer from 0 to {maximum}")
    return value


# -- sending ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One thing to send: NAME inside the stream, PATH on this side."""

    kind: str  # "file" or "dir"
    name: str
    path: str
    mode: int
    size: int
    mtime: int

    def header(self) -> dict:
        h = {"type": self.kind, "name": self.name, "mode": self.mode, "mtime": self.mtime}
        if self.kind == "file":
            h["size"] = self.size
        return h


KIND_NAMES = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind_of(st: os.stat_result) -> str:
    for test, what in KIND_NAMES:
        if test(st.st_mode):
            return what
    return "not a regular file or directory"


def plan(paths: list[str]) -> list[Entry]:
    """Every entry to send, parents first; raises SourceError before anything
    is sent if one of them is not a regular file or directory or has an
    unsafe name."""
    entries: list[Entry] = []
    tops: set[str] = set()
    for path in paths:
        top = os.path.basename(os.path.normpath(os.path.abspath(path)))
        if not top or top == "/":
            raise SourceError(f"{path}: cannot copy the root directory")
        if top in tops:
            raise SourceError(f"{path}: two sources are both named {top!r}")
        tops.add(top)
        _plan_one(path, top, entries)
    return entries


def _plan_one(path: str, name: str, entries: list[Entry]) -> None:
    problem = relpath_problem(name)
    if problem:
        raise SourceError(f"{printable(path)}: {problem}")
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SourceError(f"{printable(path)}: {exc.strerror}") from None
    mode, mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        entries.append(Entry("file", name, path, mode, st.st_size, mtime))
    elif stat.S_ISDIR(st.st_mode):
        entries.append(Entry("dir", name, path, mode, 0, mtime))
        try:
            children = sorted(os.listdir(path))
        except OSError as exc:
            raise SourceError(f"{printable(path)}: {exc.strerror}") from None
        for child in children:
            _plan_one(os.path.join(path, child), f"{name}/{child}", entries)
    else:
        raise SourceError(f"{printable(path)}: is {_kind_of(st)}; only regular files and directories can be copied")


def pack(entries: list[Entry]) -> Iterator[bytes]:
    """The stream for ENTRIES. Raises SourceError if a file changed since
    plan() looked at it (the stream is then cut short, which the receiver
    refuses)."""
    for entry in entries:
        yield encode_header(entry.header())
        if entry.kind == "file":
            yield from _file_content(entry)
    yield encode_header({"type": "end"})


def _file_content(entry: Entry) -> Iterator[bytes]:
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"{printable(entry.path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            raise SourceError(f"{printable(entry.path)}: changed while being copied")
        left = entry.size
        while left:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                raise SourceError(f"{printable(entry.path)}: changed while being copied (shorter)")
            left -= len(data)
            yield data
        if os.read(fd, 1):
            raise SourceError(f"{printable(entry.path)}: changed while being copied (longer)")
    except OSError as exc:
        raise SourceError(f"{printable(entry.path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


# -- receiving -------------------------------------------------------------------------


@dataclass
class Limits:
    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ) -> Limits:
        limits = cls()
        for key, attr in ((MAX_FILES_ENV, "max_files"), (MAX_BYTES_ENV, "max_bytes")):
            raw = env.get(key)
            if raw is None or raw == "":
                continue
            if not raw.isdigit():
                raise Refusal(f"{key}={raw!r} is not a non-negative integer")
            setattr(limits, attr, int(raw))
        return limits


@dataclass
class Summary:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    created_dirs: list[tuple[str, int, int | None]] = field(default_factory=list)

    def count(self, kind: str, size: int) -> None:
        if kind == "dir":
            self.dirs += 1
        else:
            self.files += 1
            self.bytes += size

    def as_dict(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "bytes": self.bytes}


@dataclass(frozen=True)
class Made:
    """Something this stream created: what to remove if it is refused."""

    kind: str  # "file" or "dir"
    name: str
    dev: int
    ino: int


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unpacker:
    """Unpack a stream into the directory open as DEST_FD.

    Every path is reached from DEST_FD one component at a time with
    O_NOFOLLOW, so a symlink already in the destination is never followed;
    files are created with O_EXCL, so nothing existing is overwritten.
    A stream that is refused (or fails in any way) keeps nothing: what it
    created is removed again, and the summary then counts what could not be."""

    def __init__(self, dest_fd: int, limits: Limits | None = None):
        self.dest_fd = dest_fd
        self.limits = limits or Limits()
        self.summary = Summary()
        self.sent_dirs: set[str] = set()
        self.made: list[Made] = []  # in creation order, so parents before children
        self._cached: tuple[str, int] | None = None  # (relative dir, open fd)

    def run(self, stream: BinaryIO) -> Summary:
        try:
            self._unpack(stream)
            return self.summary
        except BaseException:
            self._remove_made()
            raise
        finally:
            self._drop_cache()

    def _unpack(self, stream: BinaryIO) -> None:
        while True:
            header = self._read_header(stream)
            kind = header.get("type")
            if kind == "end":
                if stream.read(1):
                    raise Refusal("data after the end of the stream")
                self._finish_dirs()
                return
            if kind == "dir":
                self._make_dir(header)
            elif kind == "file":
                self._make_file(header, stream)
            else:
                raise Refusal(f"bad header: unknown entry type {printable(str(kind))!r}")

    # -- stream parsing

    def _read_header(self, stream: BinaryIO) -> dict:
        raw = stream.read(LENGTH.size)
        if len(raw) < LENGTH.size:
            raise Refusal("the stream ended before its end marker")
        (length,) = LENGTH.unpack(raw)
        if not 0 < length <= MAX_HEADER:
            raise Refusal(f"bad header: length {length} (at most {MAX_HEADER})")
        data = stream.read(length)
        if len(data) < length:
            raise Refusal("the stream ended in the middle of a header")
        try:
            header = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Refusal("bad header: not UTF-8 JSON") from None
        if not isinstance(header, dict):
            raise Refusal("bad header: not a JSON object")
        return header

    def _entry(self, header: dict, kind: str) -> tuple[str, list[str], int, int | None]:
        name = header.get("name")
        problem = relpath_problem(name)
        if problem or not isinstance(name, str):
            raise Refusal(problem or "no name")
        mode = received_mode(kind, _int_field(header, "mode", 0o755 if kind == "dir" else 0o644, 0o7777))
        mtime = _int_field(header, "mtime", 0, 2 ** 40) if "mtime" in header else None
        parts = name.split("/")
        parent = "/".join(parts[:-1])
        if parent and parent not in self.sent_dirs:
            raise Refusal(f"{printable(name)!r}: its directory was not sent before it")
        if self.summary.files + self.summary.dirs >= self.limits.max_files:
            raise Refusal(f"more than {self.limits.max_files} entries")
        return name, parts, mode, mtime

    # -- the destination tree

    def _open_dir(self, parts: list[str]) -> int:
        """An fd for the directory PARTS under dest, never through a symlink."""
        rel = "/".join(parts)
        if self._cached and self._cached[0] == rel:
            return self._cached[1]
        self._drop_cache()
        fd = os.dup(self.dest_fd)
        try:
            for part in parts:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as exc:
            os.close(fd)
            raise Refusal(f"{printable(rel)!r}: not a directory in the destination "
                          f"({exc.strerror}; a symlink is never followed)") from None
        self._cached = (rel, fd)
        return fd

    def _drop_cache(self) -> None:
        if self._cached:
            os.close(self._cached[1])
            self._cached = None

    def _make_dir(self, header: dict) -> None:
        name, parts, mode, mtime = self._entry(header, "dir")
        if name in self.sent_dirs:
            raise Refusal(f"{printable(name)!r}: sent twice")
        parent_fd = self._open_dir(parts[:-1])
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent_fd)
            st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
            self.made.append(Made("dir", name, st.st_dev, st.st_ino))
            self.summary.created_dirs.append((name, mode, mtime))
        except FileExistsError:
            # An earlier copy made it: fine if it is a real directory.
            try:
                os.close(os.open(parts[-1], _DIR_FLAGS, dir_fd=parent_fd))
            except OSError:
                raise Refusal(f"{printable(name)!r}: already exists and is not a directory") from None
        except OSError as exc:
            raise Refusal(f"{printable(name)!r}: cannot create the directory: {exc.strerror}") from None
        self.sent_dirs.add(name)
        self.summary.dirs += 1

    def _make_file(self, header: dict, stream: BinaryIO) -> None:
        name, parts, mode, mtime = self._entry(header, "file")
        size = _int_field(header, "size")
        if self.summary.bytes + size > self.limits.max_bytes:
            raise Refusal(f"{printable(name)!r}: more than {self.limits.max_bytes} bytes in all")
        parent_fd = self._open_dir(parts[:-1])
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent_fd)
        except FileExistsError:
            raise Refusal(f"{printable(name)!r}: already exists") from None
        except OSError as exc:
            raise Refusal(f"{printable(name)!r}: cannot create: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            self.made.append(Made("file", name, st.st_dev, st.st_ino))
            left = size
            while left:
                data = stream.read(min(CHUNK, left))
                if not data:
                    raise Refusal(f"{printable(name)!r}: the stream ended in the middle of the file")
                try:
                    _write_all(fd, data)
                except OSError as exc:
                    raise Refusal(f"{printable(name)!r}: cannot write: {exc.strerror}") from None
                left -= len(data)
            os.fchmod(fd, mode)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.summary.files += 1
        self.summary.bytes += size

    def _finish_dirs(self) -> None:
        # Created 0700 so that their contents could be written; the sent mode and
        # mtime are set last, deepest first (a child would change its parent's mtime).
        self._drop_cache()
        for name, mode, mtime in reversed(self.summary.created_dirs):
            fd = self._open_dir(name.split("/"))
            os.fchmod(fd, mode)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))

    def _remove_made(self) -> None:
        """Undo this stream: remove what it created, deepest first; the summary
        then counts what could not be removed."""
        self.summary.files = self.summary.dirs = self.summary.bytes = 0
        self.summary.created_dirs.clear()
        self._drop_cache()
        for made in reversed(self.made):
            with contextlib.suppress(Refusal, OSError):
                self._remove_one(made)

    def _remove_one(self, made: Made) -> None:
        """Remove MADE if it is still the entry this stream created; count it if it
        is but cannot be removed (raises Refusal or OSError when in doubt)."""
        parts = made.name.split("/")
        try:
            parent_fd = self._open_dir(parts[:-1])
        except Refusal:
            self.summary.count(made.kind, 0)  # out of reach: it may still be there
            raise
        try:
            st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        # Whatever stands there now but is not what this stream made is left alone.
        if (st.st_dev, st.st_ino) != (made.dev, made.ino):
            return
        try:
            if made.kind == "dir":
                os.rmdir(parts[-1], dir_fd=parent_fd)
            else:
                os.unlink(parts[-1], dir_fd=parent_fd)
        except OSError:
            self.summary.count(made.kind, st.st_size)
            raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def receive_main(env: dict[str, str] | os._Environ = os.environ,
                 stdin: BinaryIO | None = None, stdout=None, stderr=None) -> int:
    """The qubes.Filecopy service: unpack stdin into ~/QubesIncoming/<source>/."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    source = env.get("QREXEC_REMOTE_DOMAIN", "")
    summary = Summary()
    dest = ""
    made: list[str] = []
    try:
        if qube_problem(source):
            raise Refusal(f"the caller's name {printable(source)!r} is not a valid qube name")
        limits = Limits.from_env(env)
        dest = os.path.join(os.path.expanduser("~"), INCOMING, source)
        made = [path for path in (dest, os.path.dirname(dest)) if not os.path.lexists(path)]
        try:
            os.makedirs(dest, 0o700, exist_ok=True)
            dest_fd = os.open(dest, _DIR_FLAGS)
        except OSError as exc:
            raise Refusal(f"cannot open {dest}: {exc.strerror}") from None
        try:
            unpacker = Unpacker(dest_fd, limits)
            summary = unpacker.summary
            unpacker.run(stdin)
        finally:
            os.close(dest_fd)
    except Refusal as exc:
        _remove_if_empty(made)
        left = summary.files + summary.dirs
        kept = "nothing was kept" if not left else f"{left} received entries could not be removed"
        print(f"qubes.Filecopy: refused: {exc}; {kept}", file=stderr)
        print(json.dumps({"ok": False, "error": str(exc), **summary.as_dict(), "dest": dest}), file=stdout)
        return 1
    print(json.dumps({"ok": True, **summary.as_dict(), "dest": dest}), file=stdout)
    return 0


def _remove_if_empty(paths: list[str]) -> None:
    """Remove the directories PATHS (deepest first) that this call made for its
    destination, each only if it is empty and still a directory."""
    for path in paths:
        with contextlib.suppress(OSError):
            parent_fd = os.open(os.path.dirname(path), _DIR_FLAGS)
            try:
                os.rmdir(os.path.basename(path), dir_fd=parent_fd)
            finally:
                os.close(parent_fd)


# -- qlite-copy / qlite-move -----------------------------------------------------------


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def copy_main(argv: list[str], *, move: bool, named_target: bool) -> int:
    """qlite-copy / qlite-move FILE... and the -to-vm forms that name a target."""
    from qlite_guest.client import RpcError, connect, fd_sink, pump  # noqa: PLC0415 (keeps receive_main light)

    verb = "move" if move else "copy"
    prog = f"qlite-{verb}" + ("-to-vm" if named_target else "")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(f"{verb.capitalize()} files and directories to another qube's ~/QubesIncoming/<this qube>/ "
                     "over the qubes.Filecopy service" + ("" if named_target else "; the policy asks which qube")
                     + (". The sources are deleted only after the whole copy succeeded." if move else ".")))
    if named_target:
        parser.add_argument("target", metavar="VM", help="the qube to send to")
    parser.add_argument("--without-progress", action="store_true", help="accepted for Qubes compatibility")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    target = args.target if named_target else "@default"

    try:
        entries = plan(args.files)
    except SourceError as exc:
        print(f"{prog}: {exc}; nothing was sent", file=sys.stderr)
        return 1
    files = sum(1 for e in entries if e.kind == "file")
    dirs = len(entries) - files
    total = sum(e.size for e in entries)

    answer = bytearray()

    def collect(data: bytes) -> None:
        if len(answer) + len(data) > MAX_SUMMARY:
            raise SourceError("the receiver's answer is too long")
        answer.extend(data)

    try:
        with connect(target, SERVICE) as call:
            code = pump(call, pack(entries), collect, fd_sink(2, filter_escapes=True))
            where = call.target
    except RpcError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except SourceError as exc:
        print(f"{prog}: {exc}; the copy is incomplete" + ("; nothing was deleted" if move else ""), file=sys.stderr)
        return 1
    try:
        result = json.loads(answer.decode("utf-8").strip() or "null")
    except (UnicodeDecodeError, ValueError):
        result = None
    if code != 0:
        print(f"{prog}: the copy to {where} failed (exit {code})" + ("; nothing was deleted" if move else ""),
              file=sys.stderr)
        return code
    if (not isinstance(result, dict) or result.get("ok") is not True
            or (result.get("files"), result.get("dirs"), result.get("bytes")) != (files, dirs, total)):
        print(f"{prog}: {where} did not confirm the whole copy" + ("; nothing was deleted" if move else ""),
              file=sys.stderr)
        return 1
    dest = result.get("dest")
    dest_text = f":{printable(dest)}" if isinstance(dest, str) and dest else ""
    what = ", ".join(p for p in (_count(files, "file", "files") if files else "",
                                 _count(dirs, "directory", "directories") if dirs else "") if p) or "nothing"
    print(f"{prog}: {'moved' if move else 'copied'} {what} ({_human(total)}) to {where}{dest_text}")
    if move:
        return _remove_sources(prog, args.files)
    return 0


def _remove_sources(prog: str, paths: list[str]) -> int:
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as exc:
            print(f"{prog}: copied, but cannot remove {printable(path)}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
