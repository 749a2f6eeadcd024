"""The guest agent: PID 1 of a VM qube after the initramfs, and the main
process of every container qube (``--serve``, connected to the daemon) and
of every preloaded disposable (``--connect``, for its one command).

In a VM it speaks qlite_guest.channel over the virtio-serial port named
org.qlite.agent: it runs the commands the host sends (stdio and exit code
carried back), tunnels the qube's own RPC calls (/run/qlite/rpc.sock) to
the host's broker, reaps every orphan, and powers the VM off when the
host presses the (ACPI) power button: QMP system_powerdown.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from qlite_guest import channel as ch

PORT_NAME = "org.qlite.agent"
RPC_SOCK = "/run/qlite/rpc.sock"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RB_POWER_OFF = 0x4321FEDC
EV_KEY, KEY_POWER = 1, 116
FORWARDED_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL})


def log(msg: str) -> None:
    with contextlib.suppress(OSError), open("/dev/console", "w") as f:
        f.write(f"qlite-agent: {msg}\n")


def find_port(timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in Path("/sys/class/virtio-ports").glob("*"):
            with contextlib.suppress(OSError):
                if (d / "name").read_text().strip() == PORT_NAME:
                    return f"/dev/{d.name}"
        time.sleep(0.05)
    raise SystemExit(f"no virtio port named {PORT_NAME}")


def setup_mounts() -> None:
    for target, fstype, opts in (("/dev/pts", "devpts", "mode=620,ptmxmode=666"), ("/dev/shm", "tmpfs", "mode=1777")):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", fstype, "-o", opts, fstype, target], check=False)
    with contextlib.suppress(OSError):
        os.symlink("/proc/self/fd", "/dev/fd")
    os.makedirs("/run/qlite", exist_ok=True)


class Link:
    """The port: one writer lock, frames in and out."""

    def __init__(self, path: str = "", fd: int = -1):
        self.fd = os.open(path, os.O_RDWR) if path else fd
        self.lock = threading.Lock()

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        data = ch.encode(kind, channel, payload)
        with self.lock, contextlib.suppress(OSError):  # a link that is gone: its reader ends the sessions
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

    def send_json(self, kind: int, channel: int, obj: dict) -> None:
        self.send(kind, channel, json.dumps(obj, separators=(",", ":")).encode())


class Reaper:
    """PID 1 reaps every child; sessions wait for theirs here."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.codes: dict[int, int] = {}
        self.watched: set[int] = set()
        # With no child, wait(2) fails at once. As PID 1 of a VM, orphans
        # may be handed to us at any time, so look again now and then; in a
        # container the init process reaps orphans, and an idle agent must
        # not wake at all (dozens of qubes idle on one laptop).
        self.idle_poll: float | None = 1.0

    @contextlib.contextmanager
    def spawning(self):
        """Hold the reaper's lock from fork to watch: a command that exits
        at once is reaped by run() only after its pid is watched, so its
        status is never thrown away (and wait() never waits forever)."""
        with self.cond:
            yield self.watched.add
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                with self.cond:
                    if self.watched <= self.codes.keys():  # nothing of ours left to reap
                        self.cond.wait(self.idle_poll)
                continue
            with self.cond:
                if pid in self.watched:
                    self.codes[pid] = os.waitstatus_to_exitcode(status)
                    self.cond.notify_all()

    def drain(self, timeout: float = 5.0) -> None:
        """Before exiting: let the sessions collect their children."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.watched and time.monotonic() < deadline:
                self.cond.wait(0.1)

    def wait(self, pid: int) -> int:
        with self.cond:
            while pid not in self.codes:
                self.cond.wait()
            self.watched.discard(pid)
            code = self.codes.pop(pid)
        return 128 - code if code < 0 else code


REAPER = Reaper()


class Agent:
    def __init__(self, link: Link):
        self.link = link
        self.reaper = REAPER
        self.inputs: dict[int, queue.Queue] = {}  # channel -> stdin chunks / rpc data
        self.pids: dict[int, int] = {}  # exec channel -> its process (group leader)
        self.terminals: dict[int, int] = {}  # exec channel -> its pty's primary side
        self.next_channel = 1
        self.lock = threading.Lock()

    # -- the host's frames -----------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self.reaper.run, daemon=True).start()
        threading.Thread(target=self.rpc_listener, daemon=True).start()
        threading.Thread(target=watch_power_button, daemon=True).start()
        self.link.send_json(ch.HELLO, 0, {"version": ch.VERSION})
        self.read_frames(persistent=True)

    def read_frames(self, persistent: bool) -> None:
        """Dispatch the host's frames. The VM's port reads empty while the
        host is not connected (PERSISTENT); a socket's end is its end."""
        decoder = ch.Decoder()
        while True:
            try:
                data = os.read(self.link.fd, ch.MAX_PAYLOAD + ch.HEADER.size)
            except OSError:
                data = b""
            if not data:
                if not persistent:
                    for channel in list(self.pids):
                        self.dispatch(ch.CLOSE, channel, b"")
                    return
                time.sleep(0.05)  # the host end is not connected
                continue
            try:
                frames = decoder.feed(data)
            except ch.ChannelError as exc:
                log(f"bad frame from the host: {exc}")
                decoder = ch.Decoder()
                continue
            for kind, channel, payload in frames:
                self.dispatch(kind, channel, payload)

    def dispatch(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == ch.PING:
            self.link.send(ch.PONG, channel, payload)
        elif kind == ch.OPEN:
            self.open(channel, payload)
        elif kind in (ch.STDIN, ch.DATA):
            q = self.inputs.get(channel)
            if q is not None:
                q.put(payload)
        elif kind == ch.SIGNAL:
            self.signal(channel, payload)
        elif kind == ch.RESIZE:
            fd = self.terminals.get(channel)
            if fd is not None:
                with contextlib.suppress(ch.ChannelError, OSError):
                    set_size(fd, *ch.validate_size(ch.decode_json(payload)))
        elif kind == ch.CLOSE:
            q = self.inputs.get(channel)
            if q is not None:
                q.put(None)
            pid = self.pids.get(channel)
            if pid is not None:  # the host side went away: end what it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def signal(self, channel: int, payload: bytes) -> None:
        """The host's Ctrl-C (or its escalation) for the command on CHANNEL:
        to its whole process group, as a terminal sends it."""
        try:
            sig = ch.decode_json(payload).get("signal")
        except ch.ChannelError:
            return
        pid = self.pids.get(channel)
        if pid is not None and type(sig) is int and sig in FORWARDED_SIGNALS:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)

    def open(self, channel: int, payload: bytes) -> None:
        try:
            req = ch.validate_exec(ch.decode_json(payload))
        except ch.ChannelError as exc:
            self.link.send_json(ch.ERROR, channel, {"message": str(exc)})
            return
        self.inputs[channel] = queue.Queue()
        threading.Thread(target=self.run_exec, args=(channel, req), daemon=True).start()

    # -- commands ------------------------------------------------------------------

    def run_exec(self, channel: int, req: dict) -> None:
        try:
            code = self._exec(channel, req)
            self.link.send_json(ch.EXIT, channel, {"code": code})
        except Exception as exc:  # noqa: BLE001 - the channel must get an answer
            self.link.send_json(ch.ERROR, channel, {"message": f"{req['argv'][0]}: {exc}"})
        finally:
            self.inputs.pop(channel, None)
            self.pids.pop(channel, None)

    def _exec(self, channel: int, req: dict) -> int:
        try:
            pw = pwd.getpwnam(req["user"])
        except KeyError:
            raise RuntimeError(f"no user {req['user']!r} in this qube") from None
        env = {**BASE_ENV, "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, **req["env"]}
        cwd = req["cwd"] if os.path.isdir(req["cwd"]) else "/"
        if req["tty"]:
            return self._exec_tty(channel, req, pw, env, cwd)
        try:
            become(pw.pw_uid, pw.pw_gid)
            with self.reaper.spawning() as watch:
                proc = subprocess.Popen(
                    req["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=cwd, env=env, start_new_session=True,
                )
                watch(proc.pid)
        except FileNotFoundError:
            self.link.send(ch.STDERR, channel, f"{req['argv'][0]}: command not found\n".encode())
            self.link.send(ch.STDOUT, channel)
            self.link.send(ch.STDERR, channel)
            return 127
        self.pids[channel] = proc.pid
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=self.pump_out, args=(channel, f.fileno(), kind), daemon=True)
                   for f, kind in ((proc.stdout, ch.STDOUT), (proc.stderr, ch.STDERR))]
        for t in readers:
            t.start()
        threading.Thread(target=self.pump_in, args=(channel, proc.stdin.fileno()), daemon=True).start()
        code = self.reaper.wait(proc.pid)
        for t in readers:
            t.join(timeout=30)
        return code

    def _exec_tty(self, channel: int, req: dict, pw, env: dict, cwd: str) -> int:
        primary, secondary = os.openpty()
        env.setdefault("TERM", "xterm-256color")
        if "rows" in req:
            with contextlib.suppress(OSError):
                set_size(primary, req["rows"], req["cols"])

        def ctty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            with self.reaper.spawning() as watch:
                proc = subprocess.Popen(
                    req["argv"], stdin=secondary, stdout=secondary, stderr=secondary, cwd=cwd, env=env,
                    user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], start_new_session=True, preexec_fn=ctty,
                )
                watch(proc.pid)
        finally:
            os.close(secondary)
        self.pids[channel] = proc.pid
        self.terminals[channel] = primary
        reader = threading.Thread(target=self.pump_out, args=(channel, primary, ch.STDOUT, False), daemon=True)
        reader.start()
        threading.Thread(target=self.pump_in, args=(channel, os.dup(primary)), daemon=True).start()
        code = self.reaper.wait(proc.pid)
        reader.join(timeout=5)
        self.link.send(ch.STDOUT, channel)
        self.link.send(ch.STDERR, channel)
        self.terminals.pop(channel, None)
        with contextlib.suppress(OSError):
            os.close(primary)
        return code

    def pump_out(self, channel: int, fd: int, kind: int, send_eof: bool = True) -> None:
        try:
            while True:
                data = os.read(fd, ch.MAX_PAYLOAD)
                if not data:
                    break
                self.link.send(kind, channel, data)
        except OSError:
            pass  # a pty reads EIO once its last writer is gone
        if send_eof:
            self.link.send(kind, channel)

    def pump_in(self, channel: int, fd: int) -> None:
        q = self.inputs.get(channel)
        try:
            while q is not None:
                data = q.get()
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
        except OSError:
            pass  # the command closed its stdin
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the qube's RPC calls, tunnelled to the host ----------------------------------

    def rpc_listener(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(RPC_SOCK)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(RPC_SOCK)
        os.chmod(RPC_SOCK, 0o666)
        srv.listen(64)
        while True:
            conn, _ = srv.accept()
            with self.lock:
                channel = self.next_channel
                self.next_channel += 2
            self.inputs[channel] = queue.Queue()
            threading.Thread(target=self.tunnel, args=(channel, conn), daemon=True).start()

    def tunnel(self, channel: int, conn: socket.socket) -> None:
        self.link.send_json(ch.OPEN, channel, {"kind": "rpc"})
        q = self.inputs[channel]

        def to_host() -> None:
            try:
                while True:
                    data = conn.recv(ch.MAX_PAYLOAD)
                    self.link.send(ch.DATA, channel, data)
                    if not data:
                        return
            except OSError:
                self.link.send(ch.DATA, channel)

        up = threading.Thread(target=to_host, daemon=True)
        up.start()
        try:
            while True:
                data = q.get()
                if not data:
                    break
                conn.sendall(data)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            up.join()
        except OSError:
            pass
        finally:
            conn.close()
            self.inputs.pop(channel, None)
            self.link.send(ch.CLOSE, channel)


SYS_SETGROUPS, SYS_SETRESGID, SYS_SETRESUID = 116, 119, 117  # x86-64
_libc = None


def become(uid: int, gid: int) -> None:
    """Make this thread, and only it, UID:GID with no supplementary groups,
    for good: the command it then starts inherits that. Subprocess would
    switch in the child instead, which rules out vfork and costs a full
    fork of the agent (~25 ms in gVisor). The raw system calls act on the
    calling thread alone (libc's own wrappers change every thread); a
    session's thread ends with its session."""
    global _libc
    if uid == os.getuid() and gid == os.getgid():
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    for call, args in ((SYS_SETGROUPS, (0, None)), (SYS_SETRESGID, (gid, gid, gid)), (SYS_SETRESUID, (uid, uid, uid))):
        if _libc.syscall(call, *args) != 0:
            raise OSError(ctypes.get_errno(), "cannot switch to the command's user")


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def watch_power_button() -> None:
    """Power off on KEY_POWER from any input device (the ACPI button)."""
    event = struct.Struct("llHHi")  # struct input_event on x86-64
    fds = []
    for path in sorted(Path("/dev/input").glob("event*")):
        with contextlib.suppress(OSError):
            fds.append(os.open(path, os.O_RDONLY))
    if not fds:
        log("no input device: the power button will not work")
        return
    while True:
        ready, _, _ = select.select(fds, [], [])
        for fd in ready:
            data = os.read(fd, event.size * 16)
            for i in range(0, len(data) - event.size + 1, event.size):
                _s, _us, etype, code, value = event.unpack_from(data, i)
                if etype == EV_KEY and code == KEY_POWER and value == 1:
                    poweroff()


def poweroff() -> None:
    os.sync()
    for target in ("/home/user", "/rw"):
        subprocess.run(["umount", target], check=False, capture_output=True)
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_POWER_OFF)


