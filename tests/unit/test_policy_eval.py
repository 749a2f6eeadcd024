"""Evaluating qrexec calls against a policy and a frozen system snapshot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.errors import AccessDenied, PolicySyntaxError
from qlite.rpc.policy import (
    Policy,
    QubeFacts,
    Request,
    Resolution,
    System,
    answer_ask,
    evaluate,
    load_policy,
    parse_policy,
)
from qlite.rpc.policy.files import read_policy_path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"


def qube(name, klass="AppVM", tags=(), default_dispvm="default-dvm", dvm=False) -> QubeFacts:
    return QubeFacts(name, klass, frozenset(tags), default_dispvm, dvm)


SYSTEM = System(
    {
        q.name: q
        for q in [
            qube("work", tags={"work"}),
            qube("work-web", tags={"work"}),
            qube("personal"),
            qube("vault", default_dispvm=None),
            qube("anon", tags={"anon-vm"}, default_dispvm="anon-dvm"),
            qube("odd", default_dispvm="personal"),  # its default_dispvm is no disposable template
            qube("default-dvm", tags={"dvm"}, dvm=True),
            qube("anon-dvm", tags={"anon-vm", "dvm"}, dvm=True),
            qube("offline-dvm", dvm=True),
            qube("debian-12", "TemplateVM"),
            qube("sys-net", "StandaloneVM"),
            qube("disp42", "DispVM", default_dispvm=None),
        ]
    }
)
ALL_QUBES = set(SYSTEM.qubes)
DISPVMS = {"@dispvm:default-dvm", "@dispvm:anon-dvm", "@dispvm:offline-dvm"}


def policy_of(text: str) -> Policy:
    return Policy(tuple(parse_policy(text, "t.policy")))


def decide(
    policy: Policy | str, source: str, target: str, service: str = "svc", argument: str = "", system: System = SYSTEM
) -> Resolution:
    if isinstance(policy, str):
        policy = policy_of(policy)
    return evaluate(policy, system, Request(service, argument, source, target))


def summary(res: Resolution) -> tuple:
    return res.action, res.target, res.rule.line if res.rule else None


# -- matching -------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, source, target, expected",
    [
        # the first matching rule wins
        ("svc * work vault allow\nsvc * work vault deny", "work", "vault", ("allow", "vault", 1)),
        ("svc * work vault deny\nsvc * work vault allow", "work", "vault", ("deny", None, 1)),
        ("svc * work personal deny\nsvc * work vault allow", "work", "vault", ("allow", "vault", 2)),
        # no match: deny
        ("svc * work vault allow", "work", "personal", ("deny", None, None)),
        ("svc * work vault allow", "personal", "vault", ("deny", None, None)),
        ("", "work", "vault", ("deny", None, None)),
        # dom0 is matched only by the tokens naming it, never by @anyvm or '*'
        ("svc * work @anyvm allow", "work", "dom0", ("deny", None, None)),
        ("svc * work @anyvm allow", "work", "@adminvm", ("deny", None, None)),
        ("svc * work * allow", "work", "dom0", ("deny", None, None)),
        ("svc * work @type:AdminVM allow", "work", "dom0", ("deny", None, None)),
        ("svc * work dom0 allow", "work", "dom0", ("allow", "dom0", 1)),
        ("svc * work dom0 allow", "work", "@adminvm", ("allow", "dom0", 1)),
        ("svc * work @adminvm allow", "work", "dom0", ("allow", "dom0", 1)),
        ("svc * @anyvm @anyvm allow\nsvc * @anyvm dom0 ask", "work", "dom0", ("ask", None, 2)),
        # @anyvm and '*' match every qube, @default and @dispvm targets
        ("svc * @anyvm @anyvm allow", "work", "vault", ("allow", "vault", 1)),
        ("svc * * * allow", "work", "vault", ("allow", "vault", 1)),
        ("svc * @anyvm @anyvm allow target=vault", "work", "@default", ("allow", "vault", 1)),
        ("svc * * * allow", "work", "@dispvm", ("allow", "@dispvm:default-dvm", 1)),
        # tags
        ("svc * @tag:work personal allow", "work-web", "personal", ("allow", "personal", 1)),
        ("svc * @tag:work personal allow", "personal", "personal", ("deny", None, None)),
        ("svc * personal @tag:work allow", "personal", "work", ("allow", "work", 1)),
        ("svc * personal @tag:work allow", "personal", "vault", ("deny", None, None)),
        ("svc * personal @tag:work allow", "personal", "@default", ("deny", None, None)),
        # types
        ("svc * @type:TemplateVM @default allow target=sys-net", "debian-12", "@default", ("allow", "sys-net", 1)),
        ("svc * @type:TemplateVM @default allow target=sys-net", "work", "@default", ("deny", None, None)),
        ("svc * work @type:StandaloneVM allow", "work", "sys-net", ("allow", "sys-net", 1)),
        ("svc * work @type:DispVM allow", "work", "disp42", ("allow", "disp42", 1)),
        ("svc * work @type:DispVM allow", "work", "personal", ("deny", None, None)),
        ("svc * @type:DispVM work allow", "disp42", "work", ("allow", "work", 1)),
        # a target= redirect keeps its action, whatever the rules say of the new target
        ("svc * work vault deny\nsvc * work personal allow target=vault", "work", "personal", ("allow", "vault", 2)),
        ("svc * work @anyvm allow target=vault\nsvc * @anyvm vault deny", "work", "sys-net", ("allow", "vault", 1)),
        ("svc * work @anyvm ask target=vault\nsvc * @anyvm vault deny", "work", "sys-net", ("ask", None, 1)),
        # @default: only a caller that named no target
        ("svc * work @default allow target=vault", "work", "@default", ("allow", "vault", 1)),
        ("svc * work @default allow target=vault", "work", "", ("allow", "vault", 1)),
        ("svc * work @default allow target=vault", "work", "personal", ("deny", None, None)),
        ("svc * work @anyvm allow", "work", "@default", ("deny", None, 1)),
        ("svc * work @default allow target=dom0", "work", "@default", ("allow", "dom0", 1)),
        # a source spelled @dispvm:... matches no caller (as in Qubes)
        ("svc * @dispvm:default-dvm work allow", "disp42", "work", ("deny", None, None)),
    ],
)
def test_matching(policy, source, target, expected):
    assert summary(decide(policy, source, target)) == expected


@pytest.mark.parametrize(
    "policy, service, argument, matches",
    [
        ("svc * work vault allow", "svc", "", True),
        ("svc * work vault allow", "svc", "anything", True),
        ("svc + work vault allow", "svc", "", True),
        ("svc + work vault allow", "svc", "x", False),
        ("svc +x work vault allow", "svc", "x", True),
        ("svc +x work vault allow", "svc", "", False),
        ("svc +x work vault allow", "svc", "xy", False),
        ("svc +a+b work vault allow", "svc", "a+b", True),
        ("* * work vault allow", "anything.Else", "arg", True),
        ("svc * work vault allow", "svc2", "", False),
        ("svc * work vault allow", "Svc", "", False),
    ],
)
def test_service_and_argument_matching(policy, service, argument, matches):
    res = decide(policy, "work", "vault", service, argument)
    assert res.action == ("allow" if matches else "deny")


# -- resolution details ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, notify, autostart, user",
    [
        ("svc * work vault allow", False, True, None),
        ("svc * work vault allow notify=yes autostart=no user=root", True, False, "root"),
        ("svc * work vault deny", True, False, None),
        ("svc * work vault deny notify=no", False, False, None),
        ("svc * work vault ask", False, True, None),
        ("svc * work vault ask notify=yes autostart=no user=user", True, False, "user"),
    ],
)
def test_notify_autostart_and_user(line, notify, autostart, user):
    res = decide(line + "\nsvc * work @anyvm allow", "work", "vault")
    assert (res.notify, res.autostart, res.user) == (notify, autostart, user)
    assert res.rule is not None and res.rule.line == 1


def test_reasons_carry_the_rule_location():
    assert decide("svc * work vault allow", "work", "vault").reason == "allowed by policy t.policy:1"
    assert decide("\nsvc * work vault deny", "work", "vault").reason == "denied by policy t.policy:2"
    assert decide("svc * work vault ask", "work", "vault").reason == "ask by policy t.policy:1"
    assert decide("svc * work @anyvm allow target=ghost", "work", "vault").reason == (
        "denied by policy t.policy:1: no such qube 'ghost'"
    )
    assert decide("", "work", "vault", "qubes.Filecopy", "x").reason == (
        "denied: no rule matches qubes.Filecopy+x from work to vault"
    )
    for res in (decide("svc * work vault allow", "work", "vault"), decide("", "work", "vault")):
        assert "\n" not in res.reason


@pytest.mark.parametrize(
    "target, reason",
    [
        ("ghost", "no such qube 'ghost'"),
        ("@anyvm", "invalid target '@anyvm'"),
        ("*", "invalid target '*'"),
        ("@tag:work", "invalid target '@tag:work'"),
        ("@type:AppVM", "invalid target '@type:AppVM'"),
        ("@dispvm:@tag:dvm", "target '@dispvm:@tag:dvm' is not a disposable template"),
        ("@dispvm:personal", "target '@dispvm:personal' is not a disposable template"),
        ("@dispvm:ghost", "target '@dispvm:ghost' is not a disposable template"),
        ("bad name", "invalid target 'bad name'"),
        ("work\nvault", "invalid target"),
    ],
)
def test_invalid_or_missing_targets_are_denied_before_any_rule(target, reason):
    res = decide("svc * * * allow\nsvc * @anyvm @anyvm allow", "work", target)
    assert (res.action, res.rule) == ("deny", None)
    assert res.reason.startswith("denied: " + reason)
    assert "\n" not in res.reason


@pytest.mark.parametrize(
    "service, argument, source, reason",
    [
        ("svc", "", "ghost", "unknown source qube 'ghost'"),
        ("svc", "", "@adminvm", "unknown source qube '@adminvm'"),
        ("svc", "", "", "unknown source qube ''"),
        ("bad service", "", "work", "invalid service name 'bad service'"),
        ("*", "", "work", "invalid service name '*'"),
        ("", "", "work", "invalid service name ''"),
        ("svc", "a/b", "work", "invalid argument 'a/b'"),
        ("svc", "x" * 100, "work", None),
    ],
)
def test_invalid_requests_are_denied(service, argument, source, reason):
    res = decide("* * * * allow\n* * @anyvm @anyvm allow", source, "vault", service, argument)
    if reason is None:
        assert res.action == "allow"
    else:
        assert (res.action, res.rule, res.reason) == ("deny", None, "denied: " + reason)


def test_a_qube_cannot_call_itself():
    res = decide("svc * work @anyvm allow", "work", "work")
    assert (res.action, res.reason) == ("deny", "denied by policy t.policy:1: work cannot call itself")
    assert decide("svc * work @anyvm allow target=work", "work", "vault").action == "deny"
    assert decide("svc * work @anyvm ask target=work", "work", "vault").action == "deny"


# -- @dispvm --------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, source, target, expected, reason",
    [
        # @dispvm: a new disposable from the caller's default_dispvm
        ("svc * @anyvm @dispvm allow", "work", "@dispvm", ("allow", "@dispvm:default-dvm", 1), None),
        ("svc * @anyvm @dispvm allow", "anon", "@dispvm", ("allow", "@dispvm:anon-dvm", 1), None),
        ("svc * @anyvm @dispvm allow", "vault", "@dispvm", ("deny", None, 1), "vault has no default_dispvm"),
        ("svc * @anyvm @dispvm allow", "odd", "@dispvm", ("deny", None, 1), "'personal' is not a disposable template"),
        ("svc * @anyvm @anyvm allow target=@dispvm", "work", "personal", ("allow", "@dispvm:default-dvm", 1), None),
        ("svc * @anyvm @dispvm allow", "work", "@dispvm:default-dvm", ("deny", None, None), None),
        # @dispvm:NAME: a new disposable from NAME, which must be a disposable template
        (
            "svc * @anyvm @dispvm:offline-dvm allow",
            "work",
            "@dispvm:offline-dvm",
            ("allow", "@dispvm:offline-dvm", 1),
            None,
        ),
        ("svc * @anyvm @dispvm:default-dvm allow", "work", "@dispvm", ("allow", "@dispvm:default-dvm", 1), None),
        ("svc * @anyvm @dispvm:default-dvm allow", "anon", "@dispvm", ("deny", None, None), None),
        (
            "svc * @anyvm @anyvm allow target=@dispvm:offline-dvm",
            "vault",
            "@default",
            ("allow", "@dispvm:offline-dvm", 1),
            None,
        ),
        (
            "svc * @anyvm @anyvm allow target=@dispvm:personal",
            "work",
            "vault",
            ("deny", None, 1),
            "'personal' is not a disposable template",
        ),
        (
            "svc * @anyvm @anyvm allow target=@dispvm:ghost",
            "work",
            "vault",
            ("deny", None, 1),
            "'ghost' is not a disposable template",
        ),
        # @dispvm:@tag:T: a disposable from any disposable template tagged T
        ("svc * @anyvm @dispvm:@tag:dvm allow", "work", "@dispvm:anon-dvm", ("allow", "@dispvm:anon-dvm", 1), None),
        ("svc * @anyvm @dispvm:@tag:dvm allow", "work", "@dispvm", ("allow", "@dispvm:default-dvm", 1), None),
        ("svc * @anyvm @dispvm:@tag:dvm allow", "work", "@dispvm:offline-dvm", ("deny", None, None), None),
        ("svc * @anyvm @dispvm:@tag:dvm allow", "vault", "@dispvm", ("deny", None, None), None),
        ("svc * @anyvm @dispvm:@tag:anon-vm allow", "anon", "@dispvm", ("allow", "@dispvm:anon-dvm", 1), None),
        # autostart=no cannot make a disposable
        ("svc * @anyvm @dispvm allow autostart=no", "work", "@dispvm", ("deny", None, 1), "autostart=no"),
    ],
)
def test_dispvm_resolution(policy, source, target, expected, reason):
    res = decide(policy, source, target)
    assert summary(res) == expected
    if reason:
        assert reason in res.reason


# -- ask --------------------------------------------------------------------------


def test_ask_offers_every_allowed_or_asked_target_but_not_denied_ones_dom0_or_the_caller():
    res = decide("svc * work vault deny\nsvc * work @default ask\nsvc * work @anyvm ask", "work", "@default")
    assert (res.action, res.target, res.rule.line) == ("ask", None, 2)
    assert res.choices == tuple(sorted((ALL_QUBES - {"work", "vault"}) | DISPVMS))
    assert list(res.choices) == sorted(res.choices)


def test_ask_offers_dom0_only_when_a_rule_names_it():
    base = "svc * work @default ask\nsvc * work @anyvm ask\n"
    assert "dom0" not in decide(base, "work", "@default").choices
    assert "dom0" not in decide("svc * work * ask\n", "work", "@default").choices
    assert "dom0" in decide(base + "svc * work dom0 allow", "work", "@default").choices
    assert "dom0" in decide(base + "svc * work @adminvm ask", "work", "@default").choices
    assert "dom0" not in decide("svc * work dom0 deny\n" + base + "svc * work dom0 allow", "work", "@default").choices


def test_ask_choices_follow_tags_types_and_redirects():
    policy = (
        "svc * @tag:work @default ask\n"
        "svc * @tag:work @tag:work allow\n"
        "svc * @tag:work sys-net allow target=@dispvm:offline-dvm\n"
        "svc * @tag:work @type:TemplateVM ask\n"
        "svc * @tag:work @anyvm deny\n"
    )
    assert decide(policy, "work", "@default").choices == ("@dispvm:offline-dvm", "debian-12", "work-web")


def test_ask_never_offers_the_caller_even_through_a_redirect():
    res = decide(
        "svc * work @default ask\nsvc * work personal allow target=work\nsvc * work @anyvm ask", "work", "@default"
    )
    assert res.action == "ask"
    assert "work" not in res.choices and "personal" not in res.choices
    assert "vault" in res.choices


def test_ask_with_a_target_offers_only_that_target():
    assert decide("svc * work @default ask target=vault", "work", "@default").choices == ("vault",)
    res = decide("svc * work @default ask target=@dispvm", "work", "@default")
    assert res.choices == ("@dispvm:default-dvm",)
    assert decide("svc * vault @default ask target=@dispvm", "vault", "@default").action == "deny"


@pytest.mark.parametrize(
    "default_target, expected",
    [
        ("personal", "personal"),
        ("@dispvm", "@dispvm:default-dvm"),
        ("@dispvm:offline-dvm", "@dispvm:offline-dvm"),
        ("vault", None),  # denied, so not offered, so not preselected
        ("dom0", None),  # not offered
        ("ghost", None),
    ],
)
def test_default_target_is_preselected_only_if_offered(default_target, expected):
    policy = f"svc * work @default ask default_target={default_target}\nsvc * work vault deny\nsvc * work @anyvm ask"
    res = decide(policy, "work", "@default")
    assert (res.action, res.target) == ("ask", expected)


def test_default_target_dom0_when_dom0_is_offered():
    res = decide("svc * work @default ask default_target=@adminvm\nsvc * work dom0 allow", "work", "@default")
    assert (res.choices, res.target) == (("dom0",), "dom0")


def test_ask_with_nothing_to_choose_is_denied():
    res = decide("svc * work @default ask", "work", "@default")
    assert summary(res) == ("deny", None, 1)
    assert "no target to choose from" in res.reason


def test_ask_without_autostart_offers_no_disposable():
    res = decide("svc * work @anyvm ask autostart=no", "work", "@default")
    assert res.choices == tuple(sorted(ALL_QUBES - {"work"}))
    assert res.autostart is False


# -- answer_ask -------------------------------------------------------------------


def test_answer_ask_returns_an_allow_for_an_offered_target():
    asked = decide("svc * work @anyvm ask notify=yes user=user", "work", "@default")
    for chosen in ("personal", "@dispvm:default-dvm"):
        res = answer_ask(asked, chosen, SYSTEM)
        assert (res.action, res.target, res.choices) == ("allow", chosen, ())
        assert (res.user, res.notify, res.autostart, res.rule) == ("user", True, True, asked.rule)
        assert res.reason == "allowed by the user (asked by policy t.policy:1)"


@pytest.mark.parametrize("chosen", ["work", "dom0", "ghost", "@dispvm", "@default", "", "vault"])
def test_answer_ask_refuses_a_target_not_offered(chosen):
    asked = decide("svc * work vault deny\nsvc * work @anyvm ask", "work", "@default")
    with pytest.raises(AccessDenied, match="is not one of the offered targets"):
        answer_ask(asked, chosen, SYSTEM)


def test_answer_ask_refuses_what_is_not_a_question():
    for res in (decide("svc * work vault allow", "work", "vault"), decide("", "work", "vault")):
        with pytest.raises(AccessDenied, match="no question to answer"):
            answer_ask(res, "vault", SYSTEM)


def test_answer_ask_refuses_a_target_gone_while_the_question_waited():
    asked = decide("svc * work @anyvm ask", "work", "@default")
    smaller = System({name: q for name, q in SYSTEM.qubes.items() if name != "personal"})
    with pytest.raises(AccessDenied, match="personal no longer exists"):
        answer_ask(asked, "personal", smaller)
    changed = dict(SYSTEM.qubes)
    changed["offline-dvm"] = qube("offline-dvm")
    with pytest.raises(AccessDenied, match="offline-dvm is no longer a disposable template"):
        answer_ask(asked, "@dispvm:offline-dvm", System(changed))


# -- calls from dom0 ---------------------------------------------------------------


def test_calls_from_dom0_are_decided_by_rules_naming_dom0():
    assert summary(decide("svc * dom0 work allow", "dom0", "work")) == ("allow", "work", 1)
    assert summary(decide("svc * @adminvm work allow", "dom0", "work")) == ("allow", "work", 1)
    assert summary(decide("svc * * work allow", "dom0", "work")) == ("allow", "work", 1)
    assert summary(decide("svc * @anyvm work allow", "dom0", "work")) == ("deny", None, None)
    assert summary(decide("svc * @tag:work work allow", "dom0", "work")) == ("deny", None, None)
    assert summary(decide("svc * * @dispvm allow", "dom0", "@dispvm")) == ("deny", None, 1)
    assert summary(decide("svc * * dom0 allow", "dom0", "dom0")) == ("deny", None, 1)
    assert decide("svc * dom0 @anyvm ask", "dom0", "@default").choices == tuple(sorted(ALL_QUBES | DISPVMS))


def test_the_snapshot_does_not_change_with_its_source():
    qubes = {"work": qube("work"), "vault": qube("vault")}
    system = System(qubes)
    del qubes["vault"]
    assert decide("svc * work vault allow", "work", "vault", system=system).action == "allow"
    with pytest.raises(TypeError):
        system.qubes["x"] = qube("x")  # type: ignore[index]


# -- a broken policy -------------------------------------------------------------


def test_a_broken_policy_denies_everything_and_says_where(tmp_path):
    admin = tmp_path.resolve() / "admin"
    admin.mkdir()
    (admin / "30-user.policy").write_text("qubes.Filecopy * work vault allow\nqubes.Filecopy * work @oops allow\n")
    policy = load_policy([SHIPPED, admin])
    assert policy.error == f"{admin}/30-user.policy:2: invalid target '@oops': unknown keyword"
    for source, target, service in [
        ("work", "vault", "qubes.Filecopy"),
        ("work", "@dispvm", "qubes.OpenInVM"),
        ("dom0", "work", "qubes.VMShell"),
        ("work", "@default", "qubes.GetDate"),
    ]:
        res = decide(policy, source, target, service)
        assert (res.action, res.target, res.choices, res.rule) == ("deny", None, (), None)
        assert res.reason == f"denied: the policy is broken: {policy.error}"
    # fixing the file fixes the policy
    (admin / "30-user.policy").write_text("qubes.Filecopy * work vault allow\n")
    assert summary(decide(load_policy([SHIPPED, admin]), "work", "vault", "qubes.Filecopy")) == ("allow", "vault", 1)


# -- the decisions of Qubes' own policy ------------------------------------------

# The real lines of qubes-core-admin's 90-default.policy and the clipboard
# default, as quoted in QUBES.md section 2.
QUBES_90_DEFAULT = """\
qubes.Filecopy     *  @anyvm            @anyvm    ask
qubes.OpenInVM     *  @anyvm            @dispvm   allow
qubes.OpenInVM     *  @anyvm            @anyvm    ask
qubes.GetDate      *  @tag:anon-vm      @anyvm    deny
qubes.GetDate      *  @anyvm            @anyvm    allow target=dom0
qubes.UpdatesProxy *  @type:TemplateVM  @default  allow target=sys-net
qubes.VMShell      *  @anyvm            @dispvm   allow
qubes.VMShell      *  @anyvm            @anyvm    deny
qubes.ConnectTCP   *  @anyvm            @anyvm    deny
qubes.ClipboardPaste * @adminvm @anyvm deny
qubes.ClipboardPaste * @anyvm @anyvm ask
"""

# (service, argument, source, target) -> (action, target)
QUBES_DECISIONS = [
    (("qubes.Filecopy", "", "work", "@default"), ("ask", None)),
    (("qubes.Filecopy", "", "work", "vault"), ("ask", None)),
    (("qubes.Filecopy", "allow-unsafe-characters", "work", "vault"), ("ask", None)),
    (("qubes.Filecopy", "", "work", "dom0"), ("deny", None)),
    (("qubes.OpenInVM", "", "work", "@dispvm"), ("allow", "@dispvm:default-dvm")),
    (("qubes.OpenInVM", "", "anon", "@dispvm"), ("allow", "@dispvm:anon-dvm")),
    (("qubes.OpenInVM", "", "vault", "@dispvm"), ("deny", None)),
    (("qubes.OpenInVM", "", "work", "personal"), ("ask", None)),
    (("qubes.OpenInVM", "", "work", "@dispvm:offline-dvm"), ("ask", None)),
    (("qubes.GetDate", "", "anon", "@default"), ("deny", None)),
    (("qubes.GetDate", "", "work", "@default"), ("allow", "dom0")),
    (("qubes.GetDate", "", "work", "personal"), ("allow", "dom0")),
    (("qubes.GetDate", "", "work", "dom0"), ("deny", None)),  # no rule names dom0 as the target
    (("qubes.VMShell", "", "work", "@dispvm"), ("allow", "@dispvm:default-dvm")),
    (("qubes.VMShell", "", "work", "personal"), ("deny", None)),
    (("qubes.VMShell", "", "work", "@default"), ("deny", None)),
    (("qubes.ConnectTCP", "22", "work", "@default"), ("deny", None)),
    (("qubes.ConnectTCP", "22", "work", "sys-net"), ("deny", None)),
    (("qubes.Unknown", "", "work", "personal"), ("deny", None)),
]


@pytest.mark.parametrize(
    "call, expected",
    QUBES_DECISIONS
    + [
        (("qubes.UpdatesProxy", "", "debian-12", "@default"), ("allow", "sys-net")),
        (("qubes.UpdatesProxy", "", "work", "@default"), ("deny", None)),
        (("qubes.ClipboardPaste", "", "dom0", "work"), ("deny", None)),
        (("qubes.ClipboardPaste", "", "work", "personal"), ("ask", None)),
    ],
)
def test_qubes_90_default_decisions(call, expected):
    service, argument, source, target = call
    res = decide(QUBES_90_DEFAULT, source, target, service, argument)
    assert (res.action, res.target) == expected


@pytest.mark.parametrize(
    "call, expected",
    QUBES_DECISIONS
    + [
        (("qubes.VMExec", "", "work", "@dispvm"), ("allow", "@dispvm:default-dvm")),
        (("qubes.VMExec", "", "work", "personal"), ("deny", None)),
        (("qubes.UpdatesProxy", "", "debian-12", "@default"), ("deny", None)),  # not shipped by qlite
    ],
)
def test_qlite_shipped_policy_makes_the_same_decisions(call, expected):
    service, argument, source, target = call
    res = decide(load_policy([SHIPPED]), source, target, service, argument)
    assert (res.action, res.target) == expected


def test_qubes_filecopy_prompt_lists_every_qube_but_the_caller_and_dom0():
    res = decide(load_policy([SHIPPED]), "work", "@default", "qubes.Filecopy")
    assert res.choices == tuple(sorted((ALL_QUBES - {"work"}) | DISPVMS))
    assert res.target is None


def test_qubes_rpc_policy_doc_work_tag_example(tmp_path):
    """The example of qubes-doc's rpc-policy page, as a 4.0-format file behind !include-service."""
    (tmp_path / "qubes.FileCopy").write_text(
        "@tag:work   @default    ask\n"
        "@tag:work   @tag:work   allow\n"
        "@tag:work   @anyvm      deny\n"
        "@anyvm      @tag:work   deny\n"
        "@anyvm      @anyvm      ask\n"
    )
    main = tmp_path / "30-user.policy"
    main.write_text("!include-service qubes.Filecopy * qubes.FileCopy\n")
    text, name = read_policy_path(str(main))
    policy = Policy(tuple(parse_policy(text, name, read_policy_path)))

    def filecopy(source, target):
        return decide(policy, source, target, "qubes.Filecopy")

    # qvm-copy from a work qube: the prompt lists only the other work qubes
    res = filecopy("work", "@default")
    assert (res.action, res.choices) == ("ask", ("work-web",))
    assert summary(filecopy("work", "work-web")) == ("allow", "work-web", 2)
    assert summary(filecopy("work", "personal")) == ("deny", None, 3)
    assert summary(filecopy("personal", "work")) == ("deny", None, 4)
    res = filecopy("personal", "@default")
    assert res.action == "ask" and not {"work", "work-web", "personal"} & set(res.choices)
    # without the first row, qvm-copy from work is refused without a prompt
    without_first_row = Policy(policy.rules[1:])
    assert summary(decide(without_first_row, "work", "@default", "qubes.Filecopy")) == ("deny", None, 3)


