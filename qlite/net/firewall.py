"""Qubes firewall rules: the model, the parser and the formatter. Pure.

A rule is ``action=accept|drop`` plus optional matches, as in
``qvm-firewall``: ``dsthost``, ``proto``, ``dstports``, ``icmptype``,
``specialtarget=dns``, ``expire`` and ``comment``. The first matching rule
wins and no match means drop; a qube with no rules of its own has the
Qubes default, a single ``accept``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from qlite.errors import InvalidValue

ACTIONS = ("accept", "drop")
PROTOS = ("tcp", "udp", "icmp")
SPECIAL_TARGETS = ("dns",)
KEYS = ("action", "dsthost", "proto", "dstports", "icmptype", "specialtarget", "expire", "comment")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){LABEL}(\.{LABEL})*\.?")
PORTS_RE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
MAX_EPOCH = 1 << 40
MAX_COMMENT = 200


@dataclass(frozen=True)
class Rule:
    action: str
    dsthost: str | None = None
    proto: str | None = None
    dstports: tuple[int, int] | None = None
    icmptype: int | None = None
    specialtarget: str | None = None
    expire: int | None = None  # absolute, seconds since the epoch
    comment: str | None = None

    @property
    def dst_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """dsthost as a network when it is an address or CIDR, else None."""
        if self.dsthost is None:
            return None
        try:
            return ipaddress.ip_network(self.dsthost)
        except ValueError:
            return None

    @property
    def dst_hostname(self) -> str | None:
        return self.dsthost if self.dsthost is not None and self.dst_network is None else None

    def expired(self, now: float) -> bool:
        return self.expire is not None and self.expire <= now

    @property
    def matches_everything(self) -> bool:
        """No condition, and no expiry: every packet, for good."""
        return all(
            getattr(self, key) is None
            for key in ("dsthost", "proto", "dstports", "icmptype", "specialtarget", "expire")
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action}
        for key in KEYS[1:]:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = _ports_text(value) if key == "dstports" else value
        return out

    def format(self) -> str:
        """The rule as qvm-firewall spells it: ``key=value`` words."""
        return " ".join(f"{key}={value}" for key, value in self.to_json().items())


DEFAULT_RULES: tuple[Rule, ...] = (Rule("accept"),)


def _ports_text(ports: tuple[int, int]) -> str:
    low, high = ports
    return str(low) if low == high else f"{low}-{high}"


def parse_rule(words: list[str], now: float) -> Rule:
    """Parse ``qlite firewall add`` words. The first word may be a bare
    action (``accept``/``drop``), as qvm-firewall allows; everything after
    ``comment=`` is the comment. ``expire=+N`` is taken relative to NOW."""
    if not words:
        raise InvalidValue("empty rule: give at least action=accept or action=drop")
    fields: dict[str, str] = {}
    words = list(words)
    if words[0] in ACTIONS:
        fields["action"] = words.pop(0)
    for i, word in enumerate(words):
        key, sep, value = word.partition("=")
        if not sep:
            raise InvalidValue(f"bad rule word {word!r}: expected key=value")
        if key == "comment":
            fields["comment"] = " ".join([value, *words[i + 1 :]])
            break
        if key in fields:
            raise InvalidValue(f"{key}= given twice in one rule")
        fields[key] = value
    return rule_from_fields(fields, now)


def rule_from_json(data: dict[str, object]) -> Rule:
    """A stored rule (as written by Rule.to_json), validated again."""
    if not isinstance(data, dict):
        raise InvalidValue("a firewall rule must be an object")
    return rule_from_fields({k: str(v) for k, v in data.items()}, now=0.0, relative_expire=False)


def rule_from_fields(fields: dict[str, str], now: float, relative_expire: bool = True) -> Rule:
    unknown = [k for k in fields if k not in KEYS]
    if unknown:
        raise InvalidValue(f"unknown rule field {unknown[0]!r}; known: {', '.join(KEYS)}")
    action = fields.get("action")
    if action not in ACTIONS:
        raise InvalidValue(f"action must be accept or drop, not {action!r}" if action else "action= is required")
    proto = fields.get("proto")
    if proto is not None and proto not in PROTOS:
        raise InvalidValue(f"proto must be tcp, udp or icmp, not {proto!r}")
    dsthost = _parse_dsthost(fields["dsthost"]) if "dsthost" in fields else None
    dstports = _parse_ports(fields["dstports"]) if "dstports" in fields else None
    if dstports is not None and proto not in ("tcp", "udp"):
        raise InvalidValue("dstports= needs proto=tcp or proto=udp")
    icmptype = None
    if "icmptype" in fields:
        if proto != "icmp":
            raise InvalidValue("icmptype= needs proto=icmp")
        icmptype = _parse_int("icmptype", fields["icmptype"], 0, 255)
    special = fields.get("specialtarget")
    if special is not None:
        if special not in SPECIAL_TARGETS:
            raise InvalidValue(f"specialtarget must be dns, not {special!r}")
        if dsthost is not None:
            raise InvalidValue("specialtarget=dns cannot be combined with dsthost=")
        if dstports is not None or proto == "icmp":
            raise InvalidValue("specialtarget=dns means port 53: give at most proto=tcp or proto=udp")
    expire = _parse_expire(fields["expire"], now, relative_expire) if "expire" in fields else None
    comment = fields.get("comment")
    if comment is not None:
        if len(comment) > MAX_COMMENT or any(c in comment for c in "\n\r\0"):
            raise InvalidValue(f"comment= must be one line of at most {MAX_COMMENT} characters")
    return Rule(
        action=action,
        dsthost=dsthost,
        proto=proto,
        dstports=dstports,
        icmptype=icmptype,
        specialtarget=special,
        expire=expire,
        comment=comment,
    )


def _parse_dsthost(text: str) -> str:
    if not text:
        raise InvalidValue("dsthost= is empty")
    if "%" in text:
        # ipaddress accepts any text as an IPv6 scope id ("fe80::1%x;y"), which
        # would then reach the nft script; a zone means nothing to a firewall.
        raise InvalidValue(f"dsthost={text!r}: scoped addresses (with %) are not supported")
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=True))
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        if "/" in text or ":" in text or text.replace(".", "").isdigit():
            raise InvalidValue(f"dsthost={text!r} is not a valid address or network: {exc}") from None
    if not HOSTNAME_RE.fullmatch(text):
        raise InvalidValue(f"dsthost={text!r} is not an address, a network or a host name")
    return text.rstrip(".").lower()


def _parse_ports(text: str) -> tuple[int, int]:
    m = PORTS_RE.fullmatch(text)
    if not m:
        raise InvalidValue(f"dstports={text!r}: expected N or N-M")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    if not 1 <= low <= high <= 65535:
        raise InvalidValue(f"dstports={text!r}: ports run from 1 to 65535, low to high")
    return low, high


def _parse_int(key: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise InvalidValue(f"{key}={text!r}: expected a whole number")
    if len(text.lstrip("0")) > len(str(high)):
        # int() refuses more than 4300 digits with a bare ValueError.
        raise InvalidValue(f"{key}= is out of range ({low}..{high})")
    value = int(text)
    if not low <= value <= high:
        raise InvalidValue(f"{key}={value} is out of range ({low}..{high})")
    return value


def _parse_expire(text: str, now: float, relative: bool) -> int:
    if text.startswith("+"):
        if not relative:
            raise InvalidValue("a stored expire= must be absolute")
        seconds = _parse_int("expire", text[1:], 1, 10 * 365 * 86400)
        return int(now) + seconds
    value = _parse_int("expire", text, 1, MAX_EPOCH)
    if relative and value <= now:
        raise InvalidValue(f"expire={value} is already in the past")
    return value


def shadowed_by(rules: tuple[Rule, ...] | list[Rule], index: int) -> int | None:
    """The earlier rule that matches everything, so that rule INDEX can
    never match (first match wins); None if it can."""
    for i, rule in enumerate(rules[:index]):
        if rule.matches_everything:
            return i
    return None
