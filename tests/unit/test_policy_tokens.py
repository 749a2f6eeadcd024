"""Policy tokens: each word of a rule's qube columns parsed once into a typed token."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.errors import PolicySyntaxError
from qlite.rpc.policy import QubeFacts, Rule, parse_policy
from qlite.rpc.policy.tokens import (
    QUBE_TYPES,
    AnyVM,
    Default,
    DispVM,
    DispVMName,
    DispVMTag,
    Dom0,
    InvalidToken,
    QubeName,
    QubeType,
    Tag,
    Wildcard,
    named_qube,
    parse_redirect,
    parse_source,
    parse_target,
    parse_word,
)

TYPE_HINT = "the type must be one of AdminVM, AppVM, DispVM, StandaloneVM, TemplateVM"
TAG_HINT = "the tag is empty or starts with '@'"
DISPVM_HINT = "@dispvm: must be followed by a qube name or @tag:TAG"
NAME_HINT = "not a qube name (a letter, then up to 30 letters, digits, '_', '.' or '-')"


@pytest.mark.parametrize(
    "word, token",
    [
        ("work", QubeName("work")),
        ("a", QubeName("a")),
        ("W0rk_.-x", QubeName("W0rk_.-x")),
        ("a" * 31, QubeName("a" * 31)),
        ("dom0", Dom0("dom0")),
        ("@adminvm", Dom0("@adminvm")),
        ("@anyvm", AnyVM()),
        ("*", Wildcard()),
        ("@default", Default()),
        ("@dispvm", DispVM()),
        ("@dispvm:default-dvm", DispVMName("default-dvm")),
        ("@dispvm:@tag:dvm", DispVMTag("dvm")),
        ("@dispvm:@tag:a:b", DispVMTag("a:b")),
        ("@tag:work", Tag("work")),
        ("@tag:x@y", Tag("x@y")),
        *((f"@type:{klass}", QubeType(klass)) for klass in sorted(QUBE_TYPES)),
    ],
)
def test_each_kind_parses_and_gives_back_its_word(word, token):
    assert parse_word(word) == token
    assert type(parse_word(word)) is type(token)
    assert str(parse_word(word)) == word
    assert parse_target(word) == token


def test_dom0_keeps_its_spelling_but_both_spellings_are_the_host():
    assert (str(parse_word("dom0")), str(parse_word("@adminvm"))) == ("dom0", "@adminvm")
    assert isinstance(parse_word("dom0"), Dom0) and isinstance(parse_word("@adminvm"), Dom0)
    assert str(Dom0()) == "dom0"


@pytest.mark.parametrize(
    "word, message, kind",
    [
        ("@tag:", TAG_HINT, Tag),
        ("@tag:@x", TAG_HINT, Tag),
        ("@type:", TYPE_HINT, QubeType),
        ("@type:AppVm", TYPE_HINT, QubeType),
        ("@dispvm:", DISPVM_HINT, DispVMName),
        ("@dispvm:1x", DISPVM_HINT, DispVMName),
        ("@dispvm:@type:AppVM", DISPVM_HINT, DispVMName),
        ("@dispvm:@tag:", TAG_HINT, DispVMTag),
        ("@dispvm:@tag:@x", TAG_HINT, DispVMTag),
        ("@invalid", "unknown keyword", None),
        ("@", "unknown keyword", None),
        ("@ADMINVM", "unknown keyword", None),
        ("1work", NAME_HINT, QubeName),
        ("bad$name", NAME_HINT, QubeName),
        ("a" * 32, NAME_HINT, QubeName),
        ("work\n", NAME_HINT, QubeName),
        ("", NAME_HINT, QubeName),
    ],
)
def test_invalid_words_say_why_and_what_they_were_meant_to_be(word, message, kind):
    with pytest.raises(InvalidToken) as caught:
        parse_word(word)
    assert (str(caught.value), caught.value.kind) == (message, kind)
    with pytest.raises(PolicySyntaxError, match=r"\A" + re.escape(f"invalid source {word!r}: {message}") + r"\Z"):
        parse_source(word)
    with pytest.raises(PolicySyntaxError, match=r"\A" + re.escape(f"invalid target {word!r}: {message}") + r"\Z"):
        parse_target(word)


@pytest.mark.parametrize("word", ["@default", "@dispvm"])
def test_default_and_dispvm_are_targets_only(word):
    with pytest.raises(PolicySyntaxError, match=r"\A" + re.escape(f"'{word}' cannot be used as a source") + r"\Z"):
        parse_source(word)
    assert str(parse_target(word)) == word


@pytest.mark.parametrize(
    "word, token",
    [
        ("work", QubeName("work")),
        ("dom0", Dom0("dom0")),
        ("@adminvm", Dom0("@adminvm")),
        ("@dispvm", DispVM()),
        ("@dispvm:dvm", DispVMName("dvm")),
    ],
)
def test_redirects_name_one_target(word, token):
    assert parse_redirect("target", word) == token
    assert str(parse_redirect("default_target", word)) == word


@pytest.mark.parametrize(
    "word", ["@anyvm", "*", "@default", "@tag:x", "@type:AppVM", "@dispvm:@tag:x", "@bad", "", "1x"]
)
@pytest.mark.parametrize("key", ["target", "default_target"])
def test_redirects_reject_everything_else(key, word):
    expected = f"{key}= must be a qube name, dom0, @adminvm, @dispvm or @dispvm:NAME, not {word!r}"
    with pytest.raises(PolicySyntaxError) as caught:
        parse_redirect(key, word)
    assert str(caught.value) == expected


def facts(name="work", klass="AppVM", tags=(), dvm=False) -> QubeFacts:
    return QubeFacts(name, klass, frozenset(tags), None, dvm)


@pytest.mark.parametrize(
    "token, qube, matches",
    [
        (QubeName("work"), facts("work"), True),
        (QubeName("work"), facts("work-web"), False),
        (AnyVM(), facts(), True),
        (Wildcard(), facts(), True),
        (Tag("red"), facts(tags={"red", "blue"}), True),
        (Tag("red"), facts(tags={"blue"}), False),
        (QubeType("TemplateVM"), facts(klass="TemplateVM"), True),
        (QubeType("AppVM"), facts(klass="TemplateVM"), False),
        (QubeType("AdminVM"), facts(klass="AppVM"), False),
    ],
)
def test_tokens_match_a_qube_by_its_facts(token, qube, matches):
    assert token.matches(qube) is matches


@pytest.mark.parametrize(
    "template, matches",
    [
        (facts("dvm", tags={"dvm"}, dvm=True), True),
        (facts("dvm", tags={"other"}, dvm=True), False),
        (facts("dvm", tags={"dvm"}, dvm=False), False),  # tagged, but no disposable template
    ],
)
def test_dispvm_tag_matches_tagged_disposable_templates_only(template, matches):
    assert DispVMTag("dvm").matches_template(template) is matches


@pytest.mark.parametrize(
    "word, name",
    [
        ("work", "work"),
        ("@dispvm:dvm", "dvm"),
        ("dom0", None),
        ("@dispvm", None),
        ("@dispvm:@tag:work", None),
        ("@tag:work", None),
        ("@anyvm", None),
    ],
)
def test_named_qube(word, name):
    assert named_qube(parse_word(word)) == name
    assert named_qube(None) is None


def test_tokens_are_frozen_and_compare_by_value():
    token = parse_word("@tag:work")
    with pytest.raises(AttributeError):
        token.tag = "other"  # type: ignore[misc]
    assert token == Tag("work") and hash(token) == hash(Tag("work"))
    assert Tag("work") != DispVMTag("work")
    assert QubeName("work") != "work"  # a token is no string: str() it to compare with one


def test_rules_hold_typed_tokens_and_their_params_as_written():
    (rule,) = parse_policy("svc * @tag:work @default ask target=@dispvm:dvm default_target=@adminvm", "x.policy")
    assert (rule.source, rule.target, rule.redirect, rule.default_redirect) == (
        Tag("work"),
        Default(),
        DispVMName("dvm"),
        Dom0("@adminvm"),
    )
    assert dict(rule.params) == {"target": "@dispvm:dvm", "default_target": "@adminvm"}
    (plain,) = parse_policy("svc * @anyvm work allow", "x.policy")
    assert (plain.source, plain.target, plain.redirect, plain.default_redirect) == (
        AnyVM(),
        QubeName("work"),
        None,
        None,
    )


def test_a_rule_built_by_hand_parses_its_redirects():
    rule = Rule("svc", None, AnyVM(), Default(), "allow", {"target": "vault"}, "f", 1)
    assert rule.redirect == QubeName("vault")
    with pytest.raises(PolicySyntaxError, match="target= must be a qube name"):
        Rule("svc", None, AnyVM(), Default(), "allow", {"target": "@anyvm"}, "f", 1)


# -- properties -------------------------------------------------------------------

NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_.-]{0,30}\Z")
TAGS = st.text(st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=12).filter(
    lambda tag: not tag.startswith("@")
)
VALID_WORDS = st.one_of(
    st.sampled_from(["dom0", "@adminvm", "@anyvm", "*", "@default", "@dispvm"]),
    NAMES,
    NAMES.map("@dispvm:".__add__),
    TAGS.map("@dispvm:@tag:".__add__),
    TAGS.map("@tag:".__add__),
    st.sampled_from(sorted(QUBE_TYPES)).map("@type:".__add__),
)
ANY_WORDS = st.tuples(
    st.sampled_from(["", "@", "@tag:", "@type:", "@dispvm:", "@dispvm:@tag:", "@dispvm:@type:"]),
    st.text(max_size=10),
).map("".join)


@given(VALID_WORDS)
def test_every_valid_word_parses_and_round_trips(word):
    token = parse_word(word)
    assert str(token) == word
    assert parse_target(word) == token


@given(st.one_of(VALID_WORDS, ANY_WORDS))
def test_the_column_parsers_agree_with_parse_word(word):
    try:
        token = parse_word(word)
    except InvalidToken as err:
        for column, parse in (("source", parse_source), ("target", parse_target)):
            with pytest.raises(PolicySyntaxError) as caught:
                parse(word)
            assert str(caught.value) == f"invalid {column} {word!r}: {err}"
        return
    assert str(token) == word
    assert parse_target(word) == token
    if isinstance(token, (Default, DispVM)):
        with pytest.raises(PolicySyntaxError):
            parse_source(word)
    else:
        assert parse_source(word) == token
    if isinstance(token, (QubeName, Dom0, DispVM, DispVMName)):
        assert parse_redirect("target", word) == token
    else:
        with pytest.raises(PolicySyntaxError):
            parse_redirect("target", word)
