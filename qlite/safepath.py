"""The one way host code touches a tree that a qube can write.

Root inside a qube controls every byte and every name under its private
volume, and may swap any entry for a symlink, a FIFO or a directory at any
moment. Host code therefore never resolves a path inside such a tree the
ordinary way. It starts from a directory it trusts (a file descriptor of a
directory that qlite or podman made and the qube cannot rename), resolves
beneath it with no symlinks at all (``openat2`` with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``, or a component-by-component
``O_NOFOLLOW`` walk on kernels without it), and then acts on the file
descriptor it got: ``fchown``, ``fchmod``, ``*at`` calls relative to it.

Nothing here hands a path inside such a tree to another program. Where one
must see a verified object, ``fd_path`` names it through ``/proc/self/fd``,
which only helps a process that holds the same descriptor (our own system
calls, or a child that inherited it), never a service like podman's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qlite.errors import QliteError

# openat2(2): x86_64 and aarch64 share the generic syscall number.
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
SAFE_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# How deep a copied tree may nest. Each level holds two descriptors open.
MAX_DEPTH = 256
COPY_CHUNK = 1 << 30


class UnsafePath(QliteError):
    """A qube-controlled path is not what host code expected there (a
    symlink, a special file, a path that leaves its root)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


def _openat2(dirfd: int, rel: str, flags: int, mode: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, SAFE_RESOLVE)
    for _ in range(16):  # bounded: EAGAIN means a rename raced the lookup
        fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err), rel)


def _have_openat2() -> bool:
    global _openat2_works
    if _openat2_works is None:
        try:
            os.close(_openat2(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), ".", os.O_PATH, 0))
            _openat2_works = True
        except OSError as exc:
            _openat2_works = exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
    return _openat2_works


