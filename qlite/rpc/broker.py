"""The RPC broker inside ``qlite daemon``.

One listening socket per running qube (``run/rpc/<qube>/rpc.sock``, which
the qube sees as ``/run/qlite/rpc.sock``): the socket a call arrives on is
the caller's identity. Each call is evaluated against the policy, perhaps
asked about, and then run in its target with stdio joined; see docs/rpc.md.

The broker also holds each running container qube's agent link: the agent
connects to ``agent.sock`` beside ``rpc.sock``, and host clients reach it
through ``run/agents/<qube>.sock`` (qlite.agent.mux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import selectors
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from qlite.agent.mux import AgentMux
from qlite.domain.context import Clock, Context
from qlite.domain.model import Qube, State
from qlite.domain.ports import PolicyFacts, RpcTargets
from qlite.domain.spec import AGENT_LABEL, AGENT_SOCKET
from qlite.engines.base import Stdio
from qlite.errors import AccessDenied, NotRunning, QliteError
from qlite.host.clock import SYSTEM_CLOCK
from qlite.paths import Paths
from qlite.rpc import audit, wire
from qlite.rpc.asks import Approvals, AskQueue, TooManyAsks
from qlite.rpc.policy import (
    Policy,
    QubeFacts,
    Request,
    Resolution,
    System,
    answer_ask,
    evaluate,
    load_policy,
    policy_dirs,
    tokens,
)
from qlite.state.qubes import Features

DISPATCH = "/usr/lib/qlite/qubes-rpc-dispatch"
SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
ARGUMENT_RE = re.compile(r"[A-Za-z0-9._+-]{0,256}")
TARGET_RE = re.compile(r"@?[A-Za-z0-9._:@-]{1,80}")
# The whole first frame must arrive within this, however slowly it trickles.
REQUEST_TIMEOUT_S = 10.0
# Connections one qube may have open at once (each holds a thread, and
# three more while its service runs). Above qlite-connect-tcp's 64, so that
# a busy tunnel still leaves room for the qube's other calls.
MAX_CONNECTIONS_PER_QUBE = 96
DEFAULT_ASK_TIMEOUT_S = 60.0
# How long a "yes" to an ask stands, per service, unless the calling qube's
# feature autoaccept.<service> says otherwise. 300 s is Qubes' split-GPG
# default (QUBES_GPG_AUTOACCEPT); everything else asks every time.
AUTOACCEPT_DEFAULTS = {"qubes.Gpg": 300.0}
SOCKET_NAME = "rpc.sock"  # in each qube's RPC directory; /run/qlite/rpc.sock inside it


def autoaccept_window(ctx: Context, source: str, service: str) -> float:
    text = Features(ctx.store).all(source).get(f"autoaccept.{service}")
    if text is None:
        return AUTOACCEPT_DEFAULTS.get(service, 0.0)
    try:
        return max(0.0, float(text))
    except ValueError:
        return 0.0


def system_snapshot(qm: PolicyFacts) -> System:
    """What policy evaluation needs to know about every qube, frozen now."""
    facts = {}
    for q in qm.list():
        facts[q.name] = QubeFacts(
            name=q.name,
            klass=q.klass,
            tags=frozenset(q.tags),
            default_dispvm=qm.resolved_default_dispvm(q),
            template_for_dispvms=q.template_for_dispvms,
            uuid=q.uuid,
        )
    return System(qubes=facts)


def evaluate_call(paths: Paths, qubes: PolicyFacts, request: Request) -> tuple[Resolution, Policy]:
    policy = load_policy(policy_dirs(paths))
    return evaluate(policy, system_snapshot(qubes), request), policy


# -- services the host itself answers (target dom0) -----------------------------


def _get_date(stdio: Stdio) -> int:
    stdio.stdout.write(time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()).encode() + b"\n")
    return 0


HOST_SERVICES: dict[str, Callable[[Stdio], int]] = {"qubes.GetDate": _get_date}


class Call:
    """One connection from a qube, handled in its own thread."""

    def __init__(self, broker: Broker, conn: socket.socket, source: str) -> None:
        self.broker = broker
        self.conn = conn
        self.source = source
        self.send_lock = threading.Lock()
        self.decoder = wire.Decoder()
        self.backlog: list[tuple[int, bytes]] = []
        self.record: dict = {"source": source}

    def send(self, kind: int, payload: bytes = b"") -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.sendall(wire.encode(kind, payload))

    def send_json(self, kind: int, obj: dict) -> None:
        self.send(kind, json.dumps(obj, separators=(",", ":")).encode())

    def run(self) -> None:
        try:
            self._run()
        except wire.WireError as exc:
            self.send_json(wire.ERROR, {"message": str(exc)})
            self._audit(decision="error", reason=str(exc))
        except QliteError as exc:
            self.send_json(wire.ERROR, {"message": str(exc)})
            self._audit(decision="error", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - one call must never take the broker down
            traceback.print_exc()
            self.send_json(wire.ERROR, {"message": f"internal error: {exc}"})
        finally:
            with contextlib.suppress(OSError):
                self.conn.close()

    def _request(self) -> Request:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            frame = wire.recv_frame(self.conn, self.decoder, self.backlog, deadline)
        except TimeoutError:
            raise wire.WireError(f"no request within {REQUEST_TIMEOUT_S:.0f}s") from None
        if frame is None:
            raise wire.WireError("connection closed before a request")
        kind, payload = frame
        if kind != wire.REQUEST:
            raise wire.WireError("the first frame must be a REQUEST")
        req = wire.decode_json(payload, wire.MAX_REQUEST)
        service, argument, target = (req.get(k, "") for k in ("service", "argument", "target"))
        if not all(isinstance(v, str) for v in (service, argument, target)):
            raise wire.WireError("service, argument and target must be strings")
        if "+" in service and not argument:
            service, _, argument = service.partition("+")
        if not SERVICE_RE.fullmatch(service):
            raise wire.WireError(f"invalid service name {service[:80]!r}")
        if not ARGUMENT_RE.fullmatch(argument):
            raise wire.WireError(f"invalid service argument {argument[:80]!r}")
        target = target or "@default"
        if not TARGET_RE.fullmatch(target):
            raise wire.WireError(f"invalid target {target[:80]!r}")
        # Whatever the caller claims about itself ("source") is ignored.
        self.conn.settimeout(None)
        self.record.update(service=service, argument=argument, target=target)
        return Request(service=service, argument=argument, source=self.source, target=target)

    def _run(self) -> None:
        request = self._request()
        ctx = Context(self.broker.paths)
        ctx.on_warning = lambda m: self.broker.log(f"{self.source}: {m}")
        qubes = self.broker.lifecycle(ctx)
        resolution, _policy = evaluate_call(self.broker.paths, qubes, request)
        if resolution.action == "ask":
            resolution = self._ask(request, resolution, ctx, qubes)
        self._audit(
            decision=resolution.action,
            resolved=resolution.target,
            reason=resolution.reason,
            rule=f"{resolution.rule.file}:{resolution.rule.line}" if resolution.rule else None,
        )
        if resolution.action != "allow" or resolution.target is None:
            self.send_json(wire.RESULT, {"result": "deny", "code": wire.EXIT_REFUSED, "message": resolution.reason})
            return
        code = self._execute(request, resolution, qubes)
        self._audit(decision="done", resolved=resolution.target, exit=code)
        self.send_json(wire.EXIT, {"code": code})

    def _ask(self, request: Request, resolution: Resolution, ctx: Context, qubes: RpcTargets) -> Resolution:
        approvals = self.broker.approvals
        system = system_snapshot(qubes)
        key = (system.identity(request.source), request.service, request.target)
        remembered = approvals.lookup(*key)
        if (
            remembered is not None
            and remembered.chosen in resolution.choices
            and system.identity(remembered.chosen) == remembered.chosen_id
        ):
            try:
                allowed = answer_ask(resolution, remembered.chosen, system)
            except AccessDenied:
                pass
            else:
                until = time.strftime("%H:%M:%S", time.localtime(remembered.until))
                return _with_reason(allowed, f"auto-accepted: approved earlier, until {until}")
        try:
            ask = self.broker.asks.add(
                request.source,
                request.service,
                request.argument,
                request.target,
                resolution.choices,
                resolution.target,
                self.broker.ask_timeout,
            )
        except TooManyAsks as exc:
            return _with_reason(_denied(resolution), str(exc))
        self._audit(decision="asking", ask=ask.id, choices=list(resolution.choices))
        allow, chosen = self.broker.asks.wait(ask)
        if not allow or chosen is None:
            reason = "the user said no" if ask.answered.is_set() else "nobody answered in time"
            return Resolution(
                action="deny",
                target=None,
                choices=(),
                user=None,
                notify=False,
                autostart=False,
                rule=resolution.rule,
                reason=reason,
            )
        system = system_snapshot(qubes)  # the answer came later: who is who now
        if system.identity(request.source) != key[0]:
            return _with_reason(_denied(resolution), f"{request.source} was replaced while the question was open")
        try:
            allowed = answer_ask(resolution, chosen, system)
        except AccessDenied as exc:
            return Resolution(
                action="deny",
                target=None,
                choices=(),
                user=None,
                notify=False,
                autostart=False,
                rule=resolution.rule,
                reason=str(exc),
            )
        approvals.remember(
            *key, chosen, system.identity(chosen), autoaccept_window(ctx, request.source, request.service)
        )
        return allowed

    # -- running the service -------------------------------------------------------

    def _execute(self, request: Request, resolution: Resolution, qubes: RpcTargets) -> int:
        target = resolution.target or ""
        full = request.service + (f"+{request.argument}" if request.argument else "")
        env = {
            "QREXEC_REMOTE_DOMAIN": request.source,
            "QREXEC_SERVICE_ARGUMENT": request.argument,
            "QREXEC_SERVICE_FULL_NAME": full,
        }
        argv = [DISPATCH, request.service, *([request.argument] if request.argument else [])]
        match tokens.parse_word(target):  # evaluate resolves to dom0, @dispvm:NAME or a qube
            case tokens.Dom0():
                handler = HOST_SERVICES.get(request.service)
                self.send_json(wire.RESULT, {"result": "allow", "target": "dom0"})
                if handler is None:
                    return self._bridge(lambda stdio: _no_host_service(stdio, request.service))
                return self._bridge(handler)
            case tokens.DispVMName(base=base):
                return self._in_disposable(base, argv, env, resolution, qubes)
            case tokens.QubeName(name=name):
                return self._in_qube(name, argv, env, resolution, qubes)
            case other:
                raise AccessDenied(f"policy resolved to {other}, which is not a qube")

    def _in_qube(
        self, target: str, argv: list[str], env: dict[str, str], resolution: Resolution, qm: RpcTargets
    ) -> int:
        q = qm.get(target)
        # A qube whose agent holds its link runs: no engine round trip.
        if not self.broker.agent_linked(target) and qm.state_of(q) != State.RUNNING:
            if not resolution.autostart:
                raise NotRunning(f"{target} is not running and the policy says autostart=no")
            qm.start(target, skip_if_running=True)
        self.send_json(wire.RESULT, {"result": "allow", "target": target})
        user = resolution.user or q.default_user
        return self._bridge(lambda stdio: qm.exec_in(q, argv, stdio, user, env))

    def _in_disposable(
        self, dvm: str, argv: list[str], env: dict[str, str], resolution: Resolution, qubes: RpcTargets
    ) -> int:
        def created(q: Qube) -> None:
            self.record["disposable"] = q.name
            self.send_json(wire.RESULT, {"result": "allow", "target": q.name})

        return self._bridge(
            lambda stdio: qubes.run_disposable(argv, stdio, dvm=dvm, user=resolution.user, env=env, on_created=created)
        )

    def _bridge(self, runner: Callable[[Stdio], int]) -> int:
        """Run RUNNER with its stdio joined to this connection's frames."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdio = Stdio(
            stdin=open(in_r, "rb", buffering=0),
            stdout=open(out_w, "wb", buffering=0),
            stderr=open(err_w, "wb", buffering=0),
        )
        feeder = threading.Thread(target=self._feed_stdin, args=(in_w,), daemon=True)
        readers = [
            threading.Thread(target=self._drain, args=(fd, kind), daemon=True)
            for fd, kind in ((out_r, wire.STDOUT), (err_r, wire.STDERR))
        ]
        for t in (feeder, *readers):
            t.start()
        try:
            return runner(stdio)
        finally:
            for f in (stdio.stdin, stdio.stdout, stdio.stderr):
                with contextlib.suppress(OSError):
                    if f is not None:
                        f.close()
            for t in readers:
                t.join(timeout=30)

    def _feed_stdin(self, fd: int) -> None:
        try:
            while True:
                frame = wire.recv_frame(self.conn, self.decoder, self.backlog)
                if frame is None:
                    return
                kind, payload = frame
                if kind != wire.STDIN:
                    raise wire.WireError(f"unexpected frame type {kind:#x} after the request")
                if not payload:
                    return
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
        except wire.WireError as exc:
            self.send_json(wire.ERROR, {"message": str(exc)})
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the service closed its stdin, or the caller went away
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _drain(self, fd: int, kind: int) -> None:
        try:
            while True:
                data = os.read(fd, wire.MAX_PAYLOAD)
                if not data:
                    break
                self.send(kind, data)
        finally:
            os.close(fd)
            self.send(kind, b"")

    def _audit(self, **fields: object) -> None:
        audit.append(self.broker.paths.rpc_log, {**self.record, **{k: v for k, v in fields.items() if v is not None}})


