"""One agent link shared by many host clients: the daemon's side of a
container qube's agent.

The agent in a container qube connects to a socket in the qube's RPC
directory and greets. Host clients (``qlite run``, the broker starting a
service) connect to the daemon's own socket for that qube and speak the
channel frames on channel 0, as they do to a VM's supervisor; the mux gives
each client a channel of its own on the link.

Everything that comes over the link is the qube's: its root can kill the
agent and speak in its place. A malformed frame, or one that only the host
may send, ends the link (and fails the sessions on it, with a clear error);
frames for channels no client holds are dropped; a client that does not
read stalls only this qube's link. Nothing is buffered beyond one frame.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from qlite.agent import channel as ch
from qlite.agent import frames

GREETING_TIMEOUT_S = 5.0
LINK_WAIT_S = 10.0  # a qube just started: its agent is on its way
MAX_GREETING = 4  # connections of one qube waiting to greet at once


class AgentMux:
    """The link to one qube's agent and the host clients on it."""

    def __init__(self, qube: str, log: Callable[[str], None], link_wait: float = LINK_WAIT_S) -> None:
        self.qube = qube
        self.log = log
        self.link_wait = link_wait
        self.link: socket.socket | None = None
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.clients: dict[int, socket.socket] = {}  # channel -> client connection
        self.next_channel = 2
        self.greeting = 0
        self.closed = False

    # -- the agent's side -------------------------------------------------------

    def may_greet(self) -> bool:
        """Whether one more connection may wait to greet (checked before a
        thread is spent on it)."""
        return self.greeting < MAX_GREETING and not self.closed

    def agent_connected(self, conn: socket.socket) -> None:
        """CONN came in on the qube's agent socket: once it greets, it is
        the link (a newer one replaces an older: the agent reconnected)."""
        with self.cond:
            if self.closed or self.greeting >= MAX_GREETING:
                conn.close()
                return
            self.greeting += 1
        try:
            decoder, backlog = ch.Decoder(), []  # type: ignore[var-annotated]
            first = frames.recv_frame(conn, decoder, backlog, time.monotonic() + GREETING_TIMEOUT_S)
        except ch.ChannelError as exc:
            self.log(f"{self.qube}: its agent sent a bad frame ({exc}); the connection is dropped")
            first = None
        except OSError:
            first = None
        finally:
            with self.cond:
                self.greeting -= 1
        if first is None or first[0] != ch.HELLO or first[1] != 0:
            conn.close()
            return
        conn.settimeout(None)
        with self.cond:
            if self.closed:
                conn.close()
                return
            old, self.link = self.link, conn
            stranded, self.clients = self.clients, {}  # their channels were on the old link
            self.cond.notify_all()
        if old is not None:
            self._drop(old, "its agent reconnected", stranded)
        self._read(conn, decoder, backlog)

    def _read(self, conn: socket.socket, decoder: ch.Decoder, backlog: list) -> None:
        why = "its agent went away"
        try:
            for kind, channel, payload in backlog:
                self._from_agent(kind, channel, payload)
            while True:
                data = conn.recv(ch.FORMAT.max_frame)
                if not data:
                    break
                for kind, channel, payload in decoder.feed(data):
                    self._from_agent(kind, channel, payload)
        except ch.ChannelError as exc:
            why = f"its agent sent a bad frame ({exc})"
            self.log(f"{self.qube}: {why}; the link is dropped")
        except OSError:
            pass
        with self.cond:
            gone: dict[int, socket.socket] = {}
            if self.link is conn:
                self.link, gone, self.clients = None, self.clients, {}
        self._drop(conn, why, gone)

    def _from_agent(self, kind: int, channel: int, payload: bytes) -> None:
        if kind not in ch.FROM_GUEST:
            raise ch.ChannelError(f"frame type {kind:#x} is the host's to send")
        if channel == 0:
            if kind == ch.PING:
                self._send(ch.PONG, 0, payload[:64])
            return
        if channel % 2:  # the agent's own channels: a container qube calls RPC through its socket
            if kind == ch.OPEN:
                self._send(ch.CLOSE, channel)
            return
        client = self.clients.get(channel)
        if client is None:
            return
        try:
            client.sendall(ch.encode(kind, 0, payload))
        except OSError:
            self._end_client(channel)
            return
        if kind in (ch.EXIT, ch.ERROR, ch.CLOSE):
            self.clients.pop(channel, None)

    def _send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        link = self.link
        if link is None:
            raise OSError("no agent")
        with self.send_lock:
            link.sendall(ch.encode(kind, channel, payload))

    def _drop(self, conn: socket.socket, why: str, gone: dict[int, socket.socket]) -> None:
        """CONN is no longer the link: the sessions GONE that were on it fail."""
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        message = ch.encode_json(ch.ERROR, 0, {"message": f"{self.qube}: {why} while the command ran"})
        for client in gone.values():
            with contextlib.suppress(OSError):
                client.sendall(message)
                client.shutdown(socket.SHUT_RDWR)

    def _end_client(self, channel: int) -> None:
        if self.clients.pop(channel, None) is not None:
            with contextlib.suppress(OSError):
                self._send(ch.CLOSE, channel)  # the agent ends what still runs

    # -- host clients ----------------------------------------------------------------

    def wait_link(self) -> bool:
        deadline = time.monotonic() + self.link_wait
        with self.cond:
            while self.link is None and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return self.link is not None

    def client(self, conn: socket.socket) -> None:
        """Serve one host client on CONN until its command ends."""
        decoder = ch.Decoder()
        channel = None
        try:
            while True:
                data = conn.recv(ch.FORMAT.max_frame)
                if not data:
                    return
                for kind, _c, payload in decoder.feed(data):
                    if kind == ch.PING:
                        conn.sendall(ch.encode(ch.PONG, 0, payload))
                    elif kind == ch.OPEN and channel is None:
                        if not self.wait_link():
                            message = f"the agent of {self.qube} is not connected"
                            conn.sendall(ch.encode_json(ch.ERROR, 0, {"message": message, "unavailable": True}))
                            return
                        with self.cond:
                            channel = self.next_channel
                            self.next_channel += 2
                            self.clients[channel] = conn
                        self._send(ch.OPEN, channel, payload)
                    elif kind in (ch.STDIN, ch.SIGNAL, ch.RESIZE) and channel is not None:
                        self._send(kind, channel, payload)
                    else:
                        raise ch.ChannelError(f"unexpected frame {kind:#x} from a host client")
        except (OSError, ch.ChannelError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(ch.encode_json(ch.ERROR, 0, {"message": str(exc)}))
        finally:
            if channel is not None:
                self._end_client(channel)
            conn.close()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            link, gone = self.link, self.clients
            self.link, self.clients = None, {}
            self.cond.notify_all()
        if link is not None:
            self._drop(link, "its qube stopped", gone)
