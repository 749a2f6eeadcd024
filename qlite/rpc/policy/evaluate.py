"""Evaluate a qrexec call against a policy and a frozen snapshot of the system.

Pure: no I/O, no clock. The first rule that matches decides; no match, a
broken policy or an invalid request means deny. Semantics follow Qubes'
qrexec (qrexec/policy/parser.py); docs/rpc.md says how the broker uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from qlite.errors import AccessDenied
from qlite.rpc.policy import tokens
from qlite.rpc.policy.parser import Action, Policy, Rule
from qlite.rpc.policy.tokens import DOM0, CallTarget, Concrete


@dataclass(frozen=True)
class QubeFacts:
    """What policy needs to know about one qube."""

    name: str
    klass: str  # AppVM | TemplateVM | DispVM | StandaloneVM
    tags: frozenset[str] = frozenset()
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    uuid: str = ""  # the qube's identity; policy itself goes by names, as Qubes' does

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", frozenset(self.tags))


@dataclass(frozen=True)
class System:
    """Every qube except dom0, keyed by name. Copied, so later changes do not leak in."""

    qubes: Mapping[str, QubeFacts] = field(hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "qubes", MappingProxyType(dict(self.qubes)))

    def identity(self, token: str) -> str:
        """Who TOKEN (a name, dom0, @dispvm:NAME) is now: a qube's uuid, or
        the token itself for what has no uuid (dom0, @dispvm)."""
        name = _disposable_base(token) or token
        facts = self.qubes.get(name)
        return facts.uuid if facts is not None and facts.uuid else token


def _disposable_base(word: str) -> str | None:
    """The NAME of WORD when it spells @dispvm:NAME, else None."""
    try:
        token = tokens.parse_word(word)
    except tokens.InvalidToken:
        return None
    return token.base if isinstance(token, tokens.DispVMName) else None


def _is_dispvm_template(system: System, name: str) -> bool:
    facts = system.qubes.get(name)
    return facts is not None and facts.template_for_dispvms


@dataclass(frozen=True)
class Request:
    """One call: SOURCE asks for SERVICE+ARGUMENT in TARGET."""

    service: str
    argument: str  # "" if none; without the '+'
    source: str
    target: str  # as the caller gave it; "@default" when none


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """The policy's answer to one request."""

    action: Action
    target: str | None  # allow: "work", "dom0" or "@dispvm:NAME"; ask: default_target if any; deny: None
    choices: tuple[str, ...]  # ask: the targets the user may choose from (sorted); else ()
    user: str | None
    notify: bool
    autostart: bool
    rule: Rule | None  # the matching rule (None: no match, broken policy or invalid request)
    reason: str  # one line for the audit log


class _Denied(Exception):
    """A request or target that cannot be served; the message says why."""


def _show(text: str) -> str:
    """An untrusted string, quoted and bounded, fit for a one-line reason."""
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _deny(reason: str, rule: Rule | None = None) -> Resolution:
    return Resolution(
        action="deny", target=None, choices=(), user=None, notify=True, autostart=False, rule=rule, reason=reason
    )