def test_multifile_user_policy_overrides_the_shipped_one(tmp_path):
    admin = tmp_path.resolve() / "policy.d"
    (admin / "30-user.d").mkdir(parents=True)
    (admin / "30-user.policy").write_text(
        "# the user's rules, read before the shipped 90-default\n"
        "qubes.Filecopy  *  work       vault      deny\n"
        "qubes.Filecopy  *  @tag:work  @tag:work  allow\n"
        "qubes.OpenInVM  *  vault      @anyvm     allow target=@dispvm:offline-dvm\n"
        "!include-dir 30-user.d\n"
    )
    (admin / "30-user.d" / "10-tcp.policy").write_text("qubes.ConnectTCP +22 work @default allow target=sys-net\n")
    (admin / "30-user.d" / "README").write_text("not read\n")
    policy = load_policy([SHIPPED, admin])
    assert policy.error is None
    user = str(admin / "30-user.policy")

    def check(service, argument, source, target, action, resolved, where):
        res = decide(policy, source, target, service, argument)
        assert (res.action, res.target, res.rule.location if res.rule else None) == (action, resolved, where)
        return res

    check("qubes.Filecopy", "", "work", "vault", "deny", None, f"{user}:2")  # beats the shipped ask
    check("qubes.Filecopy", "", "work", "work-web", "allow", "work-web", f"{user}:3")
    shipped_rules = load_policy([SHIPPED]).rules
    filecopy = next(r for r in shipped_rules if r.service == "qubes.Filecopy")
    open_in_dispvm = next(r for r in shipped_rules if r.service == "qubes.OpenInVM" and str(r.target) == "@dispvm")
    res = check("qubes.Filecopy", "", "work", "@default", "ask", None, filecopy.location)
    assert "vault" not in res.choices and "work-web" in res.choices
    check("qubes.OpenInVM", "", "vault", "@dispvm", "allow", "@dispvm:offline-dvm", f"{user}:4")
    check("qubes.OpenInVM", "", "vault", "personal", "allow", "@dispvm:offline-dvm", f"{user}:4")
    check("qubes.OpenInVM", "", "work", "@dispvm", "allow", "@dispvm:default-dvm", open_in_dispvm.location)
    check("qubes.ConnectTCP", "22", "work", "@default", "allow", "sys-net", f"{admin}/30-user.d/10-tcp.policy:1")
    assert decide(policy, "work", "@default", "qubes.ConnectTCP", "80").action == "deny"
    # a same-named admin file replaces the shipped defaults
    (admin / "90-default.policy").write_text("qubes.Filecopy * @anyvm @anyvm deny\n")
    replaced = load_policy([SHIPPED, admin])
    assert decide(replaced, "work", "@dispvm", "qubes.OpenInVM").action == "deny"
    assert decide(replaced, "work", "personal", "qubes.Filecopy").reason == (
        f"denied by policy {admin}/90-default.policy:1"
    )


