"""Compile Qubes firewall rules into nftables scripts. Pure: no I/O.

Every function returns script text for ``nft -f -``; applying it is another
module's job. A script replaces qlite's own ``inet`` table in one
transaction (create it empty, delete it, define it again) and never names
any other table.

Semantics follow Qubes: per qube an ordered rule list, the first match
wins, no match drops. A rule with a future ``expire`` carries
``meta time < EPOCH`` so the kernel stops matching it by itself; a rule
already expired is left out. Like the Qubes agent, ``proto=icmp`` means
ICMP of the packet's family: ``icmp`` for IPv4 and ``icmpv6`` for IPv6.

Rule comments are kept as nft ``comment "..."`` with every character
outside a conservative whitelist removed and cut to nft's 128 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from qlite.errors import InvalidValue
from qlite.net.firewall import ACTIONS, MAX_EPOCH, PROTOS, SPECIAL_TARGETS, Rule

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
CHAIN_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")
COMMENT_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 _.,:;+=@/()-]")
CHAIN_MAX = 31
CHAIN_HASH_LEN = 10
COMMENT_MAX = 128  # nft: "comment too long, 128 characters maximum allowed"
# nft stores ``meta time`` as nanoseconds in a 64-bit register and silently
# wraps larger values (1 << 40 seconds compiles to a date in 2323, other values
# to the past). An expiry beyond this never comes in practice: leave it out.
NFT_TIME_MAX = 9_223_372_036
DNS_PORT = 53
ESTABLISHED = "ct state established,related"
TCP_UDP = "{ tcp, udp }"


@dataclass(frozen=True)
class QubeNet:
    """One qube as the host's table sees it."""

    name: str
    bridge: str  # host interface of the qube's own podman bridge
    gateway_ip: str  # the host's address on that bridge (aardvark-dns)
    behind_gateway: bool  # True: a gateway qube routes it; the host never forwards it
    rules: tuple[Rule, ...]
    dns_servers: tuple[str, ...]  # where its DNS queries end up (specialtarget=dns)


@dataclass(frozen=True)
class ClientLink:
    """One client qube as its gateway's table sees it."""

    qube: str
    ifname: str  # the link's interface inside the gateway's namespace
    address: str  # the gateway's address on that link (client's DNS and route)
    rules: tuple[Rule, ...]


# -- names and values ------------------------------------------------------


def chain_name(qube: str) -> str:
    """The nft chain of QUBE: ``fw-<safe name>-<hash>``, at most 31 characters.

    The hash is over the full name, so names that sanitise or truncate alike
    still get different chains."""
    digest = hashlib.sha256(qube.encode()).hexdigest()[:CHAIN_HASH_LEN]
    room = CHAIN_MAX - len("fw-") - 1 - CHAIN_HASH_LEN
    safe = CHAIN_UNSAFE_RE.sub("_", qube)[:room]
    return f"fw-{safe}-{digest}"


def _table(table: str) -> str:
    if not TABLE_RE.fullmatch(table):
        raise ValueError(f"unsafe nft table name {table!r}")
    return table


def _ifname(name: str) -> str:
    """NAME double-quoted, after checking it is a plain interface name."""
    if not isinstance(name, str) or not IFNAME_RE.fullmatch(name):
        raise ValueError(f"unsafe interface name {name!r}")
    return f'"{name}"'


def _address(text: str) -> Address:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ValueError(f"scoped address {text!r} in an nft script")
    return addr


def _network(text: str) -> Network:
    if "%" in text:
        raise ValueError(f"scoped network {text!r} in an nft script")
    return ipaddress.ip_network(text)


