"""Per-qube networks, gateway qubes and their firewalls.

Topology:
- Every networked qube has a podman bridge of its own, so no two qubes
  share a link.
- A qube whose netvm is ``dom0`` uses its bridge's NAT to the host's uplink.
  The host's nftables table for this home (``qlite-<homehash>``) applies the
  qube's firewall to what it forwards, drops anything new that would enter a
  qube's link (so qubes cannot reach each other), and lets qubes reach the
  host itself only for DNS.
- A qube whose netvm is a gateway qube (``provides_network``) gets an
  internal bridge: no NAT, no route via the host. The gateway joins that
  bridge at the last address of its subnet, and the client's default route
  and DNS server point there. qlite applies, inside the gateway's network
  namespace (from the host, where the gateway's own processes cannot change
  them), forwarding, masquerading, DNS forwarding and the client's rules.

Every set of rules is compiled from the store by ``qlite.net.nft`` and
loaded atomically. If rules cannot be loaded, the qube gets no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from qlite.domain.context import Context
from qlite.domain.model import HOST_UPLINK, Qube
from qlite.domain.ports import NetQubes
from qlite.domain.spec import container_name, engine_labels, network_name
from qlite.engines.base import ContainerInfo, NetworkInfo
from qlite.errors import EngineError, InvalidValue, NotFound, QliteError, StateError
from qlite.net import nft
from qlite.net.firewall import DEFAULT_RULES, Rule, rule_from_json, shadowed_by
from qlite.progress import file_lock

GATEWAY_TABLE = "qlite-gw"
DNS_FEATURE = "net.dns-servers"


def bridge_name(home_hash: str, qube: str) -> str:
    """The host interface of a qube's bridge: short, stable, unique."""
    return "qb" + hashlib.sha256(f"{home_hash}/{qube}".encode()).hexdigest()[:12]


def host_table_name(home_hash: str) -> str:
    return f"qlite-{home_hash}"


def gateway_address(network: NetworkInfo) -> str:
    """The gateway qube's address on a client's link: the subnet's last host."""
    subnet = ipaddress.ip_network(network.subnets[0])
    return str(subnet.broadcast_address - 1)


