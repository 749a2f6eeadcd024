"""Per-qube networks, gateway qubes and the firewall, on real podman, runsc
and nftables, against test hosts in network namespaces the tests create.
Traffic goes only to those hosts and to qubes the tests made; every probe
has a timeout."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.integration.nethosts import NetHosts, probe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hosts(home):
    h = NetHosts(home.path)
    yield h
    h.destroy()


@pytest.fixture(scope="module")
def h1(hosts):
    return hosts.new().listen(8001, 8002)


@pytest.fixture(scope="module")
def h2(hosts):
    return hosts.new().listen(8001, 8002)


def host_table(home) -> str:
    return subprocess.run(["nft", "list", "table", "inet", f"qlite-{home.hash}"], capture_output=True, text=True).stdout


def netns_of(home, qube: str) -> str:
    out = subprocess.run(
        ["podman", "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", f"qlite-{home.hash}-{qube}"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def serve_in_qube(home, qube: str, port: int) -> None:
    """A listener inside QUBE, as 'user', detached from the run."""
    script = (
        "import socket,time\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(8); s.settimeout(600)\n"
        "while True:\n"
        "    c,_=s.accept(); c.sendall(b'hello qube\\n'); c.close()\n"
    )
    home.run("run", qube, "--", "sh", "-c", f'nohup python3 -c "{script}" >/dev/null 2>&1 &')
    for _ in range(50):  # bounded: until it listens
        if probe(home, qube, [("127.0.0.1", port)])[f"127.0.0.1:{port}"] == "hello qube":
            return
        time.sleep(0.1)
    raise AssertionError(f"listener in {qube} did not start")


# -- isolation --------------------------------------------------------------------


def test_qubes_cannot_reach_each_other_in_either_direction(home, h1):
    home.run("create", "iso-a", "--label", "red")
    home.run("create", "iso-b", "--label", "blue")
    try:
        home.run("start", "iso-a", "iso-b")
        serve_in_qube(home, "iso-a", 7000)
        serve_in_qube(home, "iso-b", 7000)
        a_ip = home.run("prefs", "iso-a", "ip").stdout.strip()
        b_ip = home.run("prefs", "iso-b", "ip").stdout.strip()
        assert a_ip and b_ip and a_ip != b_ip
        ports = [7000, 22, 53, 80, 443, 8080]
        a_to_b = probe(home, "iso-a", [(b_ip, p) for p in ports])
        b_to_a = probe(home, "iso-b", [(a_ip, p) for p in ports])
        assert set(a_to_b.values()) == {"blocked"}, a_to_b
        assert set(b_to_a.values()) == {"blocked"}, b_to_a
        # Each can still reach its own listener and the outside test host.
        assert probe(home, "iso-a", [(h1.address, 8001)])[f"{h1.address}:8001"] == "hello 8001"
        # Nor do qubes reach the host's own services on their bridge.
        gw = ".".join(a_ip.split(".")[:3]) + ".1"
        to_host = probe(home, "iso-a", [(gw, p) for p in (22, 80, 7000, 8080)])
        assert set(to_host.values()) == {"blocked"}, to_host
    finally:
        home.run("remove", "--force", "iso-a", "iso-b")


def test_offline_qube_has_no_route(home, h1):
    home.run("create", "off", "--label", "black", "--netvm", "none")
    home.run("create", "dvm-loop", "--label", "black", "--netvm", "none", "--prop", "template_for_dispvms=True")
    try:
        out = probe(home, "off", [(h1.address, 8001)])
        assert out[f"{h1.address}:8001"] == "blocked"
        route = home.run("run", "off", "--", "cat", "/proc/net/route").stdout
        assert "eth0" not in route
        row = next(r for r in home.json("ls") if r["name"] == "off")
        assert row["netvm"] is None and row["netpath"] == "none"
        # Loopback only, and it works.
        serve_in_qube(home, "off", 7100)
        out = home.run(
            "run",
            "--dvm",
            "dvm-loop",
            "--",
            "python3",
            "-c",
            "import socket;s=socket.socket();s.bind(('127.0.0.1',7101));s.listen();"
            "c=socket.create_connection(('127.0.0.1',7101),2);print('loopback ok')",
        ).stdout
        assert out == "loopback ok\n"
    finally:
        home.run("remove", "--force", "off", "dvm-loop")


# -- the firewall ------------------------------------------------------------------


def test_firewall_allows_and_denies_by_host_and_port(home, h1, h2, hosts):
    h3 = hosts.new().listen(8001)
    home.run("create", "fw", "--label", "orange")
    try:
        targets = [(h1.address, 8001), (h1.address, 8002), (h2.address, 8001), (h2.address, 8002), (h3.address, 8001)]
        assert set(probe(home, "fw", targets).values()) == {"hello 8001", "hello 8002"}

        home.run("firewall", "fw", "reset")
        home.run(
            "firewall", "fw", "add", "accept", f"dsthost={h1.address}", "proto=tcp", "dstports=8001", "--before", "0"
        )
        home.run("firewall", "fw", "add", "action=accept", f"dsthost={h2.address}/32", "--before", "1")
        home.run("firewall", "fw", "add", "drop", "--before", "2")  # before the default accept
        out = probe(home, "fw", targets)
        assert out == {
            f"{h1.address}:8001": "hello 8001",
            f"{h1.address}:8002": "blocked",
            f"{h2.address}:8001": "hello 8001",
            f"{h2.address}:8002": "hello 8002",
            f"{h3.address}:8001": "blocked",
        }

        rules = home.json("firewall", "fw", "list")
        assert rules == [
            {"action": "accept", "dsthost": h1.address, "proto": "tcp", "dstports": "8001"},
            {"action": "accept", "dsthost": f"{h2.address}/32"},
            {"action": "drop"},
            {"action": "accept"},
        ]
        home.run("firewall", "fw", "del", "2")
        assert probe(home, "fw", [(h3.address, 8001)])[f"{h3.address}:8001"] == "hello 8001"
        home.run("firewall", "fw", "reset")
        assert home.json("firewall", "fw", "list") == [{"action": "accept"}]
    finally:
        home.run("remove", "--force", "fw")


def test_rules_round_trip_through_list_json(home):
    home.run("create", "rt", "--label", "yellow")
    try:
        given = [
            ["accept", "dsthost=198.18.0.0/15", "proto=tcp", "dstports=1000-2000", "comment=test range"],
            ["drop", "proto=icmp", "icmptype=8"],
            ["accept", "specialtarget=dns"],
            ["action=drop", "dsthost=localhost", "proto=udp", "dstports=53"],
            ["drop", "expire=+3600"],
        ]
        home.run("firewall", "rt", "reset")
        for i, words in enumerate(given):
            home.run("firewall", "rt", "add", "--before", str(i), *words)
        listed = home.json("firewall", "rt", "list")
        assert listed[0] == {
            "action": "accept",
            "dsthost": "198.18.0.0/15",
            "proto": "tcp",
            "dstports": "1000-2000",
            "comment": "test range",
        }
        assert listed[1] == {"action": "drop", "proto": "icmp", "icmptype": 8}
        assert listed[2] == {"action": "accept", "specialtarget": "dns"}
        assert listed[3] == {"action": "drop", "dsthost": "localhost", "proto": "udp", "dstports": "53"}
        assert listed[4]["action"] == "drop" and listed[4]["expire"] > time.time() + 3000
        assert listed[5] == {"action": "accept"}
        # Feeding each listed rule back in gives the same list.
        home.run("firewall", "rt", "reset")
        home.run("firewall", "rt", "del", "0")
        for rule in listed:
            words = [f"{k}={v}" for k, v in rule.items() if k != "comment"]
            if "comment" in rule:
                words.append(f"comment={rule['comment']}")
            home.run("firewall", "rt", "add", *words)
        assert home.json("firewall", "rt", "list") == listed
    finally:
        home.run("remove", "--force", "rt")


@pytest.mark.parametrize(
    "words, fragment",
    [
        (["permit"], "bad rule word"),
        (["action=maybe"], "action must be accept or drop"),
        (["accept", "dsthost=10.0.0.1/8"], "not a valid address"),
        (["accept", "dsthost=-x-"], "not an address"),
        (["accept", "proto=sctp"], "proto must be"),
        (["accept", "dstports=80"], "needs proto=tcp"),
        (["accept", "proto=tcp", "dstports=0"], "1 to 65535"),
        (["accept", "proto=tcp", "dstports=90-80"], "1 to 65535"),
        (["accept", "icmptype=8"], "needs proto=icmp"),
        (["accept", "specialtarget=dns", "dsthost=1.2.3.4"], "cannot be combined"),
        (["accept", "expire=1"], "in the past"),
        (["accept", "colour=red"], "unknown rule field"),
        (["accept", "dsthost=no-such-host.invalid"], "cannot resolve"),
    ],
)
def test_bad_rules_are_rejected_and_nothing_is_applied(home, words, fragment):
    if not any(r["name"] == "bad" for r in home.json("ls")):
        home.run("create", "bad", "--label", "gray")
        home.run("start", "bad")
    before_rules = home.json("firewall", "bad", "list")
    before_table = host_table(home)
    proc = home.run("firewall", "bad", "add", *words, check=False)
    assert proc.returncode == 125
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert home.json("firewall", "bad", "list") == before_rules
    assert host_table(home) == before_table


def test_expired_rules_drop_out_without_a_restart(home, h1):
    home.run("create", "exp", "--label", "purple")
    try:
        home.run("start", "exp")
        home.run("firewall", "exp", "add", "drop", f"dsthost={h1.address}", "expire=+4", "--before", "0")
        target = f"{h1.address}:8001"
        assert probe(home, "exp", [(h1.address, 8001)])[target] == "blocked"
        deadline = time.monotonic() + 20
        while probe(home, "exp", [(h1.address, 8001)])[target] != "hello 8001":
            assert time.monotonic() < deadline, "the expired rule still blocks"
            time.sleep(1)
        # Nothing was re-applied: the same kernel rules, the expiry now past.
        assert "meta time <" in host_table(home)
        assert home.json("firewall", "exp", "list") == [{"action": "accept"}]
    finally:
        home.run("remove", "--force", "exp")


def test_rules_that_cannot_be_applied_leave_the_qube_offline(home, h1):
    home.run("create", "fc", "--label", "red")
    try:
        proc = home.run("start", "fc", env={"QLITE_NFT": "/bin/false"})
        assert "runs without one" in proc.stderr
        assert probe(home, "fc", [(h1.address, 8001)])[f"{h1.address}:8001"] == "blocked"
        assert "eth0" not in home.run("run", "fc", "--", "cat", "/proc/net/dev").stdout
        home.run("shutdown", "fc")
        home.run("start", "fc")
        assert probe(home, "fc", [(h1.address, 8001)])[f"{h1.address}:8001"] == "hello 8001"
        # A rule change that cannot be loaded keeps the previous rules.
        bad = home.run("firewall", "fc", "add", "drop", "--before", "0", check=False, env={"QLITE_NFT": "/bin/false"})
        assert bad.returncode == 125 and "nftables" in bad.stderr
        assert home.json("firewall", "fc", "list") == [{"action": "accept"}]
        assert probe(home, "fc", [(h1.address, 8001)])[f"{h1.address}:8001"] == "hello 8001"
    finally:
        home.run("remove", "--force", "fc")


def test_a_disposable_gets_a_fresh_network_that_goes_with_it(home, h1):
    out = home.run("run", "--disposable", "--", "sh", "-c", "cat /proc/net/route; hostname").stdout
    assert "eth0" in out
    name = out.split()[-1]
    assert name.startswith("disp")
    assert not [n for n in home.leftovers()["networks"] if n.endswith(f"-{name}")]
    assert f"qlite-{home.hash}-{name}" not in host_table(home)


# -- DNS -----------------------------------------------------------------------------


def test_dns_through_a_resolver_in_a_test_namespace(home, hosts):
    resolver = hosts.new().serve_dns("198.18.250.9")
    home.run("create", "dns", "--label", "green")
    try:
        home.run("features", "dns", "net.dns-servers", resolver.address)
        out = home.run("run", "dns", "--", "getent", "hosts", "probe.qlite.test").stdout
        assert out.split()[0] == "198.18.250.9"
        assert "probe.qlite.test" in resolver.dns_log.read_text()
        # specialtarget=dns governs it.
        home.run("firewall", "dns", "add", "drop", "specialtarget=dns", "--before", "0")
        failed = home.run("run", "dns", "--", "getent", "hosts", "again.qlite.test", check=False)
        assert failed.returncode != 0
        assert "again.qlite.test" not in resolver.dns_log.read_text()
    finally:
        home.run("remove", "--force", "dns")


# -- gateway qubes --------------------------------------------------------------------


def test_gateway_routes_sees_and_filters_its_clients_traffic(home, h1, h2):
    home.run("create", "gw", "--label", "orange", "--prop", "provides_network=True")
    home.run("create", "cl", "--label", "green", "--netvm", "gw")
    home.run("create", "peer", "--label", "blue")
    try:
        home.run("start", "cl")  # starts its netvm first
        states = {r["name"]: r["state"] for r in home.json("ls")}
        assert states["gw"] == "Running" and states["cl"] == "Running"
        cl_ip = home.run("prefs", "cl", "ip").stdout.strip()
        route = home.run("run", "cl", "--", "cat", "/proc/net/route").stdout
        assert "00000000" in route  # a default route, pointing at the gateway

        before = len(h1.connections())
        assert probe(home, "cl", [(h1.address, 8001)])[f"{h1.address}:8001"] == "hello 8001"
        assert len(h1.connections()) == before + 1
        # The gateway's namespace carried it: its conntrack table has the flow.
        gw_ns = netns_of(home, "gw")
        conntrack = subprocess.run(
            ["nsenter", f"--net={gw_ns}", "cat", "/proc/net/nf_conntrack"], capture_output=True, text=True
        ).stdout
        assert f"src={cl_ip} dst={h1.address}" in conntrack

        # An app in the gateway takes part: the client reaches it on its link.
        serve_in_qube(home, "gw", 3128)
        gw_addr = home.run("run", "cl", "--", "awk", "/nameserver/ {print $2}", "/etc/resolv.conf").stdout.strip()
        assert probe(home, "cl", [(gw_addr, 3128)])[f"{gw_addr}:3128"] == "hello qube"

        # The client's own rules are enforced in the gateway's namespace...
        home.run(
            "firewall", "cl", "add", "drop", f"dsthost={h1.address}", "proto=tcp", "dstports=8002", "--before", "0"
        )
        out = probe(home, "cl", [(h1.address, 8001), (h1.address, 8002)])
        assert out == {f"{h1.address}:8001": "hello 8001", f"{h1.address}:8002": "blocked"}
        # ...and the gateway's rules cover what it forwards.
        home.run("firewall", "gw", "add", "drop", f"dsthost={h2.address}", "--before", "0")
        assert probe(home, "cl", [(h2.address, 8001)])[f"{h2.address}:8001"] == "blocked"
        assert probe(home, "gw", [(h2.address, 8001)])[f"{h2.address}:8001"] == "blocked"

        # Clients and other qubes stay apart, both ways.
        home.run("start", "peer")
        serve_in_qube(home, "peer", 7000)
        serve_in_qube(home, "cl", 7000)
        peer_ip = home.run("prefs", "peer", "ip").stdout.strip()
        assert probe(home, "cl", [(peer_ip, 7000)])[f"{peer_ip}:7000"] == "blocked"
        assert probe(home, "peer", [(cl_ip, 7000)])[f"{cl_ip}:7000"] == "blocked"
        assert probe(home, "gw", [(cl_ip, 7000)])[f"{cl_ip}:7000"] == "blocked"

        # The gateway cannot go while its client runs, unless forced...
        refused = home.run("shutdown", "gw", check=False)
        assert refused.returncode == 125 and "cl" in refused.stderr
        # ...and without it the client has no way out (fail closed).
        home.run("kill", "gw")
        assert probe(home, "cl", [(h1.address, 8001)])[f"{h1.address}:8001"] == "blocked"
        # It comes back when the gateway does.
        home.run("start", "gw")
        assert probe(home, "cl", [(h1.address, 8001)])[f"{h1.address}:8001"] == "hello 8001"

        # Changing netvm of a running qube says a restart is needed.
        changed = home.run("prefs", "cl", "netvm", "dom0")
        assert "next start" in changed.stderr
        home.run("prefs", "cl", "netvm", "gw")

        # shutdown --all stops clients before their gateway.
        home.run("shutdown", "--all", "--wait")
        assert {r["state"] for r in home.json("ls")} == {"Halted"}
    finally:
        home.run("remove", "--force", "cl", "peer")
        home.run("remove", "--force", "gw")
    assert not [n for n in home.leftovers()["networks"] if n.split("-")[-1] in ("gw", "cl", "peer")]


def test_disposable_behind_a_gateway(home, h1):
    home.run("create", "gw2", "--label", "orange", "--prop", "provides_network=True")
    home.run("create", "dvm-gw", "--label", "red", "--netvm", "gw2", "--prop", "template_for_dispvms=True")
    try:
        out = home.run(
            "run",
            "--dvm",
            "dvm-gw",
            "--",
            "python3",
            "-c",
            f"import socket;print(socket.create_connection(('{h1.address}',8001),timeout=3).recv(20))",
        )
        assert "hello 8001" in out.stdout
        assert not home.disposable_leftovers()["networks"]
        ns = netns_of(home, "gw2")
        links = subprocess.run(["nsenter", f"--net={ns}", "ip", "-o", "link"], capture_output=True, text=True).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
        assert names == ["lo", "eth0"], names  # the disposable's link left with it
    finally:
        home.run("remove", "--force", "dvm-gw")
        home.run("remove", "--force", "gw2")


def test_netvm_must_provide_network_and_not_loop(home):
    home.run("create", "plain", "--label", "gray")
    home.run("create", "n1", "--label", "gray", "--prop", "provides_network=True")
    home.run("create", "n2", "--label", "gray", "--prop", "provides_network=True", "--netvm", "n1")
    try:
        bad = home.run("prefs", "plain", "netvm", "plain", check=False)
        assert bad.returncode == 125 and "own netvm" in bad.stderr
        bad = home.run("create", "x", "--label", "red", "--netvm", "plain", check=False)
        assert bad.returncode == 125 and "does not provide network" in bad.stderr
        loop = home.run("prefs", "n1", "netvm", "n2", check=False)
        assert loop.returncode == 125 and "loop" in loop.stderr
        busy = home.run("prefs", "n1", "provides_network", "False", check=False)
        assert busy.returncode == 125 and "n2" in busy.stderr
    finally:
        home.run("remove", "plain", "n2")
        home.run("remove", "n1")


def test_ls_json_reports_netpath(home):
    rows = home.json("ls")
    probe_file = json.loads((home.path / "run" / "probe.json").read_text())
    expected = "netstack" if probe_file["netstack"] else "host-netns"
    for row in rows:
        if row["class"] != "TemplateVM":
            assert row["netpath"] == (expected if row["netvm"] else "none")


def test_dns_of_a_client_goes_through_its_gateway(home, hosts):
    resolver = hosts.new().serve_dns("198.18.250.10")
    home.run("create", "gw3", "--label", "orange", "--prop", "provides_network=True")
    home.run("features", "gw3", "net.dns-servers", resolver.address)
    home.run("create", "cl3", "--label", "green", "--netvm", "gw3")
    try:
        # The client asks its gateway; the gateway forwards to its resolver.
        nameserver = home.run("run", "cl3", "--", "awk", "/nameserver/ {print $2}", "/etc/resolv.conf").stdout
        assert nameserver.strip().endswith(".254")
        out = home.run("run", "cl3", "--", "getent", "hosts", "via-gateway.qlite.test").stdout
        assert out.split()[0] == "198.18.250.10"
        assert "via-gateway.qlite.test" in resolver.dns_log.read_text()
        # The client's specialtarget=dns rule is enforced in the gateway.
        home.run("firewall", "cl3", "add", "drop", "specialtarget=dns", "--before", "0")
        assert home.run("run", "cl3", "--", "getent", "hosts", "blocked.qlite.test", check=False).returncode != 0
        assert "blocked.qlite.test" not in resolver.dns_log.read_text()
    finally:
        home.run("remove", "--force", "cl3")
        home.run("remove", "--force", "gw3")