def serve_host(path: str, timeout: float = 60.0) -> None:
    """In a container (a preloaded disposable): connect to the host's
    socket for this qube and run the one command that will come on it.
    (A socket a sandbox creates is not visible on the host; one the host
    created can be connected to from inside.)"""
    threading.Thread(target=REAPER.run, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                sys.exit(f"qlite-agent: nothing listens on {path}")
            time.sleep(0.02)
    with s:
        agent = Agent(Link(fd=s.fileno()))
        agent.link.send_json(ch.HELLO, 0, {"version": ch.VERSION})  # the host keeps only greeted connections
        agent.read_frames(persistent=False)
    REAPER.drain()


def serve_forever(path: str) -> None:
    """The main process of a container qube: connect to the host's socket
    for this qube (the daemon's), serve the commands that come on it, and
    when the daemon goes away (restarted, upgraded) end what it started
    and connect again. Backs off to a try a second, so a qube whose daemon
    is stopped costs next to nothing."""
    REAPER.idle_poll = None  # the container's init reaps orphans
    threading.Thread(target=REAPER.run, daemon=True).start()
    pause = 0.02
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            continue
        pause = 0.02
        with s:
            agent = Agent(Link(fd=s.fileno()))
            try:
                agent.link.send_json(ch.HELLO, 0, {"version": ch.VERSION})
                agent.read_frames(persistent=False)
            except OSError:
                for channel in list(agent.pids):
                    agent.dispatch(ch.CLOSE, channel, b"")


def _ignore(_signum: int, _frame: object) -> None:
    """The agent outlives these signals. A handler, not SIG_IGN: an ignored
    signal stays ignored in the commands the agent starts, and then the
    host's Ctrl-C could not stop them."""


def _defaults_for_commands() -> None:
    """The commands the agent starts inherit an ignored signal as ignored
    (subprocess resets only SIGPIPE and SIGXFSZ), and then the host could
    not stop them with it. Whatever started the agent (a shell's background
    job, nohup) may have ignored some: the agent handles them instead."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--connect":
        _defaults_for_commands()
        serve_host(sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _defaults_for_commands()
        serve_forever(sys.argv[2])
        return
    if os.getpid() != 1:
        sys.exit("qlite-agent runs as PID 1 in a VM qube")
    _defaults_for_commands()
    signal.signal(signal.SIGTERM, _ignore)
    setup_mounts()
    Agent(Link(find_port())).serve()


if __name__ == "__main__":
    main()
