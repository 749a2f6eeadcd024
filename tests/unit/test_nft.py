"""The pure nftables compiler (qlite/net/nft.py).

Every script a test builds also goes through the real parser with
``nft -c -f`` (check mode: nothing reaches the kernel's ruleset)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.errors import InvalidValue
from qlite.net.firewall import MAX_EPOCH, Rule, parse_rule
from qlite.net.nft import (
    ClientLink,
    QubeNet,
    chain_name,
    compile_rules,
    dns_allowed,
    gateway_table,
    host_table,
)

from .test_firewall_rules import HOSTNAMES, valid_rules

NOW = 1_700_000_000
TABLE = "qlite-0123abcd"
RESOLVED = {
    "example.com": ("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"),
    "dns.example": ("10.89.0.1",),
    "v6.example": ("2001:db8::53",),
}
NFT = shutil.which("nft")


def nft_check(script: str) -> None:
    """Assert the real nft parser accepts SCRIPT (check mode only)."""
    if os.geteuid() != 0:
        pytest.skip("nft -c needs CAP_NET_ADMIN: run as root")
    assert NFT is not None, "nft is missing: setup.sh installs nftables"
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run([NFT, "-c", "-f", f.name], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"nft -c rejected the script:\n{proc.stderr}\n--- script ---\n{script}"


def rules(*texts: str) -> tuple[Rule, ...]:
    return tuple(parse_rule(t.split(), NOW) for t in texts)


def chain_body(script: str, name: str) -> list[str]:
    """The lines of chain NAME in SCRIPT, stripped, header included."""
    m = re.search(rf"^\tchain {re.escape(name)} {{\n(.*?)^\t}}$", script, re.S | re.M)
    assert m, f"no chain {name} in\n{script}"
    return [line.strip() for line in m.group(1).splitlines()]


def set_body(script: str, name: str) -> list[str]:
    m = re.search(rf"^\tset {re.escape(name)} {{\n(.*?)^\t}}$", script, re.S | re.M)
    assert m, f"no set {name} in\n{script}"
    return [line.strip() for line in m.group(1).splitlines()]


ACCEPT_ALL = (Rule("accept"),)


def qube(
    name="work", bridge="qb1a2b3c4d5e6f", gateway_ip="10.89.0.1", behind=False, rule_list=ACCEPT_ALL, dns=("10.89.0.1",)
) -> QubeNet:
    return QubeNet(
        name=name,
        bridge=bridge,
        gateway_ip=gateway_ip,
        behind_gateway=behind,
        rules=tuple(rule_list),
        dns_servers=tuple(dns),
    )


# -- compiling rules -------------------------------------------------------------

DNS = ("10.89.0.1",)
COMPILE = [
    ("accept all", rules("accept"), DNS, ["accept"]),
    ("drop all", rules("drop"), DNS, ["drop"]),
    ("no rules", (), DNS, []),
    (
        "host and port allow, then drop",
        rules(
            "accept dsthost=192.168.1.10 proto=tcp dstports=443",
            "accept dsthost=10.0.0.0/8 proto=udp dstports=1000-2000",
            "drop",
        ),
        DNS,
        [
            "ip daddr 192.168.1.10 meta l4proto tcp tcp dport 443 accept",
            "ip daddr 10.0.0.0/8 meta l4proto udp udp dport 1000-2000 accept",
            "drop",
        ],
    ),
    ("/32 network", rules("drop dsthost=10.0.0.1/32"), DNS, ["ip daddr 10.0.0.1 drop"]),
    ("everything v4", rules("accept dsthost=0.0.0.0/0"), DNS, ["ip daddr 0.0.0.0/0 accept"]),
    ("proto only", rules("drop proto=udp"), DNS, ["meta l4proto udp drop"]),
    (
        "icmp with type, both families",
        rules("accept proto=icmp icmptype=8"),
        DNS,
        ["meta l4proto icmp icmp type 8 accept", "meta l4proto ipv6-icmp icmpv6 type 8 accept"],
    ),
    (
        "icmp to a v4 host",
        rules("accept dsthost=1.1.1.1 proto=icmp"),
        DNS,
        ["ip daddr 1.1.1.1 meta l4proto icmp accept"],
    ),
    (
        "icmpv6 to a v6 host",
        rules("accept dsthost=2001:db8::1 proto=icmp icmptype=128"),
        DNS,
        ["ip6 daddr 2001:db8::1 meta l4proto ipv6-icmp icmpv6 type 128 accept"],
    ),
    (
        "ipv6 dsthost",
        rules("drop dsthost=2001:db8::/32", "accept dsthost=::/0"),
        DNS,
        ["ip6 daddr 2001:db8::/32 drop", "ip6 daddr ::/0 accept"],
    ),
    (
        "dns with a server",
        rules("accept specialtarget=dns"),
        DNS,
        ["ip daddr { 10.89.0.1 } meta l4proto { tcp, udp } th dport 53 accept"],
    ),
    (
        "dns udp, servers of both families",
        rules("accept specialtarget=dns proto=udp"),
        ("10.89.0.1", "9.9.9.9", "fd00::53", "9.9.9.9"),
        [
            "ip daddr { 9.9.9.9, 10.89.0.1 } meta l4proto udp th dport 53 accept",
            "ip6 daddr { fd00::53 } meta l4proto udp th dport 53 accept",
        ],
    ),
    ("dns without servers matches nothing", rules("accept specialtarget=dns", "drop"), (), ["drop"]),
    (
        "future expire",
        rules("accept dsthost=10.0.0.1 expire=+3600"),
        DNS,
        [f"meta time < {NOW + 3600} ip daddr 10.0.0.1 accept"],
    ),
    ("past expire omitted", (Rule("accept", expire=NOW), Rule("drop", expire=NOW - 1), Rule("drop")), DNS, ["drop"]),
    ("expired hostname needs no resolution", (Rule("accept", dsthost="nowhere.example", expire=NOW),), DNS, []),
    ("expire beyond nft's clock is left out", (Rule("drop", expire=MAX_EPOCH),), DNS, ["drop"]),
    (
        "hostname, both families, deduplicated",
        rules("accept dsthost=example.com proto=tcp dstports=443"),
        DNS,
        [
            "ip daddr { 93.184.216.34 } meta l4proto tcp tcp dport 443 accept",
            "ip6 daddr { 2606:2800:220:1::1 } meta l4proto tcp tcp dport 443 accept",
        ],
    ),
    (
        "hostname v6 only, icmp follows it",
        rules("accept dsthost=v6.example proto=icmp"),
        DNS,
        ["ip6 daddr { 2001:db8::53 } meta l4proto ipv6-icmp accept"],
    ),
    (
        "comment kept, unsafe characters removed",
        rules('accept comment=allow "web"; rm -rf / $(x) `y` {z} \\ é'),
        DNS,
        ['accept comment "allow web; rm -rf / (x) y z"'],
    ),
    ("comment of nothing safe", rules('drop comment="{}"'), DNS, ["drop"]),
    ("long comment cut to 128", rules("drop comment=" + "x" * 200), DNS, [f'drop comment "{"x" * 128}"']),
]


@pytest.mark.parametrize(("rule_list", "dns", "expected"), [c[1:] for c in COMPILE], ids=[c[0] for c in COMPILE])
def test_compile_rules(rule_list, dns, expected):
    assert compile_rules(rule_list, dns, RESOLVED, NOW) == expected
    script = host_table(TABLE, [qube(rule_list=rule_list, dns=dns)], RESOLVED, NOW)
    body = chain_body(script, chain_name("work"))
    assert body == ["ct state established,related accept", *expected, "drop"]
    nft_check(script)


@pytest.mark.parametrize("entry", [None, ()], ids=["missing", "no addresses"])
def test_unresolvable_hostname(entry):
    resolved = {} if entry is None else {"nowhere.example": entry}
    rule_list = rules("accept dsthost=nowhere.example")
    with pytest.raises(InvalidValue, match="^cannot resolve dsthost=nowhere.example$"):
        compile_rules(rule_list, DNS, resolved, NOW)
    with pytest.raises(InvalidValue, match="cannot resolve"):
        host_table(TABLE, [qube(rule_list=rule_list)], resolved, NOW)
    with pytest.raises(InvalidValue, match="cannot resolve"):
        gateway_table(TABLE, "eth0", None, [ClientLink("c", "eth1", "10.90.0.1", rule_list)], resolved, NOW)


@pytest.mark.parametrize("bad", ["not-an-ip", "fe80::1%eth0", "10.0.0.0/8"])
def test_bad_resolved_address_is_a_programming_error(bad):
    with pytest.raises(ValueError):
        compile_rules(rules("accept dsthost=example.com"), DNS, {"example.com": (bad,)}, NOW)


@pytest.mark.parametrize(
    "rule",
    [
        Rule("accept; flush ruleset"),
        Rule("reject"),
        Rule("accept", proto="sctp"),
        Rule("accept", proto="tcp;"),
        Rule("accept", proto="icmp", icmptype=256),
        Rule("accept", proto="icmp", icmptype="8; flush"),  # type: ignore[arg-type]
        Rule("accept", proto="tcp", dstports=(0, 80)),
        Rule("accept", proto="tcp", dstports=(90, 80)),
        Rule("accept", expire="1; flush"),
        Rule("accept", specialtarget="ntp"),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_malformed_rule_is_a_programming_error(rule):
    with pytest.raises(ValueError, match="malformed firewall rule"):
        compile_rules((rule,), DNS, RESOLVED, NOW)


# -- chain names -----------------------------------------------------------------


def test_chain_name_shape():
    assert chain_name("work") == chain_name("work")
    assert chain_name("work").startswith("fw-work-")
    long = "a" * 31
    assert len(chain_name(long)) == 31
    assert chain_name(long) != chain_name("a" * 30 + "b")


@pytest.mark.parametrize(("a", "b"), [("a.b", "a_b"), ("a.b", "a-b"), ("Work", "work"), ("x" * 25, "x" * 26)])
def test_chain_names_differ(a, b):
    assert chain_name(a) != chain_name(b)


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", fullmatch=True))
def test_chain_name_is_nft_safe(name):
    chain = chain_name(name)
    assert re.fullmatch(r"fw-[A-Za-z0-9_-]+", chain) and len(chain) <= 31


# -- host_table ------------------------------------------------------------------

EMPTY_HOST = f"""table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
\tset bridges {{
\t\ttype ifname
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter - 5; policy accept;
\t\toifname @bridges ct state established,related accept
\t\toifname @bridges drop
\t}}
\tchain input {{
\t\ttype filter hook input priority filter - 5; policy accept;
\t\tiifname @bridges ct state established,related accept
\t\tiifname @bridges drop
\t}}
}}
"""


def test_host_table_empty():
    script = host_table(TABLE, [], {}, NOW)
    assert script == EMPTY_HOST
    nft_check(script)


def _three_qubes():
    return [
        qube("work", "qbwork", "10.89.1.1"),
        qube("vpn-client", "qbclient", "10.89.2.1", behind=True),
        qube("offline", "qboffline", "10.89.3.1", rule_list=rules("drop")),
    ]


def test_host_table_structure():
    script = host_table(TABLE, _three_qubes(), RESOLVED, NOW)
    assert script.startswith(f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n")
    assert set_body(script, "bridges") == ["type ifname", 'elements = { "qbwork", "qbclient", "qboffline" }']
    assert chain_body(script, "forward") == [
        "type filter hook forward priority filter - 5; policy accept;",
        'iifname "qbwork" oifname "qbwork" accept',
        'iifname "qbclient" oifname "qbclient" accept',
        'iifname "qboffline" oifname "qboffline" accept',
        "oifname @bridges ct state established,related accept",
        "oifname @bridges drop",
        f'iifname "qbwork" jump {chain_name("work")}',
        f'iifname "qboffline" jump {chain_name("offline")}',
        'iifname "qbclient" drop',
    ]
    # Only "work" lets DNS reach its gateway address; the client is not routed by the host.
    assert chain_body(script, "input") == [
        "type filter hook input priority filter - 5; policy accept;",
        "iifname @bridges ct state established,related accept",
        'iifname "qbwork" ip daddr 10.89.1.1 meta l4proto { tcp, udp } th dport 53 accept',
        "iifname @bridges drop",
    ]
    assert chain_body(script, chain_name("offline")) == ["ct state established,related accept", "drop", "drop"]
    assert chain_name("vpn-client") not in script
    # Nothing but qlite's own table is named.
    assert set(re.findall(r"table inet (\S+)", script)) == {TABLE}
    nft_check(script)


def test_host_input_dns_follows_expiring_accept():
    q = qube(rule_list=rules("accept specialtarget=dns expire=+60", "accept dsthost=10.89.0.0/16 expire=+30", "drop"))
    script = host_table(TABLE, [q], RESOLVED, NOW)
    assert (
        f'iifname "qb1a2b3c4d5e6f" meta time < {NOW + 60} ip daddr 10.89.0.1 '
        "meta l4proto { tcp, udp } th dport 53 accept"
    ) in chain_body(script, "input")
    nft_check(script)


def test_host_input_dns_for_ipv6_gateway():
    script = host_table(TABLE, [qube(gateway_ip="fd00::1", dns=("fd00::1",))], RESOLVED, NOW)
    assert 'iifname "qb1a2b3c4d5e6f" ip6 daddr fd00::1 meta l4proto { tcp, udp } th dport 53 accept' in script
    nft_check(script)


HOST_INVALID = [
    ("space in bridge", [qube(bridge="qb 1")]),
    ("quote in bridge", [qube(bridge='qb"1')]),
    ("wildcard bridge", [qube(bridge="qb*")]),
    ("bridge too long", [qube(bridge="q" * 16)]),
    ("empty bridge", [qube(bridge="")]),
    ("bad gateway ip", [qube(gateway_ip="10.89.0.300")]),
    ("bad dns server", [qube(rule_list=rules("accept specialtarget=dns"), dns=("dns.example",))]),
    ("duplicate bridge", [qube("a", "qb1"), qube("b", "qb1")]),
    ("duplicate qube", [qube("a", "qb1"), qube("a", "qb2")]),
]


@pytest.mark.parametrize("qubes", [c[1] for c in HOST_INVALID], ids=[c[0] for c in HOST_INVALID])
def test_host_table_rejects_unsafe_values(qubes):
    with pytest.raises(ValueError):
        host_table(TABLE, qubes, RESOLVED, NOW)


@pytest.mark.parametrize("table", ["", "qlite home", "qlite;flush", "1qlite", "q" * 65])
def test_bad_table_name(table):
    with pytest.raises(ValueError):
        host_table(table, [], {}, NOW)
    with pytest.raises(ValueError):
        gateway_table(table, "eth0", None, [], {}, NOW)


# -- gateway_table ---------------------------------------------------------------


def test_gateway_table_structure():
    clients = [
        ClientLink("work", "eth1", "10.90.1.1", rules("accept specialtarget=dns", "accept proto=tcp dstports=443")),
        ClientLink("anon", "eth2", "10.90.2.1", (Rule("accept"),)),
    ]
    script = gateway_table(TABLE, "eth0", "10.89.0.1", clients, RESOLVED, NOW)
    assert script.startswith(f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n")
    assert set_body(script, "clients") == ["type ifname", 'elements = { "eth1", "eth2" }']
    assert chain_body(script, "forward") == [
        "type filter hook forward priority filter; policy drop;",
        "ct state established,related accept",
        f'iifname "eth1" oifname "eth0" jump {chain_name("work")}',
        f'iifname "eth2" oifname "eth0" jump {chain_name("anon")}',
    ]
    assert chain_body(script, "output") == [
        "type filter hook output priority filter; policy accept;",
        "oifname @clients ct state established,related accept",
        "oifname @clients drop",
    ]
    assert chain_body(script, "prerouting") == [
        "type nat hook prerouting priority dstnat; policy accept;",
        'iifname "eth1" ip daddr 10.90.1.1 meta l4proto { tcp, udp } th dport 53 dnat ip to 10.89.0.1',
        'iifname "eth2" ip daddr 10.90.2.1 meta l4proto { tcp, udp } th dport 53 dnat ip to 10.89.0.1',
    ]
    assert chain_body(script, "postrouting") == [
        "type nat hook postrouting priority srcnat; policy accept;",
        'oifname "eth0" masquerade',
    ]
    # After the DNAT the forward hook sees the resolver's address.
    assert chain_body(script, chain_name("work")) == [
        "ct state established,related accept",
        "ip daddr { 10.89.0.1 } meta l4proto { tcp, udp } th dport 53 accept",
        "meta l4proto tcp tcp dport 443 accept",
        "drop",
    ]
    nft_check(script)


def test_gateway_table_without_resolver():
    clients = [ClientLink("work", "eth1", "10.90.1.1", rules("accept specialtarget=dns", "drop"))]
    script = gateway_table(TABLE, "eth0", None, clients, RESOLVED, NOW)
    assert chain_body(script, "prerouting") == ["type nat hook prerouting priority dstnat; policy accept;"]
    assert chain_body(script, chain_name("work")) == ["ct state established,related accept", "drop", "drop"]
    nft_check(script)


def test_gateway_table_without_clients():
    script = gateway_table(TABLE, "eth0", "10.89.0.1", [], {}, NOW)
    assert set_body(script, "clients") == ["type ifname"]
    assert chain_body(script, "forward") == [
        "type filter hook forward priority filter; policy drop;",
        "ct state established,related accept",
    ]
    assert "chain fw-" not in script
    nft_check(script)


def test_gateway_table_ipv6_dnat():
    clients = [ClientLink("work", "eth1", "fd00:1::1", (Rule("accept"),))]
    script = gateway_table(TABLE, "eth0", "fd00::53", clients, RESOLVED, NOW)
    assert 'iifname "eth1" ip6 daddr fd00:1::1 meta l4proto { tcp, udp } th dport 53 dnat ip6 to fd00::53' in script
    nft_check(script)


GATEWAY_INVALID = [
    ("bad upstream", "eth 0", "10.89.0.1", [ClientLink("c", "eth1", "10.90.0.1", ())]),
    ("bad client ifname", "eth0", "10.89.0.1", [ClientLink("c", "eth1;", "10.90.0.1", ())]),
    ("client on upstream", "eth0", "10.89.0.1", [ClientLink("c", "eth0", "10.90.0.1", ())]),
    (
        "duplicate ifname",
        "eth0",
        "10.89.0.1",
        [ClientLink("a", "eth1", "10.90.0.1", ()), ClientLink("b", "eth1", "10.90.1.1", ())],
    ),
    (
        "duplicate client",
        "eth0",
        "10.89.0.1",
        [ClientLink("a", "eth1", "10.90.0.1", ()), ClientLink("a", "eth2", "10.90.1.1", ())],
    ),
    ("bad address", "eth0", "10.89.0.1", [ClientLink("c", "eth1", "gateway", ())]),
    ("bad resolver", "eth0", "10.89.0.1/24", [ClientLink("c", "eth1", "10.90.0.1", ())]),
    ("families differ", "eth0", "fd00::53", [ClientLink("c", "eth1", "10.90.0.1", ())]),
]


@pytest.mark.parametrize(
    ("upstream", "resolver", "clients"), [c[1:] for c in GATEWAY_INVALID], ids=[c[0] for c in GATEWAY_INVALID]
)
def test_gateway_table_rejects_unsafe_values(upstream, resolver, clients):
    with pytest.raises(ValueError):
        gateway_table(TABLE, upstream, resolver, clients, RESOLVED, NOW)


# -- dns_allowed -----------------------------------------------------------------

SERVER = "10.89.0.1"
DNS_CASES = [
    ("default accept", rules("accept"), True),
    ("no rules", (), False),
    ("drop all", rules("drop"), False),
    ("dns target", rules("accept specialtarget=dns", "drop"), True),
    ("dns target udp only", rules("accept specialtarget=dns proto=udp", "drop"), False),
    (
        "dns target udp then tcp",
        rules("accept specialtarget=dns proto=udp", "accept specialtarget=dns proto=tcp", "drop"),
        True,
    ),
    ("network holding the server", rules("accept dsthost=10.89.0.0/24", "drop"), True),
    ("the server itself", rules("accept dsthost=10.89.0.1", "drop"), True),
    ("other network", rules("accept dsthost=10.90.0.0/24", "drop"), False),
    ("v6 network", rules("accept dsthost=::/0", "drop"), False),
    ("port ranges holding 53", rules("accept proto=udp dstports=50-60", "accept proto=tcp dstports=53", "drop"), True),
    ("other port", rules("accept proto=tcp dstports=80", "drop"), False),
    ("icmp", rules("accept proto=icmp", "drop"), False),
    ("tcp 53 dropped first", rules("drop proto=tcp dstports=53", "accept"), False),
    ("server's network dropped first", rules("drop dsthost=10.0.0.0/8", "accept"), False),
    ("other host dropped first", rules("drop dsthost=192.168.0.1", "accept"), True),
    ("resolved hostname", rules("accept dsthost=dns.example", "drop"), True),
    ("resolved hostname elsewhere", rules("accept dsthost=example.com", "drop"), False),
    ("expired drop ignored", (Rule("drop", expire=NOW), Rule("accept")), True),
    ("expired accept ignored", (Rule("accept", expire=NOW), Rule("drop")), False),
    ("future expiry counts", (Rule("accept", expire=NOW + 60), Rule("drop")), True),
]


@pytest.mark.parametrize(("rule_list", "expected"), [c[1:] for c in DNS_CASES], ids=[c[0] for c in DNS_CASES])
def test_dns_allowed(rule_list, expected):
    assert dns_allowed(rule_list, SERVER, RESOLVED, NOW) is expected
    script = host_table(TABLE, [qube(gateway_ip=SERVER, rule_list=rule_list)], RESOLVED, NOW)
    assert (f"ip daddr {SERVER} meta l4proto {{ tcp, udp }} th dport 53 accept" in script) is expected
    nft_check(script)


def test_dns_allowed_unresolvable_hostname():
    with pytest.raises(InvalidValue, match="cannot resolve dsthost=nowhere.example"):
        dns_allowed(rules("accept dsthost=nowhere.example"), SERVER, RESOLVED, NOW)


# -- Hypothesis: whatever valid rules, nft accepts the script ---------------------

_QUBE_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", fullmatch=True)
_RULE_LISTS = st.lists(
    valid_rules(comments=st.none() | st.text(max_size=40).filter(lambda c: "\n" not in c)), max_size=6
).map(tuple)
_DNS_SERVERS = st.lists(st.sampled_from(["10.89.0.1", "9.9.9.9", "fd00::53"]), max_size=3).map(tuple)


@st.composite
def _qube_lists(draw):
    names = draw(st.lists(_QUBE_NAMES, max_size=4, unique=True))
    return [
        QubeNet(
            name=n,
            bridge=f"qb{i}",
            gateway_ip=f"10.89.{i}.1",
            behind_gateway=draw(st.booleans()),
            rules=draw(_RULE_LISTS),
            dns_servers=draw(_DNS_SERVERS),
        )
        for i, n in enumerate(names)
    ]


@settings(max_examples=30, deadline=None)
@given(_qube_lists())
def test_host_table_always_parses(qubes):
    assert set(HOSTNAMES) <= set(RESOLVED)
    nft_check(host_table(TABLE, qubes, RESOLVED, NOW))


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(_QUBE_NAMES, _RULE_LISTS), max_size=3, unique_by=lambda t: t[0]),
    st.sampled_from([None, "10.89.0.1"]),
)
def test_gateway_table_always_parses(clients, resolver):
    links = [ClientLink(name, f"eth{i + 1}", f"10.90.{i}.1", rule_list) for i, (name, rule_list) in enumerate(clients)]
    nft_check(gateway_table(TABLE, "eth0", resolver, links, RESOLVED, NOW))


def test_nft_check_catches_a_bad_script():
    # The helper the whole file relies on must be able to fail.
    with pytest.raises(AssertionError, match="nft -c rejected"):
        nft_check(f"table inet {TABLE} {{\n\tchain c {{\n\t\tmeta l4proto tcp dport 53 accept\n\t}}\n}}\n")