def gateway_mac(home_hash: str, gateway: str, client: str) -> str:
    """A fixed, locally administered MAC for the gateway's side of a client's
    link: a restarted gateway keeps it, so clients' ARP entries stay right."""
    digest = hashlib.sha256(f"{home_hash}/{gateway}/{client}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def parse_dns_servers(text: str) -> tuple[str, ...]:
    servers = []
    for word in text.replace(",", " ").split():
        try:
            servers.append(str(ipaddress.IPv4Address(word)))
        except ValueError:
            raise InvalidValue(f"{DNS_FEATURE}: {word!r} is not an IPv4 address") from None
    return tuple(servers)


@dataclass(frozen=True)
class NetPlan:
    """How a qube's container joins the network."""

    network: str = "none"  # engine network, or "none"
    dns: tuple[str, ...] = ()  # resolv.conf nameservers; () leaves it to the engine
    route_via: str = ""  # default route to set inside the qube (behind a gateway)
    gateway: str = ""  # the gateway qube's name, if any


class NetworkManager:
    def __init__(self, ctx: Context, qubes: NetQubes, warn: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.qubes = qubes
        self.hh = ctx.home_hash
        self.warn = warn or ctx.warn
        self.apply = ctx.net_apply

    # -- firewall rules in the store -----------------------------------------

    def rules(self, name: str) -> tuple[Rule, ...]:
        stored = self.ctx.qube_store.firewall(name)
        if stored is None:
            return DEFAULT_RULES
        return tuple(rule_from_json(d) for d in json.loads(stored))

    def live_rules(self, name: str) -> tuple[Rule, ...]:
        """The rules without the ones whose expiry has passed."""
        now = self.ctx.clock.time()
        return tuple(r for r in self.rules(name) if not r.expired(now))

    def set_rules(self, name: str, rules: tuple[Rule, ...]) -> None:
        """Store RULES for NAME and load them. If loading fails, the previous
        rules stay, both in the store and in the kernel."""
        q = self.qubes.get(name)
        previous = self.ctx.qube_store.firewall(name)
        self.ctx.qube_store.set_firewall(name, json.dumps([r.to_json() for r in rules]))
        try:
            self.resolve(rules)
            self.reload(self.gateway_of(q))
        except BaseException:
            self.ctx.qube_store.set_firewall(name, previous)
            raise

    def add_rule(self, name: str, rule: Rule, before: int | None = None) -> tuple[Rule, ...]:
        """Insert RULE before rule number BEFORE (at the end if None)."""
        rules = list(self.live_rules(self.qubes.get(name).name))
        position = len(rules) if before is None else before
        if not 0 <= position <= len(rules):
            raise InvalidValue(f"--before {before}: there are rules 0..{len(rules) - 1}")
        rules.insert(position, rule)
        self.set_rules(name, tuple(rules))
        first = shadowed_by(rules, position)
        if first is not None:
            self.ctx.warn(
                f"rule {position} can never match: rule {first} before it matches everything "
                f"({rules[first].action}); add it with --before {first} instead"
            )
        return tuple(rules)

    def delete_rule(self, name: str, number: int) -> tuple[Rule, ...]:
        rules = list(self.live_rules(self.qubes.get(name).name))
        if not 0 <= number < len(rules):
            raise InvalidValue(f"no rule number {number}; there are rules 0..{len(rules) - 1}")
        del rules[number]
        self.set_rules(name, tuple(rules))
        return tuple(rules)

    def reset_rules(self, name: str) -> tuple[Rule, ...]:
        """Back to Qubes' default: accept everything."""
        self.set_rules(name, DEFAULT_RULES)
        return DEFAULT_RULES

    # -- topology ----------------------------------------------------------------

    def uplink(self, q: Qube) -> str | None:
        """None (offline), HOST_UPLINK, or the name of q's gateway qube."""
        return self.qubes.resolved_netvm(q)

    def clients(self, gateway: str) -> list[Qube]:
        return [q for q in self.qubes.list() if q.name != gateway and self.uplink(q) == gateway]

    def networks(self) -> dict[str, NetworkInfo]:
        """This home's qube networks, by qube name."""
        found = self.ctx.engine.list_networks({"qlite.home": self.hh, "qlite.kind": "net"})
        return {n.labels.get("qlite.qube", ""): n for n in found}

    def dns_override(self, q: Qube) -> tuple[str, ...]:
        text = self.ctx.qube_store.features.all(q.name).get(DNS_FEATURE, "")
        return parse_dns_servers(text) if text else ()

    # -- preparing a qube's network ----------------------------------------------

    def prepare(self, q: Qube) -> NetPlan:
        """Make Q's network ready before its container exists: the bridge,
        the gateway's side of it, and every rule that must hold before Q's
        first packet. Fails closed: if that cannot be done, Q gets no
        network and the reason is reported. A network loop is refused
        outright: it is a mistake to fix, not a network to do without."""
        self.qubes.netvm_chain(q)
        uplink = self.uplink(q)
        if uplink is None:
            return NetPlan()
        try:
            if uplink == HOST_UPLINK:
                return self._prepare_uplink(q)
            return self._prepare_client(q, uplink)
        except QliteError as exc:
            self.warn(f"the network of {q.name} could not be set up safely, so it runs without one: {exc}")
            self.drop_network(q)
            return NetPlan()

    def _prepare_uplink(self, q: Qube) -> NetPlan:
        net = self.ensure_network(q, internal=False)
        self.apply_host()
        dns = self.dns_override(q)
        return NetPlan(network=net.name, dns=dns)

    def _prepare_client(self, q: Qube, gateway_name: str) -> NetPlan:
        if self.ctx.runtime_probe is not None and self.ctx.runtime_probe.netstack:
            raise StateError("qubes behind a gateway qube need runsc's host-netns path in this version")
        gateway = self.qubes.get(gateway_name)
        net = self.ensure_network(q, internal=True)
        address = gateway_address(net)
        self.apply_host()
        g_info = self.qubes.ensure_running(gateway)
        self._connect_gateway(gateway, g_info, q, net)
        self.apply_gateway(gateway)
        return NetPlan(network=net.name, dns=(address,), route_via=address, gateway=gateway.name)

    def after_init(self, q: Qube, info: ContainerInfo, plan: NetPlan) -> None:
        """Between the container's setup and its first process: point its
        default route at its gateway (its bridge has none of its own)."""
        if not plan.route_via:
            return
        if not info.netns:
            raise EngineError(f"{q.name} has no network namespace to route")
        self.apply.set_default_route(info.netns, plan.route_via)

    def ensure_network(self, q: Qube, internal: bool) -> NetworkInfo:
        engine = self.ctx.engine
        wanted = bridge_name(self.hh, q.name)
        existing = self.networks().get(q.name)
        if existing is not None:
            if existing.interface == wanted and existing.internal == internal:
                return existing
            self.drop_network(q)  # made for another netvm (or by an older qlite)
        return engine.create_network(
            network_name(self.hh, q.name),
            engine_labels(self.hh, q.name, "net", q.owner),
            internal=internal,
            interface=wanted,
        )

    def _connect_gateway(self, gateway: Qube, g_info: ContainerInfo, client: Qube, net: NetworkInfo) -> None:
        if net.name in g_info.networks:
            return
        mac = gateway_mac(self.hh, gateway.name, client.name)
        self.ctx.engine.connect_network(g_info.id, net.name, static_ip=gateway_address(net), static_mac=mac)

    def gateway_started(self, gateway: Qube) -> None:
        """After a gateway starts: join every client's link and load its rules."""
        nets = self.networks()
        info = self._running_info(gateway)
        if info is None:
            return
        for client in self.clients(gateway.name):
            net = nets.get(client.name)
            if net is not None and net.internal:
                self._connect_gateway(gateway, info, client, net)
        self.apply_gateway(gateway)

    # -- releasing ----------------------------------------------------------------

    def drop_network(self, q: Qube) -> None:
        """Remove Q's network; a gateway on it leaves the link first (podman
        would otherwise refuse, or with force remove the gateway itself)."""
        net = self.networks().get(q.name)
        if net is None:
            return
        if net.internal:  # only a client's link has a gateway on it
            for gw in self._gateways_on(net):
                self.ctx.engine.disconnect_network(gw.id, net.name)
        self.ctx.engine.remove_network(net.name)

    def _gateways_on(self, net: NetworkInfo) -> list[ContainerInfo]:
        out = []
        for c in self.ctx.engine.list_containers({"qlite.home": self.hh}):
            if c.state not in ("running", "paused", "created"):
                continue
            info = self.ctx.engine.inspect_container(c.id)
            if (
                info is not None
                and net.name in info.networks
                and info.labels.get("qlite.qube") != net.labels.get("qlite.qube")
            ):
                out.append(info)
        return out

    def gateway_of(self, q: Qube) -> str | None:
        uplink = self.uplink(q)
        return None if uplink in (None, HOST_UPLINK) else uplink

    def reload(self, gateway: str | None = None) -> None:
        """Reload the host table, and GATEWAY's table if it runs."""
        self.apply_host()
        if gateway is not None:
            try:
                g = self.qubes.get(gateway)
            except NotFound:
                return
            self.apply_gateway(g)

    # -- compiling and loading ---------------------------------------------------

    def resolve(self, rules: tuple[Rule, ...]) -> dict[str, tuple[str, ...]]:
        """Host names in RULES resolved now, as Qubes does when rules load."""
        out: dict[str, tuple[str, ...]] = {}
        for rule in rules:
            name = rule.dst_hostname
            if name is None or name in out:
                continue
            try:
                infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise InvalidValue(f"cannot resolve dsthost={name}: {exc.strerror or exc}") from None
            out[name] = tuple(sorted({str(i[4][0]) for i in infos}))
        return out

    def host_nets(self) -> list[nft.QubeNet]:
        nets = self.networks()
        out = []
        for q in self.qubes.list():
            net = nets.get(q.name)
            uplink = self.uplink(q)
            if net is None or not net.interface or uplink is None:
                continue
            gateway_ip = net.gateways[0] if net.gateways else str(ipaddress.ip_network(net.subnets[0])[1])
            behind = uplink != HOST_UPLINK
            dns = self.dns_override(q) or (gateway_ip,)
            out.append(
                nft.QubeNet(
                    name=q.name,
                    bridge=net.interface,
                    gateway_ip=gateway_ip,
                    behind_gateway=behind,
                    rules=self.live_rules(q.name),
                    dns_servers=dns,
                )
            )
        return out

    @contextlib.contextmanager
    def _tables_locked(self) -> Iterator[None]:
        """Held from reading what a table covers until it is loaded. Each
        load replaces the whole table, so without it a command that read the
        qubes before a new one's network existed could load its table after
        the new qube's own, and leave that qube running without its rules."""
        self.ctx.paths.run_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.ctx.paths.tables_lock):
            yield

    def apply_host(self) -> None:
        with self._tables_locked():
            nets = self.host_nets()
            if not nets:  # nothing to guard: leave no table behind in the kernel
                self.apply.delete_table(host_table_name(self.hh))
                return
            resolved: dict[str, tuple[str, ...]] = {}
            for n in nets:
                resolved.update(self.resolve(n.rules))
            script = nft.host_table(host_table_name(self.hh), nets, resolved, self.ctx.clock.time())
            self.apply.apply_nft(script)

    def apply_gateway(self, gateway: Qube) -> None:
        with self._tables_locked():
            self._apply_gateway(gateway)

    def _apply_gateway(self, gateway: Qube) -> None:
        info = self._running_info(gateway)
        if info is None or not info.netns:
            return
        own = self.networks().get(gateway.name)
        if own is None or own.name not in info.networks:
            raise StateError(f"gateway {gateway.name} has no upstream network")
        upstream = self.apply.interface_by_mac(info.netns, info.networks[own.name].mac)
        resolver = self._resolver_of(gateway, own)
        links = []
        rules: list[Rule] = []
        for client in self.clients(gateway.name):
            net = self.networks().get(client.name)
            if net is None or net.name not in info.networks:
                continue
            att = info.networks[net.name]
            client_rules = self.live_rules(client.name)
            rules.extend(client_rules)
            links.append(
                nft.ClientLink(
                    qube=client.name,
                    ifname=self.apply.interface_by_mac(info.netns, att.mac),
                    address=att.ip,
                    rules=client_rules,
                )
            )
        script = nft.gateway_table(
            GATEWAY_TABLE, upstream, resolver, links, self.resolve(tuple(rules)), self.ctx.clock.time()
        )
        self.apply.enable_forwarding(info.netns)
        self.apply.apply_nft(script, info.netns)

    def _resolver_of(self, gateway: Qube, own: NetworkInfo) -> str | None:
        override = self.dns_override(gateway)
        if override:
            return override[0]
        if self.uplink(gateway) == HOST_UPLINK:
            return own.gateways[0] if own.gateways else str(ipaddress.ip_network(own.subnets[0])[1])
        return gateway_address(own)  # its own gateway's address on its link

    def _running_info(self, q: Qube) -> ContainerInfo | None:
        info = self.ctx.engine.inspect_container(container_name(self.hh, q.name))
        if info is None or info.state not in ("running", "paused", "created"):
            return None
        return info

    def address_of(self, q: Qube) -> str:
        """Q's address on its own network, or '' when it is not running."""
        info = self._running_info(q)
        if info is None:
            return ""
        att = info.networks.get(network_name(self.hh, q.name))
        return att.ip if att else ""