# qrexec's own test system and policies (qrexec/tests/policy_parser.py)
QREXEC_SYSTEM = System(
    {
        q.name: q
        for q in [
            qube("test-vm1", tags={"tag1", "tag2"}),
            qube("test-vm2", tags={"tag2"}),
            qube("test-vm3", tags={"tag3"}, dvm=True),
            qube("default-dvm", dvm=True),
            qube("test-invalid-dvm", tags={"tag1", "tag2"}, default_dispvm="test-vm1"),
            qube("test-no-dvm", tags={"tag1", "tag2"}, default_dispvm=None),
            qube("test-template", "TemplateVM", tags={"tag1", "tag2"}),
            qube("test-standalone", "StandaloneVM", tags={"tag1", "tag2"}),
        ]
    }
)


@pytest.mark.parametrize(
    "source, target, line",
    [
        ("test-vm1", "test-vm2", 1),
        ("test-vm1", "test-vm3", 2),
        ("test-vm2", "test-vm2", 4),
        ("test-vm2", "test-no-dvm", 3),
        ("test-vm1", "@default", 2),  # @anyvm matches @default too
        ("test-vm2", "@default", 8),
        ("test-no-dvm", "test-vm3", 9),
        ("test-vm2", "@dispvm:test-vm3", 5),
        ("test-vm2", "@dispvm", 7),
        ("test-no-dvm", "test-standalone", None),
        ("test-no-dvm", "@dispvm", None),
        ("test-standalone", "@default", None),
    ],
)
def test_qrexec_find_rule(source, target, line):
    policy = policy_of(
        "* * test-vm1 test-vm2 allow\n"
        "* * test-vm1 @anyvm ask\n"
        "* * test-vm2 @tag:tag1 deny\n"
        "* * test-vm2 @tag:tag2 allow\n"
        "* * test-vm2 @dispvm:@tag:tag3 allow\n"
        "* * test-vm2 @dispvm:@tag:tag2 allow\n"
        "* * test-vm2 @dispvm:default-dvm allow\n"
        "* * @type:AppVM @default allow target=test-vm3\n"
        "* * @tag:tag1 @type:AppVM allow\n"
    )
    res = decide(policy, source, target, "test.Service", "argument", QREXEC_SYSTEM)
    assert (res.rule.line if res.rule else None) == line