def _net_text(net: Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else net.with_prefixlen


def _family_kw(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _daddr(addr: Address) -> str:
    return f"{_family_kw(addr.version)} daddr {addr}"


def _unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} given twice")
        seen.add(name)


def _comment(text: str | None) -> str:
    if text is None:
        return ""
    safe = COMMENT_UNSAFE_RE.sub("", text).strip()[:COMMENT_MAX].strip()
    return f' comment "{safe}"' if safe else ""


# -- rules -----------------------------------------------------------------


def _resolved(name: str, resolved: Mapping[str, Sequence[str]]) -> list[Address]:
    texts = resolved.get(name) or ()
    if not texts:
        raise InvalidValue(f"cannot resolve dsthost={name}")
    return [_address(t) for t in texts]


def _address_sets(addresses: Iterable[Address]) -> list[tuple[int, str]]:
    """One ``ip daddr { ... }`` / ``ip6 daddr { ... }`` match per family present."""
    addresses = list(addresses)
    out = []
    for version in (4, 6):
        group = sorted({a for a in addresses if a.version == version})
        if group:
            out.append((version, f"{_family_kw(version)} daddr {{ {', '.join(map(str, group))} }}"))
    return out


def _destinations(
    rule: Rule, dns_servers: Sequence[str], resolved: Mapping[str, Sequence[str]]
) -> list[tuple[int | None, str]]:
    """The destination matches of RULE as (family or None, text) alternatives.

    An empty list means the rule can match nothing."""
    if rule.specialtarget == "dns":
        return list(_address_sets(_address(s) for s in dns_servers))
    if rule.dsthost is None:
        return [(None, "")]
    if rule.dst_hostname is not None:
        return list(_address_sets(_resolved(rule.dst_hostname, resolved)))
    net = _network(rule.dsthost)
    return [(net.version, f"{_family_kw(net.version)} daddr {_net_text(net)}")]


def _protocol(rule: Rule, family: int | None) -> list[str]:
    """The protocol matches of RULE for a destination FAMILY (None: any)."""
    if rule.specialtarget == "dns":
        protos = rule.proto or TCP_UDP
        return [f"meta l4proto {protos} th dport {DNS_PORT}"]
    if rule.proto is None:
        return [""]
    if rule.proto == "icmp":
        families = (4, 6) if family is None else (family,)
        return [_icmp(rule.icmptype, f) for f in families]
    text = f"meta l4proto {rule.proto}"
    if rule.dstports is not None:
        low, high = rule.dstports
        text += f" {rule.proto} dport {low}" if low == high else f" {rule.proto} dport {low}-{high}"
    return [text]


def _icmp(icmptype: int | None, family: int) -> str:
    proto, kw = ("icmp", "icmp") if family == 4 else ("ipv6-icmp", "icmpv6")
    text = f"meta l4proto {proto}"
    return text if icmptype is None else f"{text} {kw} type {icmptype}"


def _check_rule(rule: Rule) -> None:
    """Rules normally come from the parser; one built by hand must not put
    arbitrary text into the script either."""
    ok = (
        rule.action in ACTIONS
        and rule.proto in (None, *PROTOS)
        and rule.specialtarget in (None, *SPECIAL_TARGETS)
        and (rule.icmptype is None or _is_int(rule.icmptype, 0, 255))
        and (rule.expire is None or _is_int(rule.expire, 1, MAX_EPOCH))
        and (
            rule.dstports is None
            or (
                len(rule.dstports) == 2
                and all(_is_int(p, 1, 65535) for p in rule.dstports)
                and rule.dstports[0] <= rule.dstports[1]
            )
        )
    )
    if not ok:
        raise ValueError(f"malformed firewall rule {rule!r}")


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _rule_lines(rule: Rule, dns_servers: Sequence[str], resolved: Mapping[str, Sequence[str]], now: float) -> list[str]:
    _check_rule(rule)
    if rule.expired(now):
        return []
    time = f"meta time < {rule.expire}" if rule.expire is not None and rule.expire <= NFT_TIME_MAX else ""
    verdict = rule.action + _comment(rule.comment)
    lines = []
    for family, dest in _destinations(rule, dns_servers, resolved):
        for proto in _protocol(rule, family):
            lines.append(" ".join(part for part in (time, dest, proto, verdict) if part))
    return lines


def compile_rules(
    rules: Sequence[Rule], dns_servers: Sequence[str], resolved: Mapping[str, Sequence[str]], now: float
) -> list[str]:
    """The nft rule lines for RULES, in order (one rule may need several lines,
    e.g. one per address family). Expired rules and DNS rules without servers
    are left out. Raises InvalidValue for a host name missing from RESOLVED."""
    lines: list[str] = []
    for rule in rules:
        lines.extend(_rule_lines(rule, dns_servers, resolved, now))
    return lines


def _rule_chain(
    name: str, rules: Sequence[Rule], dns_servers: Sequence[str], resolved: Mapping[str, Sequence[str]], now: float
) -> list[str]:
    body = [f"{ESTABLISHED} accept", *compile_rules(rules, dns_servers, resolved, now), "drop"]
    return _chain(name, None, body)


# -- dns_allowed -----------------------------------------------------------


def _matches_dns(rule: Rule, server: Address, proto: str, resolved: Mapping[str, Sequence[str]]) -> bool:
    if rule.icmptype is not None or rule.proto not in (None, proto):
        return False
    if rule.dstports is not None and not rule.dstports[0] <= DNS_PORT <= rule.dstports[1]:
        return False
    if rule.specialtarget == "dns" or rule.dsthost is None:
        return True  # SERVER is the only DNS server
    if rule.dst_hostname is not None:
        return server in _resolved(rule.dst_hostname, resolved)
    return server in _network(rule.dsthost)


def _dns_deciders(
    rules: Sequence[Rule], server: str, resolved: Mapping[str, Sequence[str]], now: float
) -> list[Rule | None]:
    """The first live rule matching DNS to SERVER, for udp and for tcp."""
    addr = _address(server)
    live = [r for r in rules if not r.expired(now)]
    return [next((r for r in live if _matches_dns(r, addr, proto, resolved)), None) for proto in ("udp", "tcp")]


def dns_allowed(rules: Sequence[Rule], server: str, resolved: Mapping[str, Sequence[str]], now: float) -> bool:
    """Whether RULES let DNS (udp and tcp, port 53) reach SERVER: for both
    protocols the first matching rule not expired at NOW accepts. A rule
    that expires later counts."""
    return all(r is not None and r.action == "accept" for r in _dns_deciders(rules, server, resolved, now))


def _dns_until(rules: Sequence[Rule], server: str, resolved: Mapping[str, Sequence[str]], now: float) -> str:
    """The ``meta time`` bound for the host's DNS accept: the earliest expiry
    among the deciding rules, so the accept ends with them (failing closed
    until the table is applied again) instead of outliving them."""
    expires = [
        r.expire
        for r in _dns_deciders(rules, server, resolved, now)
        if r is not None and r.expire is not None and r.expire <= NFT_TIME_MAX
    ]
    return f"meta time < {min(expires)} " if expires else ""


# -- tables ----------------------------------------------------------------


def _chain(name: str, header: str | None, body: Sequence[str]) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if header:
        lines.append(f"\t\t{header}")
    lines.extend(f"\t\t{line}" for line in body)
    lines.append("\t}")
    return lines


def _ifname_set(name: str, quoted: Sequence[str]) -> list[str]:
    lines = [f"\tset {name} {{", "\t\ttype ifname"]
    if quoted:  # nft rejects "elements = { }"
        lines.append(f"\t\telements = {{ {', '.join(quoted)} }}")
    lines.append("\t}")
    return lines


def _script(table: str, blocks: Sequence[list[str]]) -> str:
    """Replace ``inet TABLE`` atomically: create it if missing, delete it,
    define it again, all in the one transaction of ``nft -f``."""
    table = _table(table)
    lines = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
    for block in blocks:
        lines.extend(block)
    lines.append("}")
    return "\n".join(lines) + "\n"


def host_table(table: str, qubes: Sequence[QubeNet], resolved: Mapping[str, Sequence[str]], now: float) -> str:
    """The host's nft script: isolates every qube's bridge, forwards only
    what each routed qube's rules accept, and lets a qube reach the host only
    for DNS on its gateway address (when its rules allow that)."""
    _unique((q.name for q in qubes), "qube")
    _unique((chain_name(q.name) for q in qubes), "chain")
    _unique((q.bridge for q in qubes), "bridge")
    bridges = [(q, _ifname(q.bridge)) for q in qubes]
    for q in qubes:
        _address(q.gateway_ip)
    routed = [(q, br) for q, br in bridges if not q.behind_gateway]

    forward = [f"iifname {br} oifname {br} accept" for _, br in bridges]
    forward += [f"oifname @bridges {ESTABLISHED} accept", "oifname @bridges drop"]
    forward += [f"iifname {br} jump {chain_name(q.name)}" for q, br in routed]
    forward += [f"iifname {br} drop" for q, br in bridges if q.behind_gateway]

    inputs = [f"iifname @bridges {ESTABLISHED} accept"]
    for q, br in routed:
        if dns_allowed(q.rules, q.gateway_ip, resolved, now):
            inputs.append(
                f"iifname {br} {_dns_until(q.rules, q.gateway_ip, resolved, now)}"
                f"{_daddr(_address(q.gateway_ip))} "
                f"meta l4proto {TCP_UDP} th dport {DNS_PORT} accept"
            )
    inputs.append("iifname @bridges drop")

    blocks = [
        _ifname_set("bridges", [br for _, br in bridges]),
        _chain("forward", "type filter hook forward priority filter - 5; policy accept;", forward),
        _chain("input", "type filter hook input priority filter - 5; policy accept;", inputs),
    ]
    blocks += [_rule_chain(chain_name(q.name), q.rules, q.dns_servers, resolved, now) for q, _ in routed]
    return _script(table, blocks)


def gateway_table(
    table: str,
    upstream: str,
    resolver: str | None,
    clients: Sequence[ClientLink],
    resolved: Mapping[str, Sequence[str]],
    now: float,
) -> str:
    """A gateway qube's nft script (applied in its network namespace): each
    client reaches UPSTREAM only as its rules allow, NAT'd; its DNS to the
    gateway's link address goes to RESOLVER; nothing else crosses."""
    up = _ifname(upstream)
    _unique((c.qube for c in clients), "client")
    _unique((chain_name(c.qube) for c in clients), "chain")
    _unique([upstream, *(c.ifname for c in clients)], "interface")
    links = [(c, _ifname(c.ifname), _address(c.address)) for c in clients]
    resolver_addr = _address(resolver) if resolver is not None else None
    dns_servers = (str(resolver_addr),) if resolver_addr is not None else ()

    forward = [f"{ESTABLISHED} accept"]
    forward += [f"iifname {name} oifname {up} jump {chain_name(c.qube)}" for c, name, _ in links]
    output = [f"oifname @clients {ESTABLISHED} accept", "oifname @clients drop"]
    prerouting = []
    if resolver_addr is not None:
        for _, name, addr in links:
            if addr.version != resolver_addr.version:
                raise ValueError(f"cannot DNAT DNS for {addr} to {resolver_addr}: address families differ")
            prerouting.append(
                f"iifname {name} {_daddr(addr)} meta l4proto {TCP_UDP} th dport {DNS_PORT} "
                f"dnat {_family_kw(addr.version)} to {resolver_addr}"
            )

    blocks = [
        _ifname_set("clients", [name for _, name, _ in links]),
        _chain("forward", "type filter hook forward priority filter; policy drop;", forward),
        _chain("output", "type filter hook output priority filter; policy accept;", output),
        _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", prerouting),
        _chain(
            "postrouting", "type nat hook postrouting priority srcnat; policy accept;", [f"oifname {up} masquerade"]
        ),
    ]
    blocks += [_rule_chain(chain_name(c.qube), c.rules, dns_servers, resolved, now) for c, _, _ in links]
    return _script(table, blocks)
