"""The host side of one running VM qube: ``python -m qlite.vm.supervisor``.

It starts QEMU (which dies with it: PR_SET_PDEATHSIG), holds the one
connection to the guest agent's port, and multiplexes it:
- host clients (``qlite run``, the broker running a service in the VM)
  connect to ``agent.sock`` in the VM's run directory and get a channel;
- the VM's own RPC calls arrive as channels and are joined to the VM's
  socket at the broker, which is how the broker knows who calls.
When QEMU exits, for whatever reason, the supervisor removes what the boot
made (overlay, sockets, the network holder) and exits: a crashed or killed
VM is Halted, and nothing of it is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from qlite.agent import channel as ch
from qlite.agent.listen import listen_private
from qlite.host import hypervisor

READY_TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Supervisor:
    def __init__(self, config: dict) -> None:
        self.cfg = config
        self.run_dir = Path(config["run_dir"])
        self.link: socket.socket | None = None
        self.link_lock = threading.Lock()
        self.hello = threading.Event()
        self.clients: dict[int, socket.socket] = {}  # host channel id -> client connection
        self.tunnels: dict[int, socket.socket] = {}  # guest channel id -> broker connection
        self.next_channel = 2
        self.lock = threading.Lock()
        self.qemu: subprocess.Popen | None = None

    # -- the link to the agent --------------------------------------------------

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        data = ch.encode(kind, channel, payload)
        with self.link_lock:
            assert self.link is not None
            self.link.sendall(data)

    def try_send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        """Send a small frame unless that would block: a guest that does not
        read (still booting, or hung) must not stall the supervisor."""
        data = ch.encode(kind, channel, payload)
        with self.link_lock, contextlib.suppress(BlockingIOError, InterruptedError):
            assert self.link is not None
            self.link.send(data, socket.MSG_DONTWAIT)  # small: all of it or nothing

    def connect_link(self, deadline: float) -> None:
        path = self.cfg["agent_socket"]
        while time.monotonic() < deadline and self.qemu_alive():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                time.sleep(0.05)
                continue
            self.link = s
            return
        raise RuntimeError("QEMU did not open the agent's port")

    def read_link(self) -> None:
        decoder = ch.Decoder()
        assert self.link is not None
        while True:
            try:
                data = self.link.recv(ch.MAX_PAYLOAD + ch.HEADER.size)
            except OSError:
                data = b""
            if not data:
                log("the agent's port closed")
                return
            try:
                frames = decoder.feed(data)
            except ch.ChannelError as exc:
                log(f"bad frame from the guest, dropping the link: {exc}")
                return
            for kind, channel, payload in frames:
                self.from_guest(kind, channel, payload)

    def from_guest(self, kind: int, channel: int, payload: bytes) -> None:
        if kind in (ch.HELLO, ch.PONG) and channel == 0:
            self.hello.set()
        elif channel % 2 == 1:  # the guest's own channels: RPC calls
            self.from_guest_tunnel(kind, channel, payload)
        else:
            client = self.clients.get(channel)
            if client is not None:
                with contextlib.suppress(OSError):
                    client.sendall(ch.encode(kind, 0, payload))
                if kind in (ch.EXIT, ch.ERROR):
                    self.clients.pop(channel, None)

    # -- the VM's RPC calls --------------------------------------------------------

    def from_guest_tunnel(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == ch.OPEN:
            try:
                if ch.decode_json(payload).get("kind") != "rpc":
                    raise ch.ChannelError("the guest may open only rpc channels")
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.cfg["rpc_socket"])
            except (OSError, ch.ChannelError) as exc:
                log(f"RPC call from the guest refused: {exc}")
                self.send(ch.DATA, channel)
                self.send(ch.CLOSE, channel)
                return
            self.tunnels[channel] = s
            threading.Thread(target=self.broker_to_guest, args=(channel, s), daemon=True).start()
            return
        tunnel = self.tunnels.get(channel)
        if tunnel is None:
            return
        if kind == ch.DATA and payload:
            try:
                tunnel.sendall(payload)
            except OSError:
                self.send(ch.CLOSE, channel)
        elif kind == ch.DATA:
            with contextlib.suppress(OSError):
                tunnel.shutdown(socket.SHUT_WR)
        elif kind == ch.CLOSE:
            self.tunnels.pop(channel, None)
            tunnel.close()

    def broker_to_guest(self, channel: int, s: socket.socket) -> None:
        try:
            while True:
                data = s.recv(ch.MAX_PAYLOAD)
                self.send(ch.DATA, channel, data)
                if not data:
                    return
        except OSError:
            with contextlib.suppress(OSError):
                self.send(ch.DATA, channel)

    # -- host clients ------------------------------------------------------------------

    def serve_clients(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=self.client, args=(conn,), daemon=True).start()

    def client(self, conn: socket.socket) -> None:
        decoder = ch.Decoder()
        channel = None
        try:
            while True:
                data = conn.recv(ch.MAX_PAYLOAD + ch.HEADER.size)
                if not data:
                    return
                for kind, _c, payload in decoder.feed(data):
                    if kind == ch.PING:
                        conn.sendall(ch.encode(ch.PONG, 0, payload))
                    elif kind == ch.OPEN and channel is None:
                        with self.lock:
                            channel = self.next_channel
                            self.next_channel += 2
                        self.clients[channel] = conn
                        self.send(ch.OPEN, channel, payload)
                    elif kind in (ch.STDIN, ch.SIGNAL) and channel is not None:
                        self.send(kind, channel, payload)
                    else:
                        raise ch.ChannelError(f"unexpected frame {kind:#x} from a host client")
        except (OSError, ch.ChannelError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(ch.encode_json(ch.ERROR, 0, {"message": str(exc)}))
        finally:
            if channel is not None and self.clients.pop(channel, None) is not None:
                with contextlib.suppress(OSError):
                    self.send(ch.CLOSE, channel)  # the agent ends what still runs
            conn.close()

    # -- QEMU ------------------------------------------------------------------------------

    def qemu_alive(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    def start_qemu(self) -> None:
        argv = list(self.cfg["argv"])
        if self.cfg.get("netns"):
            argv = ["nsenter", f"--net={self.cfg['netns']}", "--", *argv]
        self.qemu = hypervisor.start_qemu(argv, self.run_dir / "qemu.log")  # QEMU's own stderr
        (self.run_dir / "qemu.pid").write_text(f"{self.qemu.pid}\n")
        log(f"qemu started, pid {self.qemu.pid}")

    def run(self, ready_fd: int) -> int:
        deadline = time.monotonic() + float(self.cfg.get("boot_timeout", READY_TIMEOUT_S))
        ready = os.fdopen(ready_fd, "w")
        try:
            self.start_qemu()
            self.connect_link(deadline)
            threading.Thread(target=self.read_link, daemon=True).start()
            polls = 0
            while not self.hello.wait(0.1):
                polls += 1
                if polls % 20 == 0 and polls <= 400:
                    # QEMU drops what the guest writes before it has taken
                    # our connection, HELLO included; a PING is answered.
                    self.try_send(ch.PING, 0, b"ready?")
                if not self.qemu_alive():
                    raise RuntimeError("the VM stopped before its agent started")
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not start in time")
            srv = listen_private(Path(self.cfg["client_socket"]))
            threading.Thread(target=self.serve_clients, args=(srv,), daemon=True).start()
            ready.write("ok\n")
            ready.close()
            log("agent ready")
        except Exception as exc:  # noqa: BLE001 - reported to the starting qlite, then cleaned up
            log(f"start failed: {exc}")
            with contextlib.suppress(OSError):
                tail = (self.run_dir / "console.log").read_text(errors="replace").splitlines()[-30:]
                log("console: " + "\n  ".join(tail))
            with contextlib.suppress(OSError):
                ready.write(f"error {exc}\n")
                ready.close()
            self.stop_qemu()
            self.cleanup()
            return 1
        assert self.qemu is not None  # started above
        code = self.qemu.wait()
        log(f"qemu exited with {code}")
        self.cleanup()
        return 0

    def stop_qemu(self) -> None:
        if self.qemu_alive():
            assert self.qemu is not None
            self.qemu.kill()
            self.qemu.wait()

    def cleanup(self) -> None:
        """What this boot made goes; the holder's removal makes the qube
        Halted for every other qlite process."""
        for name in ("root.qcow2", "agent-qemu.sock", "qmp.sock", "agent.sock", "qemu.pid", "paused"):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()
        holder = self.cfg.get("holder")
        if holder:
            try:
                from qlite.domain.context import Context  # noqa: PLC0415 - ~30 ms per VM boot; cleanup only
                from qlite.paths import Paths  # noqa: PLC0415 - ~10 ms per VM boot; cleanup only

                Context(Paths(Path(self.cfg["home"]))).engine.remove_container(holder, force=True)
            except Exception as exc:  # noqa: BLE001 - logged; reconciliation removes it later
                log(f"could not remove the network holder: {exc}")
        with contextlib.suppress(OSError):
            (self.run_dir / "supervisor.pid").unlink()


def main(argv: list[str]) -> int:
    config_path, ready_fd = Path(argv[0]), int(argv[1])
    config = json.loads(config_path.read_text())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sup = Supervisor(config)
    # SIGTERM ends QEMU at once; run() then cleans up as for any exit.
    signal.signal(signal.SIGTERM, lambda *_: sup.qemu.kill() if sup.qemu is not None and sup.qemu_alive() else None)
    return sup.run(ready_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