@pytest.mark.parametrize(
    "source, choices",
    [
        (
            "test-vm1",
            {
                "test-vm2",
                "test-vm3",
                "@dispvm:test-vm3",
                "default-dvm",
                "@dispvm:default-dvm",
                "test-invalid-dvm",
                "test-no-dvm",
                "test-template",
                "test-standalone",
            },
        ),
        # qrexec offers test-vm3 here, the redirect of an @default rule; no
        # target test-vm2 can name is allowed or asked, so qlite offers nothing.
        ("test-vm2", set()),
        ("test-vm3", set()),
        (
            "test-standalone",
            {
                "test-vm1",
                "test-vm2",
                "test-vm3",
                "default-dvm",
                "test-no-dvm",
                "test-invalid-dvm",
                "@dispvm:default-dvm",
                "dom0",
            },
        ),
        ("test-no-dvm", set()),
    ],
)
def test_qrexec_collect_targets_for_ask(source, choices):
    policy = policy_of(
        "* * @anyvm @default ask\n"  # so that every source is asked; choices never come from it
        "* * test-vm1 test-vm2 allow\n"
        "* * test-vm1 @anyvm ask\n"
        "* * test-vm2 @tag:tag1 deny\n"
        "* * test-vm2 @tag:tag2 allow\n"
        "* * test-no-dvm @type:AppVM deny\n"
        "* * @type:AppVM @default allow target=test-vm3\n"
        "* * @tag:tag1 @type:AppVM allow\n"
        "* * test-no-dvm @dispvm allow\n"
        "* * test-standalone @dispvm allow\n"
        "* * test-standalone @adminvm allow\n"
    )
    res = decide(policy, source, "@default", "test.Service", "argument", QREXEC_SYSTEM)
    assert res.rule is not None and res.rule.line == 1
    if choices:
        assert (res.action, set(res.choices)) == ("ask", choices)
    else:
        assert res.action == "deny" and "no target to choose from" in res.reason


