"""Test hosts for network tests: network namespaces that the tests create
themselves, joined to the host by a veth pair, with TCP listeners and a
tiny DNS responder. Every address is in 198.18.0.0/15 (reserved for
benchmarking), every process has a bounded lifetime and is ended by PID,
and every namespace is deleted afterwards."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

LIFETIME_S = 600
PROBE_TIMEOUT_S = 1.5

LISTENER = textwrap.dedent("""
    import socket, sys, threading, time
    host, log = sys.argv[1], sys.argv[2]
    lock = threading.Lock()
    def serve(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        while True:
            c, peer = s.accept()
            with lock, open(log, "a") as f:
                f.write(f"{port} {peer[0]}\\n")
            c.sendall(f"hello {port}\\n".encode())
            c.close()
    for p in sys.argv[3:]:
        threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    print("ready", flush=True)
    time.sleep(LIFETIME)
""").replace("LIFETIME", str(LIFETIME_S))

# Answers every A query with ANSWER; enough for getent/glibc over UDP.
DNS = textwrap.dedent("""
    import socket, struct, sys, time
    host, answer, log = sys.argv[1], sys.argv[2], sys.argv[3]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 53))
    s.settimeout(1)
    print("ready", flush=True)
    deadline = time.time() + LIFETIME
    while time.time() < deadline:
        try:
            q, peer = s.recvfrom(512)
        except socket.timeout:
            continue
        if len(q) < 12:
            continue
        qid, flags, qd = struct.unpack(">HHH", q[:6])
        end = 12
        while end < len(q) and q[end] != 0:
            end += q[end] + 1
        question = q[12:end + 5]
        qtype = struct.unpack(">H", q[end + 1:end + 3])[0] if end + 3 <= len(q) else 0
        name = []
        i = 12
        while i < end:
            name.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
            i += q[i] + 1
        with open(log, "a") as f:
            f.write(".".join(name) + "\\n")
        if qtype == 1:
            rr = b"\\xc0\\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(answer)
            s.sendto(struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr, peer)
        else:
            s.sendto(struct.pack(">HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question, peer)
""").replace("LIFETIME", str(LIFETIME_S))

# Runs inside a qube: try each (host, port) over TCP, print JSON results.
PROBE = textwrap.dedent("""
    import json, socket, sys, threading
    targets = json.loads(sys.argv[1])
    out = {}
    def probe(host, port):
        key = f"{host}:{port}"
        try:
            s = socket.create_connection((host, port), timeout=TIMEOUT)
            out[key] = s.recv(64).decode().strip() or "open"
            s.close()
        except ConnectionRefusedError:
            out[key] = "refused"
        except OSError as e:
            out[key] = "blocked"
    threads = [threading.Thread(target=probe, args=(h, p)) for h, p in targets]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps(out))
""").replace("TIMEOUT", str(PROBE_TIMEOUT_S))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class NetHost:
    """One test host: namespace NAME with ADDRESS, the host side at PEER."""

    index: int
    name: str = ""
    veth: str = ""
    workdir: Path = Path("/tmp")
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"qlt-{tag}"
        self.veth = f"qlh-{tag}"

    @property
    def address(self) -> str:
        return f"198.18.{self.index}.2"

    @property
    def peer(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def dns_log(self) -> Path:
        return self.workdir / f"{self.name}.dns"

    def create(self) -> NetHost:
        ip("netns", "add", self.name)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        ip("addr", "add", f"{self.peer}/30", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "eth0")
        ip("-n", self.name, "link", "set", "eth0", "up")
        ip("-n", self.name, "link", "set", "lo", "up")
        ip("-n", self.name, "route", "add", "default", "via", self.peer)
        return self

    def _spawn(self, script: str, *args: str) -> None:
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def listen(self, *ports: int) -> NetHost:
        self._spawn(LISTENER, self.address, str(self.log), *map(str, ports))
        return self

    def serve_dns(self, answer: str) -> NetHost:
        self._spawn(DNS, self.address, answer, str(self.dns_log))
        return self

    def connections(self) -> list[tuple[int, str]]:
        if not self.log.exists():
            return []
        return [(int(p), a) for p, a in (ln.split() for ln in self.log.read_text().splitlines())]

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        for f in (self.log, self.dns_log):
            f.unlink(missing_ok=True)


class NetHosts:
    """Allocates test hosts with distinct /30s; destroys them all."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        # Spread allocations so that concurrent runs are unlikely to meet.
        self.next = (os.getpid() % 200) + 1
        self.hosts: list[NetHost] = []

    def new(self) -> NetHost:
        h = NetHost(index=self.next, workdir=self.workdir).create()
        self.next = self.next % 250 + 1
        self.hosts.append(h)
        return h

    def destroy(self) -> None:
        for h in self.hosts:
            h.destroy()


def probe(home, qube: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    """From inside QUBE, try every (address, port); bounded by the probe timeout."""
    started = time.monotonic()
    out = home.run("run", qube, "--", "python3", "-c", PROBE, json.dumps(targets), timeout=60).stdout
    assert time.monotonic() - started < 60
    return json.loads(out)