def components(rel: str | Path) -> list[str]:
    """The names of REL, a relative path with no '..', '.' or empty parts."""
    text = os.fspath(rel)
    if text.startswith("/"):
        raise UnsafePath(f"{text!r} is not a relative path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{text!r} leaves its directory")
    return parts


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    """The fallback: one component at a time, none of them a symlink."""
    fd = os.dup(dirfd)
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        last = parts[-1] if parts else "."
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(dirfd: int, rel: str | Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor for REL beneath the directory DIRFD, reached through no
    symlink (none in any component, the last one included) and never
    leaving DIRFD. Raises OSError (ELOOP for a symlink) as open(2) would."""
    parts = components(rel)
    if _have_openat2():
        return _openat2(dirfd, "/".join(parts) or ".", flags | os.O_NOFOLLOW, mode)
    return _walk(dirfd, parts, flags, mode)


def open_trusted_dir(path: str | Path) -> int:
    """A descriptor of a directory whose path qlite or podman controls (the
    root of a qube-writable tree). Its last component must not be a symlink."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePath(f"{path}: {exc.strerror}") from None


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """The /proc name of FD: resolves to exactly FD's object, but only for
    this process and children that inherited FD."""
    return f"/proc/self/fd/{fd}"


def lstat_beneath(dirfd: int, rel: str | Path) -> os.stat_result | None:
    """What REL is (a symlink is reported, not followed); None if absent."""
    parts = components(rel)
    if not parts:
        return os.fstat(dirfd)
    try:
        parent = open_beneath(dirfd, "/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    with opened(parent):
        try:
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None


def make_dirs(
    dirfd: int, rel: str | Path, modes: dict[int, int] | None = None, owners: dict[int, tuple[int, int]] | None = None
) -> int:
    """Create REL's directories beneath DIRFD as needed; a descriptor of the
    last. Only directories created here get a mode and owner (MODES and
    OWNERS, by component index, default 0o755 and root): what already
    exists belongs to the qube, and stays as it is. Anything but a
    directory in the way is refused."""
    fd = os.dup(dirfd)
    try:
        for i, name in enumerate(components(rel)):
            created = False
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
            try:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{name!r} in the way is not a directory") from None
                raise
            os.close(fd)
            fd = nxt
            if created:
                uid, gid = (owners or {}).get(i, (0, 0))
                os.fchown(fd, uid, gid)
                os.fchmod(fd, (modes or {}).get(i, 0o755))
        return fd
    except BaseException:
        os.close(fd)
        raise


def chmod_beneath(dirfd: int, rel: str | Path, mode: int) -> None:
    """chmod REL beneath DIRFD, never through a symlink."""
    with opened(open_beneath(dirfd, rel, os.O_PATH)) as fd:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise UnsafePath(f"{os.fspath(rel)!r} is a symlink")
        os.chmod(fd_path(fd), mode)


def remove_beneath(dirfd: int, rel: str | Path) -> bool:
    """Remove REL beneath DIRFD, a directory tree included, without ever
    following a symlink; False if it was not there."""
    parts = components(rel)
    if not parts:
        raise UnsafePath("refusing to remove the root itself")
    try:
        parent = open_beneath(dirfd, "/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    with opened(parent):
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            # rmtree works on descriptors (and refuses symlinks) on Linux.
            with opened(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)) as real:
                shutil.rmtree(parts[-1], dir_fd=real)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    return True


# -- copying a tree ---------------------------------------------------------------


@dataclass
class CopyReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # FIFOs, sockets, devices


def copy_tree(src_fd: int, dst_fd: int, max_depth: int = MAX_DEPTH) -> CopyReport:
    """Copy the contents of directory SRC_FD into the empty directory DST_FD,
    on descriptors only: regular files (content, mode, owner, times, user.*
    xattrs), directories and symlinks (copied as links, never followed).
    FIFOs, sockets and device nodes are skipped. Hard links are copied as
    separate files."""
    report = CopyReport()
    # Each frame: (source dir fd, destination dir fd, names left, path for messages).
    stack: list[tuple[int, int, list[str], str]] = [(os.dup(src_fd), os.dup(dst_fd), sorted(os.listdir(src_fd)), "")]
    try:
        while stack:
            s, d, names, where = stack[-1]
            if not names:
                stack.pop()
                if stack:  # the directory itself: its metadata last, so its mode cannot lock us out
                    _copy_meta(s, d)
                os.close(s)
                os.close(d)
                continue
            name = names.pop()
            rel = f"{where}{name}"
            try:
                st = os.stat(name, dir_fd=s, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone while we copied (a running source)
            if stat.S_ISDIR(st.st_mode):
                if len(stack) > max_depth:
                    raise UnsafePath(f"{rel}: directories nest deeper than {max_depth} levels")
                try:
                    cs = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=s)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        continue  # swapped under us: not copied
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=d)
                    cd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
                except BaseException:
                    os.close(cs)
                    raise
                report.dirs += 1
                stack.append((cs, cd, sorted(os.listdir(cs)), f"{rel}/"))
            elif stat.S_ISREG(st.st_mode):
                report.bytes += _copy_file(s, d, name)
                report.files += 1
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=s)
                os.symlink(target, name, dir_fd=d)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=d, follow_symlinks=False)
                report.symlinks += 1
            else:
                report.skipped.append(rel)
    finally:
        for s, d, _names, _where in stack:
            os.close(s)
            os.close(d)
    return report


def _copy_file(s: int, d: int, name: str) -> int:
    try:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=s)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
            return 0  # swapped for a link or a FIFO under us: not copied
        raise
    with opened(src):
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            return 0
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
        with opened(dst):
            copied = 0
            while True:
                try:
                    n = os.copy_file_range(src, dst, COPY_CHUNK)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = _copy_by_read(src, dst)
                if n == 0:
                    break
                copied += n
            _copy_meta(src, dst, st)
            return copied


def _copy_by_read(src: int, dst: int) -> int:
    data = os.read(src, 1 << 20)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return len(data)


def _copy_meta(src: int, dst: int, st: os.stat_result | None = None) -> None:
    st = st or os.fstat(src)
    with contextlib.suppress(OSError):
        for key in os.listxattr(src):
            if key.startswith("user."):
                os.setxattr(dst, key, os.getxattr(src, key))
    os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