QREXEC_EVAL_POLICY = (
    "* * test-vm1 test-vm2 allow\n"
    "* * test-vm1 @default allow target=test-vm2\n"
    "* * @tag:tag1 test-vm2 ask\n"
    "* * @tag:tag1 test-vm3 ask default_target=test-vm3\n"
    "* * @tag:tag2 @anyvm allow\n"
    "* * test-vm3 @anyvm deny\n"
)
QREXEC_ASK_CHOICES = (
    "@dispvm:default-dvm",
    "@dispvm:test-vm3",
    "default-dvm",
    "test-invalid-dvm",
    "test-no-dvm",
    "test-template",
    "test-vm1",
    "test-vm2",
    "test-vm3",
)


@pytest.mark.parametrize(
    "policy, source, target, expected, choices",
    [
        (QREXEC_EVAL_POLICY, "test-vm1", "test-vm2", ("allow", "test-vm2", 1), ()),
        (QREXEC_EVAL_POLICY, "test-vm1", "@default", ("allow", "test-vm2", 2), ()),
        (QREXEC_EVAL_POLICY, "test-standalone", "@default", ("deny", None, 5), ()),
        (QREXEC_EVAL_POLICY, "test-standalone", "test-vm2", ("ask", None, 3), QREXEC_ASK_CHOICES),
        (QREXEC_EVAL_POLICY, "test-standalone", "test-vm3", ("ask", "test-vm3", 4), QREXEC_ASK_CHOICES),
        ("* * test-vm3 @default ask", "test-vm3", "@default", ("deny", None, 1), ()),
        ("* * test-vm3 @dispvm allow", "test-vm3", "@dispvm", ("allow", "@dispvm:default-dvm", 1), ()),
        ("* * @anyvm @dispvm allow", "test-vm3", "@dispvm", ("allow", "@dispvm:default-dvm", 1), ()),
        ("* * test-no-dvm @dispvm allow", "test-no-dvm", "@dispvm", ("deny", None, 1), ()),
        # qrexec would hand out @dispvm:test-vm1 here; qlite checks it is a disposable template
        ("* * @anyvm @dispvm allow", "test-invalid-dvm", "@dispvm", ("deny", None, 1), ()),
        ("* * test-vm3 @anyvm allow target=no-such-vm", "test-vm3", "@default", ("deny", None, 1), ()),
        ("* * test-vm3 @adminvm allow", "test-vm3", "@adminvm", ("allow", "dom0", 1), ()),
        ("* * test-vm3 @adminvm allow", "test-vm3", "dom0", ("allow", "dom0", 1), ()),
    ],
)
def test_qrexec_evaluate(policy, source, target, expected, choices):
    res = decide(policy, source, target, "test.Service", "argument", QREXEC_SYSTEM)
    assert summary(res) == expected
    assert res.choices == choices