def _with_reason(resolution: Resolution, reason: str) -> Resolution:
    return dataclasses.replace(resolution, reason=reason)


def _denied(resolution: Resolution) -> Resolution:
    return dataclasses.replace(
        resolution, action="deny", target=None, choices=(), user=None, notify=False, autostart=False
    )


def _no_host_service(stdio: Stdio, service: str) -> int:
    stdio.stderr.write(f"dom0 has no service {service}\n".encode())
    return wire.EXIT_NO_SERVICE


class Broker:
    """Listening sockets for running qubes and the admin socket."""

    def __init__(
        self,
        paths: Paths,
        lifecycle: Callable[[Context], RpcTargets],
        ask_timeout: float = DEFAULT_ASK_TIMEOUT_S,
        log: Callable[[str], None] = print,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.paths = paths
        self.lifecycle = lifecycle  # the qubes of one call (the daemon gives qlite.core.lifecycle.Lifecycle)
        self.ask_timeout = ask_timeout
        self.clock = clock
        self.asks = AskQueue(clock)
        self.approvals = Approvals(clock)
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[str, socket.socket] = {}
        self.agents: dict[str, tuple[AgentMux, socket.socket, socket.socket]] = {}  # mux, agent's, clients'
        self._with_agent: set[str] = set()  # running qubes whose main process is the agent
        self._bound_for: dict[str, str] = {}  # qube -> the container its listener was made for
        self.ctx = Context(paths)
        self._rescans: list[threading.Event] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self.stopping = threading.Event()
        self._active: dict[str, int] = {}  # qube -> its connections whose handler runs
        self._refusing: set[str] = set()  # qubes over their cap, told to the log already
        self._trouble: dict[str, str] = {}  # qube -> why it has no listener, as last logged

    # -- sockets ----------------------------------------------------------------

    def open_admin(self) -> None:
        path = self.paths.admin_sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = _bind(path, 0o600)
        self.sel.register(s, selectors.EVENT_READ, ("admin", None))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def running_qubes(self) -> dict[str, str]:
        """Running qubes by name, each with its container's id."""
        found = self.ctx.engine.list_containers({"qlite.home": self.ctx.home_hash})
        running = {
            c.labels.get("qlite.qube", ""): c
            for c in found
            if c.state == "running" and c.labels.get("qlite.kind") in ("app", "disp")
        }
        self._with_agent = {name for name, c in running.items() if c.labels.get(AGENT_LABEL) == "1"}
        return {name: c.id for name, c in running.items()}

    def rescan(self) -> None:
        try:
            running = self.running_qubes()
        except QliteError as exc:
            self.log(f"rescan failed: {exc}")
            return
        # A name whose container changed is another run, maybe another qube
        # under an old name: it gets a socket of its own, never the old one.
        for name in [n for n in self.listeners if n in running and self._bound_for.get(n) != running[n]]:
            self._drop_listener(name)
        for name in sorted(set(running) - set(self.listeners)):
            try:
                s = self._listen(name)
            except (OSError, QliteError) as exc:
                # Whatever one qube put in its directory, the others get their listeners.
                self._no_listener(name, f"cannot listen for {name}: {exc}")
                continue
            if s is None:
                continue
            self._trouble.pop(name, None)
            self.listeners[name] = s
            self._bound_for[name] = running[name]
            self.sel.register(s, selectors.EVENT_READ, ("qube", name))
            try:
                if name in self._with_agent:
                    self._host_agent(name)
            except OSError as exc:
                self._no_listener(name, f"cannot listen for {name}'s agent: {exc}")
        for name in set(self._trouble) - set(running):
            del self._trouble[name]
        for name in set(self.listeners) - set(running):
            self._drop_listener(name)

    def _drop_listener(self, name: str) -> None:
        s = self.listeners.pop(name)
        self._bound_for.pop(name, None)
        self.sel.unregister(s)
        s.close()
        with contextlib.suppress(OSError):
            (self.paths.rpc_dir(name) / SOCKET_NAME).unlink()
        self._drop_agent(name)

    def _host_agent(self, name: str) -> None:
        """Listen for NAME's agent in its RPC directory (root in the qube
        only), and for host clients of it in qlite's own run directory."""
        dirfd = os.open(self.paths.rpc_dir(name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._clear_socket_name(name, dirfd, AGENT_SOCKET)
            agent = _bind_at(dirfd, AGENT_SOCKET, 0o600)
        finally:
            os.close(dirfd)
        try:
            path = self.paths.agent_client_sock(name)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            clients = _bind(path, 0o600)
        except OSError:
            agent.close()
            raise
        mux = AgentMux(name, self.log)
        self.agents[name] = (mux, agent, clients)
        self.sel.register(agent, selectors.EVENT_READ, ("agent", name))
        self.sel.register(clients, selectors.EVENT_READ, ("agent-client", name))

    def _drop_agent(self, name: str) -> None:
        host = self.agents.pop(name, None)
        if host is None:
            return
        mux, agent, clients = host
        for s in (agent, clients):
            self.sel.unregister(s)
            s.close()
        mux.close()
        with contextlib.suppress(OSError):
            (self.paths.rpc_dir(name) / AGENT_SOCKET).unlink()
        with contextlib.suppress(OSError):
            self.paths.agent_client_sock(name).unlink()

    def _listen(self, name: str) -> socket.socket | None:
        """A listener in NAME's RPC directory (None: it has none). The qube's
        root controls what is in there: nothing in it is followed."""
        try:
            # The directory itself is the qube's mount point: qlite's, not the qube's.
            dirfd = os.open(self.paths.rpc_dir(name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None  # a qube started by an older qlite: no mount for it
        try:
            self._clear_socket_name(name, dirfd)
            return _bind_at(dirfd, SOCKET_NAME, 0o666)  # the qube's user connects; only it sees this directory
        finally:
            os.close(dirfd)

    def _clear_socket_name(self, name: str, dirfd: int, socket_name: str = SOCKET_NAME) -> None:
        try:
            st = os.stat(socket_name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        what = _describe(st.st_mode)
        try:
            # rmdir, never a tree walk: a qube's deep tree must not stall the loop.
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(socket_name, dir_fd=dirfd)
            else:
                os.unlink(socket_name, dir_fd=dirfd)
        except OSError as exc:
            raise OSError(exc.errno, f"{socket_name} is {what} that cannot be removed ({exc.strerror})") from None
        if not stat.S_ISSOCK(st.st_mode):  # an old socket is expected; anything else is the qube's doing
            self.log(f"{name}: removed {what} in the place of {socket_name}")

    def _no_listener(self, name: str, message: str) -> None:
        """Log MESSAGE, unless it is what the last rescan said about NAME."""
        if self._trouble.get(name) != message:
            self._trouble[name] = message
            self.log(message)

    def request_rescan(self, timeout: float = 10.0) -> None:
        """From another thread: rescan now, and wait until it is done."""
        done = threading.Event()
        with self._lock:
            self._rescans.append(done)
        os.write(self._wake_w, b"x")
        done.wait(timeout)

    # -- the loop -------------------------------------------------------------------

    def serve(self, rescan_every: float = 2.0) -> None:
        self.open_admin()
        self.rescan()
        next_scan = time.monotonic() + rescan_every
        while not self.stopping.is_set():
            for key, _ in self.sel.select(timeout=max(0.0, next_scan - time.monotonic())):
                kind, name = key.data
                if kind == "wake":
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        waiting, self._rescans = self._rescans, []
                    self.rescan()
                    for done in waiting:
                        done.set()
                    continue
                listener = key.fileobj
                assert isinstance(listener, socket.socket)  # only the wake pipe is not one
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                if kind == "admin":
                    threading.Thread(target=self._admin, args=(conn,), daemon=True).start()
                elif kind in ("agent", "agent-client"):
                    self._agent_connection(kind, name, conn)
                else:
                    self._start_call(conn, name)
            if time.monotonic() >= next_scan:
                self.rescan()
                next_scan = time.monotonic() + rescan_every
        self.close()

    def agent_linked(self, name: str) -> bool:
        """Whether running qube NAME's agent is connected now."""
        host = self.agents.get(name)
        return host is not None and host[0].link is not None

    def _agent_connection(self, kind: str, name: str, conn: socket.socket) -> None:
        host = self.agents.get(name)
        if host is None:
            conn.close()
            return
        mux = host[0]
        if kind == "agent" and not mux.may_greet():
            conn.close()  # a flood of connections from the qube: only a few may wait to greet
            return
        target = mux.agent_connected if kind == "agent" else mux.client
        try:
            threading.Thread(target=target, args=(conn,), daemon=True).start()
        except RuntimeError as exc:
            conn.close()
            self.log(f"cannot serve {name}'s agent: {exc}")

    def close(self) -> None:
        for name in list(self.agents):
            self._drop_agent(name)
        for name, s in list(self.listeners.items()):
            s.close()
            with contextlib.suppress(OSError):
                (self.paths.rpc_dir(name) / SOCKET_NAME).unlink()
        self.listeners.clear()
        with contextlib.suppress(OSError):
            self.paths.admin_sock.unlink()

    # -- connections per qube ---------------------------------------------------------

    def _start_call(self, conn: socket.socket, source: str) -> None:
        """Serve CONN in a thread of its own, unless SOURCE is at its cap."""
        if not self._claim(source):
            self._refuse(conn, source)
            return
        try:
            threading.Thread(target=self._serve_call, args=(conn, source), daemon=True).start()
        except RuntimeError as exc:  # out of threads: this call fails, the broker goes on
            self._release(source)
            conn.close()
            self.log(f"cannot serve a call from {source}: {exc}")

    def _serve_call(self, conn: socket.socket, source: str) -> None:
        try:
            Call(self, conn, source).run()
        finally:
            self._release(source)

    def _claim(self, source: str) -> bool:
        with self._lock:
            active = self._active.get(source, 0)
            if active >= MAX_CONNECTIONS_PER_QUBE:
                return False
            self._active[source] = active + 1
            return True

    def _release(self, source: str) -> None:
        with self._lock:
            active = self._active.pop(source) - 1
            if active:
                self._active[source] = active
            else:
                self._refusing.discard(source)  # the flood is over: log the next one

    def _refuse(self, conn: socket.socket, source: str) -> None:
        """Answer one line and close, from the loop itself: no thread, no waiting."""
        message = f"too many connections from {source}: at most {MAX_CONNECTIONS_PER_QUBE} at once"
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(wire.encode_json(wire.ERROR, {"message": message}))
        conn.close()
        audit.append(self.paths.rpc_log, {"source": source, "decision": "error", "reason": message})
        with self._lock:
            first = source not in self._refusing
            self._refusing.add(source)
        if first:
            self.log(message)

    # -- the admin socket -------------------------------------------------------------

    def _admin(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                buf = b""
                while not buf.endswith(b"\n") and len(buf) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                msg = json.loads(buf)
                reply = self._admin_op(msg)
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except QliteError as exc:
                reply = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _admin_op(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "rescan":
            self.request_rescan()
            return {"ok": True, "listening": sorted(self.listeners)}
        if op == "asks":
            return {"ok": True, "asks": [a.as_json(self.clock.time()) for a in self.asks.pending()]}
        if op == "forget":
            uuid = msg.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                raise ValueError("forget needs a qube's uuid")
            return {"ok": True, "forgotten": self.approvals.forget(uuid)}
        if op == "answer":
            ask_id, allow, target = msg.get("id"), bool(msg.get("allow")), msg.get("target")
            if not isinstance(ask_id, int) or (target is not None and not isinstance(target, str)):
                raise ValueError("answer needs an integer id and a string target")
            ask = self.asks.answer(ask_id, allow, target)
            return {"ok": True, "id": ask.id, "allow": ask.allow, "target": ask.chosen}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _bind(path: Path, mode: int) -> socket.socket:
    """Bind and listen on a Unix socket at PATH, a path qlite controls."""
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _bind_at(dirfd, path.name, mode)
    finally:
        os.close(dirfd)


def _bind_at(dirfd: int, name: str, mode: int) -> socket.socket:
    """Bind and listen on a Unix socket NAME in the directory DIRFD, with
    MODE. Through /proc/self/fd, a path of any length fits in sockaddr_un."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"/proc/self/fd/{dirfd}/{name}")
        _chmod_socket(dirfd, name, mode)
        s.listen(64)
    except OSError:
        s.close()
        raise
    return s


def _chmod_socket(dirfd: int, name: str, mode: int) -> None:
    """chmod the socket just bound at NAME. A qube may have swapped it for a
    symlink or a hard link since: only a socket of one link gets MODE, and
    the chmod acts on the inode checked, never on a path looked up again."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_nlink != 1:
            now = _describe(st.st_mode) + (f" with {st.st_nlink} links" if st.st_nlink != 1 else "")
            raise OSError(f"{name} changed after bind (it is {now}); its mode is left alone")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _describe(mode: int) -> str:
    for test, what in (
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return what
    return "a device or other special file"