class _Call:
    """One request against one system: the matching and resolving helpers."""

    def __init__(self, system: System, request: Request) -> None:
        self.system = system
        self.request = request
        self.source = request.source
        facts = system.qubes.get(request.source)
        self.source_facts = facts
        self.default_dispvm = facts.default_dispvm if facts else None

    # -- matching ---------------------------------------------------------

    def matches(self, rule: Rule, intended: CallTarget) -> bool:
        return self.matches_but_target(rule) and self.target_matches(rule.target, intended)

    def matches_but_target(self, rule: Rule) -> bool:
        request = self.request
        return (
            rule.service in (tokens.WILDCARD, request.service)
            and (rule.argument is None or rule.argument == request.argument)
            and self.source_matches(rule.source)
        )

    def source_matches(self, token: tokens.SourceToken) -> bool:
        facts = self.source_facts
        if facts is None:  # dom0: matched by '*' and by the tokens naming it
            return isinstance(token, (tokens.Wildcard, tokens.Dom0))
        match token:
            case tokens.QubeName() | tokens.AnyVM() | tokens.Wildcard() | tokens.Tag() | tokens.QubeType():
                return token.matches(facts)
            case tokens.Dom0() | tokens.DispVMName() | tokens.DispVMTag():
                # a qube is not the host; as in Qubes, only a target is ever spelled @dispvm:...
                return False

    def target_matches(self, token: tokens.TargetToken, intended: CallTarget) -> bool:
        """Whether rule target TOKEN matches INTENDED (a normalized request target)."""
        if isinstance(token, tokens.Dom0):
            return isinstance(intended, tokens.Dom0)
        if isinstance(intended, tokens.Dom0):
            return False  # the host is matched only by the tokens naming it
        match token:
            case tokens.AnyVM() | tokens.Wildcard():
                return True
            case tokens.Default() | tokens.DispVM() | tokens.QubeName():
                return token == intended
            case tokens.DispVMTag():
                facts = self.system.qubes.get(self.dispvm_base(intended) or "")
                return facts is not None and token.matches_template(facts)
            case tokens.DispVMName():
                # @dispvm:NAME also matches a plain @dispvm whose base is NAME.
                return token == intended or (isinstance(intended, tokens.DispVM) and self.default_dispvm == token.base)
            case tokens.Tag() | tokens.QubeType():
                facts = self.system.qubes.get(intended.name) if isinstance(intended, tokens.QubeName) else None
                return facts is not None and token.matches(facts)

    def dispvm_base(self, intended: CallTarget) -> str | None:
        """The disposable template INTENDED asks for, if it asks for a disposable."""
        if isinstance(intended, tokens.DispVM):
            return self.default_dispvm
        if isinstance(intended, tokens.DispVMName):
            return intended.base
        return None

    # -- resolving ----------------------------------------------------------

    def resolve(self, target: CallTarget | tokens.Redirect) -> Concrete:
        """The concrete target (a qube, dom0 or @dispvm:NAME) for TARGET, or raise _Denied."""
        match target:
            case tokens.Default():
                raise _Denied("the caller named no target and the rule gives no target=")
            case tokens.Dom0():
                return tokens.Dom0()
            case tokens.DispVM():
                if self.default_dispvm is None:
                    raise _Denied(f"{self.source} has no default_dispvm to make a @dispvm from")
                return self.disposable(tokens.DispVMName(self.default_dispvm))
            case tokens.DispVMName():
                return self.disposable(target)
            case tokens.QubeName():
                if target.name not in self.system.qubes:
                    raise _Denied(f"no such qube {_show(target.name)}")
                return target

    def disposable(self, target: tokens.DispVMName) -> tokens.DispVMName:
        if not _is_dispvm_template(self.system, target.base):
            raise _Denied(f"{_show(target.base)} is not a disposable template (template_for_dispvms)")
        return target

    def first_match(self, policy: Policy, intended: CallTarget) -> Rule | None:
        return next((rule for rule in policy.rules if self.matches(rule, intended)), None)

    def choices(self, policy: Policy) -> set[Concrete]:
        """Every target the policy would allow or ask for this service, argument and source.

        Each candidate is evaluated as if the caller had named it; redirects
        count as their destination. The caller itself is never offered.
        """
        qubes = self.system.qubes
        candidates: list[CallTarget] = [tokens.QubeName(name) for name in qubes if name != self.source]
        candidates += [tokens.Dom0(), tokens.DispVM()]
        candidates += [tokens.DispVMName(name) for name, facts in qubes.items() if facts.template_for_dispvms]
        offered = set()
        for candidate in candidates:
            rule = self.first_match(policy, candidate)
            if rule is None or rule.action == "deny":
                continue
            try:
                resolved = self.resolve(candidate if rule.redirect is None else rule.redirect)
            except _Denied:
                continue
            if str(resolved) != self.source:
                offered.add(resolved)
        return offered


def _intended(system: System, target: str) -> CallTarget:
    """The caller's target, normalized, or raise _Denied."""
    if not target:
        return tokens.Default()
    try:
        token = tokens.parse_word(target)
    except tokens.InvalidToken as err:
        if err.kind in (tokens.DispVMName, tokens.DispVMTag):
            raise _Denied(f"target {_show(target)} is not a disposable template") from None
        raise _Denied(f"invalid target {_show(target)}") from None
    match token:
        case tokens.Default() | tokens.DispVM():
            return token
        case tokens.Dom0():
            return tokens.Dom0()
        case tokens.DispVMName() if _is_dispvm_template(system, token.base):
            return token
        case tokens.DispVMName() | tokens.DispVMTag():
            raise _Denied(f"target {_show(target)} is not a disposable template")
        case tokens.QubeName() if token.name in system.qubes:
            return token
        case tokens.QubeName():
            raise _Denied(f"no such qube {_show(target)}")
    # @anyvm, '*', @tag: and @type: pick rule targets; a caller must name one.
    raise _Denied(f"invalid target {_show(target)}")


def _check_request(system: System, request: Request) -> CallTarget:
    """Validate REQUEST; return its normalized target, or raise _Denied."""
    if not tokens.SERVICE_RE.fullmatch(request.service):
        raise _Denied(f"invalid service name {_show(request.service)}")
    if not tokens.ARGUMENT_RE.fullmatch(request.argument):
        raise _Denied(f"invalid argument {_show(request.argument)}")
    if request.source != DOM0 and request.source not in system.qubes:
        raise _Denied(f"unknown source qube {_show(request.source)}")
    return _intended(system, request.target)