# -- properties -------------------------------------------------------------------

NAMES = ["work", "vault", "dvm1", "dvm2", "tmpl", "disp1"]
FACTS = st.builds(
    QubeFacts,
    name=st.just(""),
    klass=st.sampled_from(["AppVM", "TemplateVM", "DispVM", "StandaloneVM"]),
    tags=st.frozensets(st.sampled_from(["t1", "t2", "anon-vm"])),
    default_dispvm=st.sampled_from([None, "ghost", *NAMES]),
    template_for_dispvms=st.booleans(),
)
SYSTEMS = st.dictionaries(st.sampled_from(NAMES), FACTS, min_size=2, max_size=len(NAMES)).map(
    lambda qubes: System(
        {name: QubeFacts(name, f.klass, f.tags, f.default_dispvm, f.template_for_dispvms) for name, f in qubes.items()}
    )
)
QUBE_TOKENS = [
    *NAMES,
    "ghost",
    "dom0",
    "@adminvm",
    "@anyvm",
    "@anyvm",
    "*",
    "*",
    "@tag:t1",
    "@tag:anon-vm",
    "@type:AppVM",
    "@type:DispVM",
    "@dispvm:dvm1",
    "@dispvm:@tag:t1",
]
PARAM_VALUES = {
    "target": ["work", "@dispvm", "dom0", "ghost", "@dispvm:dvm2"],
    "default_target": ["vault", "@dispvm", "dom0"],
    "notify": ["yes", "no"],
    "autostart": ["yes", "no"],
    "user": ["root"],
}
ACTION_PARAMS = {
    "allow": ["target", "notify", "autostart", "user"],
    "deny": ["notify"],
    "ask": ["target", "default_target", "notify", "autostart", "user"],
}


