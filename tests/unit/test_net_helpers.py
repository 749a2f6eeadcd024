"""Pure helpers of the network manager and the firewall CLI."""

from __future__ import annotations

import json
import re

import pytest

from qlite.cli.commands import split_firewall_flags
from qlite.core.qubes import QubeManager
from qlite.engines.base import NetworkInfo
from qlite.errors import InvalidValue
from qlite.net.firewall import Rule
from qlite.net.manager import (
    NetworkManager,
    bridge_name,
    gateway_address,
    gateway_mac,
    host_table_name,
    parse_dns_servers,
)
from tests.unit.conftest import insert_row


def test_bridge_names_are_short_stable_and_distinct():
    names = {bridge_name(h, q) for h in ("aaaa", "bbbb") for q in ("work", "vault", "disp12")}
    assert len(names) == 6
    for n in names:
        assert re.fullmatch(r"qb[0-9a-f]{12}", n) and len(n) <= 15  # IFNAMSIZ - 1
    assert bridge_name("aaaa", "work") == bridge_name("aaaa", "work")


@pytest.mark.parametrize(
    "subnet, expected",
    [
        ("10.89.3.0/24", "10.89.3.254"),
        ("10.89.0.0/16", "10.89.255.254"),
        ("192.168.7.0/30", "192.168.7.2"),
    ],
)
def test_gateway_address_is_the_last_host(subnet, expected):
    assert gateway_address(NetworkInfo(name="n", labels={}, subnets=(subnet,))) == expected


def test_gateway_mac_is_locally_administered_unicast_and_stable():
    mac = gateway_mac("h", "gw", "client")
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac)
    assert mac == gateway_mac("h", "gw", "client") != gateway_mac("h", "gw", "other")


def test_host_table_name():
    assert host_table_name("0123456789") == "qlite-0123456789"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("198.18.1.2", ("198.18.1.2",)),
        ("198.18.1.2 198.18.1.3", ("198.18.1.2", "198.18.1.3")),
        ("198.18.1.2,198.18.1.3", ("198.18.1.2", "198.18.1.3")),
        ("", ()),
    ],
)
def test_parse_dns_servers(text, expected):
    assert parse_dns_servers(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "::1", "1.2.3", "1.2.3.4; rm"])
def test_parse_dns_servers_rejects(text):
    with pytest.raises(InvalidValue):
        parse_dns_servers(text)


@pytest.mark.parametrize(
    "words, expected",
    [
        (["accept"], (["accept"], None, False)),
        (["accept", "--before", "2"], (["accept"], 2, False)),
        (["--before=0", "drop", "--json"], (["drop"], 0, True)),
        (["drop", "comment=keep --before 3 --json"], (["drop", "comment=keep --before 3 --json"], None, False)),
        (["drop", "comment=a", "--json"], (["drop", "comment=a", "--json"], None, False)),
    ],
)
def test_split_firewall_flags(words, expected):
    assert split_firewall_flags(words) == expected


@pytest.mark.parametrize("words", [["accept", "--before"], ["accept", "--before", "x"], ["--before=-1"]])
def test_split_firewall_flags_rejects(words):
    with pytest.raises(InvalidValue):
        split_firewall_flags(words)


@pytest.mark.parametrize(
    ("later", "left"),
    [
        (0, ("accept", "accept", "drop")),
        (59, ("accept", "accept", "drop")),
        (60, ("accept", "drop")),  # the rule expires at its second
        (10_000, ("accept", "drop")),
    ],
)
def test_a_rule_leaves_the_live_rules_when_the_clock_passes_its_expiry(ctx, clock, later, left):
    insert_row(QubeManager(ctx), "work")
    rules = (Rule("accept", dsthost="10.9.0.1"), Rule("accept", expire=int(clock.time()) + 60), Rule("drop"))
    ctx.qube_store.set_firewall("work", json.dumps([r.to_json() for r in rules]))
    clock.advance(later)
    assert tuple(r.action for r in NetworkManager(ctx, QubeManager(ctx)).live_rules("work")) == left