def _call_name(request: Request) -> str:
    return f"{request.service}+{request.argument}"


def evaluate(policy: Policy, system: System, request: Request) -> Resolution:
    """Decide REQUEST by the first matching rule. Never raises.

    No match, a broken policy or an invalid request (unknown source, a
    target that does not exist) means deny. A call from dom0 is decided by
    the rules like any other: only '*', 'dom0' and '@adminvm' in the source
    column match it, so the shipped policy denies it. Qubes lets the host's
    own calls bypass policy; that bypass is the broker's (docs/rpc.md),
    which does not call evaluate for them.
    """
    if policy.error is not None:
        return _deny(f"denied: the policy is broken: {policy.error}")
    call = _Call(system, request)
    try:
        intended = _check_request(system, request)
    except _Denied as err:
        return _deny(f"denied: {err}")
    rule = call.first_match(policy, intended)
    if rule is None:
        return _deny(
            f"denied: no rule matches {_call_name(request)} from {request.source} to {request.target or '@default'}"
        )
    try:
        return _apply(rule, policy, call, intended)
    except _Denied as err:
        return _deny(f"denied by policy {rule.location}: {err}", rule)


def _not_loopback(call: _Call, target: Concrete) -> Concrete:
    # As in Qubes: a qube cannot call a service in itself.
    if str(target) == call.source:
        raise _Denied(f"{call.source} cannot call itself")
    return target


def _yes(rule: Rule, key: str, default: bool) -> bool:
    value = rule.params.get(key)
    return default if value is None else value == "yes"


def _apply(rule: Rule, policy: Policy, call: _Call, intended: CallTarget) -> Resolution:
    where = rule.location
    if rule.action == "deny":
        return Resolution(
            action="deny",
            target=None,
            choices=(),
            user=None,
            notify=_yes(rule, "notify", True),
            autostart=False,
            rule=rule,
            reason=f"denied by policy {where}",
        )
    user = rule.params.get("user")
    notify = _yes(rule, "notify", False)
    autostart = _yes(rule, "autostart", True)
    if rule.action == "allow":
        target = _not_loopback(call, call.resolve(intended if rule.redirect is None else rule.redirect))
        if not autostart and isinstance(target, tokens.DispVMName):
            raise _Denied("autostart=no, but a disposable has to be started")
        return Resolution(
            action="allow",
            target=str(target),
            choices=(),
            user=user,
            notify=notify,
            autostart=autostart,
            rule=rule,
            reason=f"allowed by policy {where}",
        )
    if rule.redirect is not None:
        choices = {_not_loopback(call, call.resolve(rule.redirect))}
    else:
        choices = call.choices(policy)
    if not autostart:
        # A disposable always has to be started; whether a named target is
        # running is for the broker to check.
        choices = {c for c in choices if not isinstance(c, tokens.DispVMName)}
    if not choices:
        raise _Denied("ask, but there is no target to choose from")
    default = _default_target(call, rule, choices)
    return Resolution(
        action="ask",
        target=default,
        choices=tuple(sorted(map(str, choices))),
        user=user,
        notify=notify,
        autostart=autostart,
        rule=rule,
        reason=f"ask by policy {where}",
    )


def _default_target(call: _Call, rule: Rule, choices: set[Concrete]) -> str | None:
    if rule.default_redirect is None:
        return None
    try:
        resolved = call.resolve(rule.default_redirect)
    except _Denied:
        return None
    # A default the user could not pick is dropped rather than preselected.
    return str(resolved) if resolved in choices else None


def answer_ask(resolution: Resolution, chosen: str, system: System) -> Resolution:
    """The user picked CHOSEN for an ask: return the allow Resolution.

    Raises AccessDenied if RESOLUTION is not an ask, CHOSEN was not offered,
    or CHOSEN no longer exists in SYSTEM (the question may have waited).
    """
    if resolution.action != "ask":
        raise AccessDenied(f"there is no question to answer: the call was already {resolution.action}")
    if chosen not in resolution.choices:
        raise AccessDenied(f"{_show(chosen)} is not one of the offered targets: {', '.join(resolution.choices)}")
    base = _disposable_base(chosen)
    if base is not None:
        if not _is_dispvm_template(system, base):
            raise AccessDenied(f"{base} is no longer a disposable template")
    elif chosen != DOM0 and chosen not in system.qubes:
        raise AccessDenied(f"qube {chosen} no longer exists")
    where = resolution.rule.location if resolution.rule else "?"
    return replace(
        resolution, action="allow", target=chosen, choices=(), reason=f"allowed by the user (asked by policy {where})"
    )