@st.composite
def policy_lines(draw) -> str:
    """A policy line, valid most of the time."""
    service = draw(st.sampled_from(["svc", "svc", "other", "*"]))
    argument = "*" if service == "*" else draw(st.sampled_from(["*", "*", "+", "+x"]))
    source = draw(st.sampled_from(QUBE_TOKENS))
    target = draw(st.sampled_from([*QUBE_TOKENS, "@default", "@dispvm"]))
    action = draw(st.sampled_from(["allow", "deny", "ask"]))
    keys = draw(st.lists(st.sampled_from(ACTION_PARAMS[action]), max_size=2, unique=True))
    params = [f"{key}={draw(st.sampled_from(PARAM_VALUES[key]))}" for key in keys]
    return " ".join([service, argument, source, target, action, *params])


LINES = policy_lines()


def policies_from(lines: list[str]) -> Policy:
    """The valid LINES as a policy (an invalid line is skipped, not fatal)."""
    rules = []
    for i, line in enumerate(lines, start=1):
        try:
            rules += [replace(rule, line=i) for rule in parse_policy(line, "h.policy")]
        except PolicySyntaxError:
            continue
    return Policy(tuple(rules))


JUNK = st.text(max_size=8)


def mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """GOOD values most of the time; BAD ones and arbitrary text now and then."""
    return st.integers(0, 9).flatmap(
        lambda n: st.sampled_from(good) if n < 8 else st.sampled_from(bad) if n == 8 else JUNK
    )


