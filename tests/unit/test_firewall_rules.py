"""The Qubes firewall rule model, parser and formatter (qlite/net/firewall.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.errors import InvalidValue
from qlite.net.firewall import (
    ACTIONS,
    DEFAULT_RULES,
    KEYS,
    MAX_COMMENT,
    MAX_EPOCH,
    Rule,
    parse_rule,
    rule_from_json,
)

NOW = 1_700_000_000.5
HOSTNAMES = ("example.com", "dns.example", "v6.example")


# -- strategies (test_nft.py uses them too) -----------------------------------


def _network(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
        st.ip_addresses(v=version),
        st.integers(0, bits),
    )


ADDRESSES = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), _network(4), _network(6))
KNOWN_HOSTS = st.sampled_from(HOSTNAMES)  # test_nft.py resolves exactly these
ANY_HOSTS = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True)
COMMENT_WORD = st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C")), min_size=1, max_size=12)
COMMENTS = st.lists(COMMENT_WORD, max_size=6).map(" ".join).filter(lambda c: len(c) <= MAX_COMMENT)


NO_COMMENT = st.none()


@st.composite
def valid_rules(
    draw,
    comments: st.SearchStrategy[str | None] = NO_COMMENT,
    hostnames: st.SearchStrategy[str] = KNOWN_HOSTS,
    now: float = NOW,
) -> Rule:
    """Any rule parse_rule accepts: consistent protocol, ports and icmp type,
    a future expiry."""
    special = draw(st.sampled_from([None, None, None, "dns"]))
    dsthost = None if special else draw(st.none() | ADDRESSES | hostnames)
    protos = [None, "tcp", "udp"] if special else [None, "tcp", "udp", "icmp"]
    proto = draw(st.sampled_from(protos))
    dstports = icmptype = None
    if proto in ("tcp", "udp") and not special and draw(st.booleans()):
        low = draw(st.integers(1, 65535))
        dstports = (low, draw(st.integers(low, 65535)))
    if proto == "icmp":
        icmptype = draw(st.none() | st.integers(0, 255))
    expire = draw(st.none() | st.integers(int(now) + 1, MAX_EPOCH))
    return Rule(
        action=draw(st.sampled_from(ACTIONS)),
        dsthost=dsthost,
        proto=proto,
        dstports=dstports,
        icmptype=icmptype,
        specialtarget=special,
        expire=expire,
        comment=draw(comments),
    )


# -- parse_rule: good inputs ---------------------------------------------------

GOOD = [
    ("bare accept", "accept", Rule("accept")),
    ("bare drop", "drop", Rule("drop")),
    ("action key", "action=drop", Rule("drop")),
    ("ipv4 address", "accept dsthost=10.0.0.1", Rule("accept", dsthost="10.0.0.1")),
    ("ipv4 cidr", "drop dsthost=10.0.0.0/8", Rule("drop", dsthost="10.0.0.0/8")),
    ("ipv4 /32", "drop dsthost=10.0.0.1/32", Rule("drop", dsthost="10.0.0.1/32")),
    ("everything", "accept dsthost=0.0.0.0/0", Rule("accept", dsthost="0.0.0.0/0")),
    ("ipv6 address normalised", "accept dsthost=2001:DB8:0::1", Rule("accept", dsthost="2001:db8::1")),
    ("ipv6 cidr", "accept dsthost=2001:db8::/32", Rule("accept", dsthost="2001:db8::/32")),
    (
        "hostname lowered, root dot dropped",
        "accept dsthost=WWW.Example.COM.",
        Rule("accept", dsthost="www.example.com"),
    ),
    ("single-label hostname", "accept dsthost=localhost", Rule("accept", dsthost="localhost")),
    ("digit-led hostname", "accept dsthost=1e100.net", Rule("accept", dsthost="1e100.net")),
    ("tcp port", "accept proto=tcp dstports=443", Rule("accept", proto="tcp", dstports=(443, 443))),
    ("udp range", "accept proto=udp dstports=80-90", Rule("accept", proto="udp", dstports=(80, 90))),
    ("full range", "accept proto=tcp dstports=1-65535", Rule("accept", proto="tcp", dstports=(1, 65535))),
    ("port 65535", "accept proto=tcp dstports=65535", Rule("accept", proto="tcp", dstports=(65535, 65535))),
    ("proto only", "drop proto=udp", Rule("drop", proto="udp")),
    ("icmp", "accept proto=icmp", Rule("accept", proto="icmp")),
    ("icmp type", "accept proto=icmp icmptype=8", Rule("accept", proto="icmp", icmptype=8)),
    ("icmp type 0", "accept proto=icmp icmptype=0", Rule("accept", proto="icmp", icmptype=0)),
    ("icmp type 255", "accept proto=icmp icmptype=255", Rule("accept", proto="icmp", icmptype=255)),
    ("dns", "accept specialtarget=dns", Rule("accept", specialtarget="dns")),
    ("dns udp", "accept specialtarget=dns proto=udp", Rule("accept", specialtarget="dns", proto="udp")),
    ("relative expire", "drop expire=+60", Rule("drop", expire=1_700_000_060)),
    ("absolute expire", "drop expire=1800000000", Rule("drop", expire=1_800_000_000)),
    ("comment takes the rest", "accept comment=hello big world", Rule("accept", comment="hello big world")),
    ("comment swallows key=value words", "accept comment=a=b proto=tcp", Rule("accept", comment="a=b proto=tcp")),
    ("empty comment", "accept comment=", Rule("accept", comment="")),
    (
        "key order free",
        "proto=tcp dstports=22 action=accept dsthost=192.168.1.0/24",
        Rule("accept", dsthost="192.168.1.0/24", proto="tcp", dstports=(22, 22)),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, r) for _, t, r in GOOD], ids=[i for i, _, _ in GOOD])
def test_parse_rule_good(text, expected):
    rule = parse_rule(text.split(), NOW)
    assert rule == expected
    assert parse_rule(rule.format().split(), NOW) == rule
    assert rule_from_json(rule.to_json()) == rule


# -- parse_rule: bad inputs ----------------------------------------------------

BAD = [
    ("no words", "", "empty rule"),
    ("bare word", "accept tcp", "expected key=value"),
    ("bare action later", "dsthost=example.com accept", "expected key=value"),
    ("no action", "dsthost=10.0.0.1", "action= is required"),
    ("bad action", "action=reject", "action must be accept or drop"),
    ("bare reject", "reject", "expected key=value"),
    ("action twice", "accept action=drop", "action= given twice"),
    ("duplicate key", "accept proto=tcp proto=udp", "proto= given twice"),
    ("unknown key", "accept port=80", "unknown rule field 'port'"),
    ("empty key", "accept =x", "unknown rule field ''"),
    ("key case matters", "accept Proto=tcp", "unknown rule field 'Proto'"),
    ("bad proto", "accept proto=sctp", "proto must be tcp, udp or icmp"),
    ("empty dsthost", "accept dsthost=", "dsthost= is empty"),
    ("strict cidr", "accept dsthost=10.0.0.1/8", "is not a valid address or network"),
    ("bad prefix", "accept dsthost=10.0.0.0/33", "is not a valid address or network"),
    ("bad octet", "accept dsthost=10.0.0.256", "is not a valid address or network"),
    ("short dotted quad", "accept dsthost=1.2.3", "is not a valid address or network"),
    ("leading zero", "accept dsthost=010.0.0.1", "is not a valid address or network"),
    ("bad ipv6", "accept dsthost=2001:db8:::1", "is not a valid address or network"),
    ("hostname with slash", "accept dsthost=example.com/24", "is not a valid address or network"),
    ("scoped ipv6", "accept dsthost=fe80::1%eth0", "scoped addresses"),
    ("scoped ipv6 injection", "accept dsthost=fe80::1%x;flush", "scoped addresses"),
    ("scoped ipv6 network", "accept dsthost=fe80::%x/64", "scoped addresses"),
    ("underscore hostname", "accept dsthost=bad_host.com", "not an address, a network or a host name"),
    ("hostname label dash", "accept dsthost=-bad.com", "not an address, a network or a host name"),
    ("hostname too long", "accept dsthost=" + ".".join(["a" * 60] * 5), "not an address, a network or a host name"),
    ("port 0", "accept proto=tcp dstports=0", "ports run from 1 to 65535"),
    ("port 65536", "accept proto=tcp dstports=65536", "ports run from 1 to 65535"),
    ("reversed range", "accept proto=tcp dstports=90-80", "ports run from 1 to 65535"),
    ("range from 0", "accept proto=udp dstports=0-80", "ports run from 1 to 65535"),
    ("port name", "accept proto=tcp dstports=http", "expected N or N-M"),
    ("open range", "accept proto=tcp dstports=80-", "expected N or N-M"),
    ("port list", "accept proto=tcp dstports=80,443", "expected N or N-M"),
    ("six digits", "accept proto=tcp dstports=000080", "expected N or N-M"),
    ("ports without proto", "accept dstports=80", "dstports= needs proto=tcp or proto=udp"),
    ("ports with icmp", "accept proto=icmp dstports=80", "dstports= needs proto=tcp or proto=udp"),
    ("icmptype without proto", "accept icmptype=8", "icmptype= needs proto=icmp"),
    ("icmptype with tcp", "accept proto=tcp icmptype=8", "icmptype= needs proto=icmp"),
    ("icmptype 256", "accept proto=icmp icmptype=256", "out of range"),
    ("icmptype negative", "accept proto=icmp icmptype=-1", "expected a whole number"),
    ("icmptype name", "accept proto=icmp icmptype=echo-request", "expected a whole number"),
    ("icmptype huge", "accept proto=icmp icmptype=" + "9" * 5000, "out of range"),
    ("bad special target", "accept specialtarget=ntp", "specialtarget must be dns"),
    ("special target with dsthost", "accept specialtarget=dns dsthost=10.0.0.1", "cannot be combined with dsthost"),
    ("special target with ports", "accept specialtarget=dns proto=tcp dstports=53", "means port 53"),
    ("special target with icmp", "accept specialtarget=dns proto=icmp", "means port 53"),
    ("past absolute expire", "drop expire=1000", "already in the past"),
    ("expire now", f"drop expire={int(NOW)}", "already in the past"),
    ("relative zero", "drop expire=+0", "out of range"),
    ("relative too far", f"drop expire=+{11 * 365 * 86400}", "out of range"),
    ("relative word", "drop expire=+soon", "expected a whole number"),
    ("expire date", "drop expire=2030-01-01", "expected a whole number"),
    ("expire beyond max", f"drop expire={MAX_EPOCH + 1}", "out of range"),
    ("expire huge", "drop expire=" + "1" * 5000, "out of range"),
    ("long comment", "accept comment=" + "x" * (MAX_COMMENT + 1), "at most"),
]


@pytest.mark.parametrize(("text", "fragment"), [(t, f) for _, t, f in BAD], ids=[i for i, _, _ in BAD])
def test_parse_rule_bad(text, fragment):
    with pytest.raises(InvalidValue) as exc:
        parse_rule(text.split(), NOW)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("comment", ["a\nb", "a\rb", "a\0b"])
def test_comment_must_be_one_line(comment):
    with pytest.raises(InvalidValue, match="one line"):
        parse_rule(["accept", f"comment={comment}"], NOW)


def test_relative_expire_rounds_now_down():
    assert parse_rule(["drop", "expire=+1"], 99.9).expire == 100


# -- rule_from_json ------------------------------------------------------------

JSON_BAD = [
    ("not an object", ["action", "accept"], "must be an object"),
    ("no action", {"dsthost": "10.0.0.1"}, "action= is required"),
    ("relative expire", {"action": "drop", "expire": "+60"}, "must be absolute"),
    ("unknown field", {"action": "drop", "ports": 80}, "unknown rule field 'ports'"),
    ("scoped address", {"action": "accept", "dsthost": "fe80::1%x; flush ruleset"}, "scoped addresses"),
    ("bad ports", {"action": "accept", "proto": "tcp", "dstports": 0}, "ports run from 1 to 65535"),
]


@pytest.mark.parametrize(("data", "fragment"), [(d, f) for _, d, f in JSON_BAD], ids=[i for i, _, _ in JSON_BAD])
def test_rule_from_json_bad(data, fragment):
    with pytest.raises(InvalidValue, match=fragment):
        rule_from_json(data)


def test_rule_from_json_keeps_past_expire():
    # A stored rule may have expired since; it is kept and simply never matches.
    rule = rule_from_json({"action": "drop", "expire": 1000})
    assert rule == Rule("drop", expire=1000)
    assert rule.expired(NOW)


def test_to_json_keys_and_ports_text():
    rule = Rule("accept", dsthost="10.0.0.0/8", proto="tcp", dstports=(80, 90), expire=2_000_000_000, comment="x")
    assert rule.to_json() == {
        "action": "accept",
        "dsthost": "10.0.0.0/8",
        "proto": "tcp",
        "dstports": "80-90",
        "expire": 2_000_000_000,
        "comment": "x",
    }
    assert Rule("accept", proto="tcp", dstports=(22, 22)).to_json()["dstports"] == "22"
    assert rule.format() == "action=accept dsthost=10.0.0.0/8 proto=tcp dstports=80-90 expire=2000000000 comment=x"


DST = [
    ("10.0.0.1", ipaddress.ip_network("10.0.0.1/32"), None),
    ("10.0.0.0/8", ipaddress.ip_network("10.0.0.0/8"), None),
    ("2001:db8::/32", ipaddress.ip_network("2001:db8::/32"), None),
    ("example.com", None, "example.com"),
    (None, None, None),
]


@pytest.mark.parametrize(("dsthost", "network", "hostname"), DST)
def test_dst_network_and_hostname(dsthost, network, hostname):
    rule = Rule("accept", dsthost=dsthost)
    assert rule.dst_network == network
    assert rule.dst_hostname == hostname


@pytest.mark.parametrize(
    ("expire", "expired"), [(None, False), (int(NOW) - 1, True), (int(NOW), True), (int(NOW) + 1, False)]
)
def test_expired(expire, expired):
    assert Rule("drop", expire=expire).expired(int(NOW)) is expired


def test_default_rules_accept_everything():
    assert DEFAULT_RULES == (Rule("accept"),)


# -- Hypothesis ----------------------------------------------------------------

_VALUES = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"[0-9a-fA-F+%./:_-]{0,40}", fullmatch=True),
    st.integers(-(10**6), 10**20).map(str),
    st.text("0123456789", min_size=1, max_size=30),
    # int() refuses strings of more than 4300 digits.
    st.builds(lambda digit, n: digit * n, st.sampled_from("0123456789"), st.integers(1, 5000)),
    st.sampled_from(["tcp", "udp", "icmp", "dns", "accept", "drop", "+60", "80-90", "10.0.0.0/8", "::/0"]),
)
_WORDS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ACTIONS),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS + ("bogus", "", "Action")), _VALUES),
)


# Clocks up to the year 2242: relative expiries stay below MAX_EPOCH.
@given(st.lists(_WORDS, max_size=8), st.floats(0, 2.0**33, allow_nan=False))
def test_parse_rule_raises_only_invalid_value(words, now):
    try:
        rule = parse_rule(words, now)
    except InvalidValue as exc:
        assert "\n" not in str(exc)
        return
    # Whatever it accepts is a normal form: storing and reloading keeps it.
    assert rule_from_json(rule.to_json()) == rule


@given(st.dictionaries(st.text(max_size=12) | st.sampled_from(KEYS), _VALUES | st.integers(), max_size=6))
def test_rule_from_json_raises_only_invalid_value(data):
    try:
        rule = rule_from_json(data)
    except InvalidValue:
        return
    assert rule_from_json(rule.to_json()) == rule


@given(valid_rules(hostnames=ANY_HOSTS))
def test_valid_rules_round_trip(rule):
    assert rule_from_json(rule.to_json()) == rule
    assert parse_rule(rule.format().split(), NOW) == rule


@given(valid_rules(comments=COMMENTS, hostnames=ANY_HOSTS))
def test_valid_rules_with_comments_round_trip(rule):
    # The comment is last in format() and takes every remaining word, spaces and all.
    assert rule.format().endswith(f"comment={rule.comment}")
    assert parse_rule(rule.format().split(), NOW) == rule
    assert rule_from_json(rule.to_json()) == rule