@st.composite
def scenarios(draw, max_lines: int = 10) -> tuple[System, Policy, Request]:
    """A small system, a policy of valid and invalid lines, and a request mostly about that system."""
    system = draw(SYSTEMS)
    names = sorted(system.qubes) or ["work"]
    # A generic last rule, as real policies have, so that many calls reach a decision.
    tail = draw(
        st.sampled_from(
            ["", "* * @anyvm @anyvm ask", "* * * * allow", "svc * @anyvm @dispvm allow", "* * @anyvm @anyvm deny"]
        )
    )
    policy = policies_from([*draw(st.lists(LINES, max_size=max_lines)), tail])
    request = Request(
        service=draw(mostly(["svc", "other"], ["*", "bad name", ""])),
        argument=draw(mostly(["", "x"], ["a/b", "+"])),
        source=draw(mostly([*names, "dom0"], ["ghost", "@adminvm"])),
        target=draw(
            mostly(
                [*names, "dom0", "@adminvm", "@default", "", "@dispvm", "@dispvm:dvm1"],
                ["@dispvm:work", "@anyvm", "ghost", "@tag:t1"],
            )
        ),
    )
    return system, policy, request


@given(scenarios())
def test_evaluate_never_raises_and_answers_consistently(scenario):
    system, policy, request = scenario
    res = evaluate(policy, system, request)
    assert res.action in ("allow", "deny", "ask")
    assert isinstance(res.reason, str) and res.reason and "\n" not in res.reason
    valid_dispvms = {f"@dispvm:{n}" for n, f in system.qubes.items() if f.template_for_dispvms}
    offerable = (set(system.qubes) | {"dom0"} | valid_dispvms) - {request.source}
    if res.action == "deny":
        assert (res.target, res.choices) == (None, ())
    elif res.action == "allow":
        assert res.target in offerable and res.choices == ()
        assert res.rule is not None
    else:
        assert res.choices and list(res.choices) == sorted(set(res.choices))
        assert set(res.choices) <= offerable
        assert res.target is None or res.target in res.choices
        for chosen in res.choices:
            assert answer_ask(res, chosen, system).action == "allow"


@given(scenarios(max_lines=5))
def test_a_broken_policy_always_denies(scenario):
    system, policy, request = scenario
    broken = Policy(policy.rules, error="x.policy:1: broken")
    res = evaluate(broken, system, request)
    assert (res.action, res.target, res.choices, res.rule) == ("deny", None, (), None)
    assert res.reason == "denied: the policy is broken: x.policy:1: broken"
