"""Qube property parsing: every kind, its range, and its one-line errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.domain.labels import LABELS
from qlite.domain.model import (
    ALL_PROPERTIES,
    DEFAULT_MEMORY_MIB,
    PROPERTIES,
    Qube,
    format_value,
    parse_memory_limit,
    parse_property,
)
from qlite.errors import InvalidValue

BOOL_PROPS = [p for p, (_c, kind) in PROPERTIES.items() if kind == "bool"]

GOOD = [
    *[("label", name, name) for name in LABELS],
    ("memory", "32", 32),
    ("memory", "400", 400),
    ("memory", " 512 ", 512),
    ("memory", str(1 << 22), 1 << 22),
    ("maxmem", "0", 0),
    ("maxmem", "32", 32),
    ("maxmem", str(1 << 22), 1 << 22),
    ("vcpus", "1", 1),
    ("vcpus", "2", 2),
    ("vcpus", "256", 256),
    ("mode", "container", "container"),
    ("mode", "vm", "vm"),
    ("default_user", "user", "user"),
    ("default_user", "root", "root"),
    ("netvm", "none", ""),
    ("netvm", "", ""),
    ("netvm", "dom0", "dom0"),
    ("netvm", "sys-net", "sys-net"),
    ("default_dispvm", "none", ""),
    ("default_dispvm", "", ""),
    ("default_dispvm", "default-dvm", "default-dvm"),
    ("template", "debian-12", "debian-12"),
]

BAD = [
    ("label", "pink"),
    ("label", "Red"),
    ("label", ""),
    ("label", " red"),
    ("memory", "31"),
    ("memory", "0"),
    ("memory", "-1"),
    ("memory", str((1 << 22) + 1)),
    ("memory", "abc"),
    ("memory", "1.5"),
    ("memory", ""),
    ("memory", "4G"),
    ("maxmem", "-1"),
    ("maxmem", str((1 << 22) + 1)),
    ("maxmem", "x"),
    ("vcpus", "0"),
    ("vcpus", "257"),
    ("vcpus", "-2"),
    ("vcpus", "two"),
    ("mode", "Container"),
    ("mode", "hvm"),
    ("mode", ""),
    ("default_user", "admin"),
    ("default_user", "Root"),
    ("default_user", ""),
    *[(p, v) for p in BOOL_PROPS for v in ("maybe", "2", "-1", "tru", "onn", "yes please")],
]


@pytest.mark.parametrize(("prop", "text", "expected"), GOOD)
def test_parse_good_values(prop, text, expected):
    assert parse_property(prop, text) == expected


@pytest.mark.parametrize("prop", BOOL_PROPS)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on", True),
        ("1", True),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("off", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("", False),
        ("  ", False),
    ],
)
def test_parse_bools(prop, text, expected):
    assert parse_property(prop, text) is expected


@pytest.mark.parametrize(("prop", "text"), BAD)
def test_parse_bad_values(prop, text):
    with pytest.raises(InvalidValue) as exc:
        parse_property(prop, text)
    msg = str(exc.value)
    assert "\n" not in msg and msg


@pytest.mark.parametrize(
    ("prop", "text", "fragment"),
    [
        ("memory", "31", "out of range (32..4194304)"),
        ("vcpus", "257", "out of range (1..256)"),
        ("memory", "abc", "expected a whole number"),
        ("autostart", "maybe", "expected true or false"),
        ("mode", "hvm", "expected one of container, vm"),
        ("default_user", "admin", "expected user or root"),
        ("label", "pink", "unknown label"),
    ],
)
def test_error_messages_say_what_is_wrong(prop, text, fragment):
    with pytest.raises(InvalidValue, match=re.escape(fragment)):
        parse_property(prop, text)


@pytest.mark.parametrize("prop", ["name", "class"])
def test_read_only_properties(prop):
    with pytest.raises(InvalidValue, match="read-only") as exc:
        parse_property(prop, "x")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("prop", ["colour", "Label", "", "memory ", "netvm\n"])
def test_unknown_properties(prop):
    with pytest.raises(InvalidValue, match="no such property") as exc:
        parse_property(prop, "x")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("memory", "maxmem", "expected"),
    [
        (400, 0, 400),
        (400, 800, 800),
        (32, 0, 32),
        (1024, 512, 512),  # maxmem wins whenever it is set
    ],
)
def test_parse_memory_limit(memory, maxmem, expected):
    q = Qube(name="q", klass="AppVM", label="red", template="t", memory=memory, maxmem=maxmem)
    assert parse_memory_limit(q) == expected


def test_default_memory_limit():
    q = Qube(name="q", klass="AppVM", label="red", template="t")
    assert parse_memory_limit(q) == DEFAULT_MEMORY_MIB


@pytest.mark.parametrize(("value", "text"), [(True, "True"), (False, "False"), (None, ""), (5, "5"), ("x", "x")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_disposable_flag():
    assert Qube(name="disp1", klass="DispVM", label="red", template="t").is_disposable
    assert not Qube(name="work", klass="AppVM", label="red", template="t").is_disposable


@settings(max_examples=300, deadline=None)
@given(
    prop=st.one_of(st.sampled_from(ALL_PROPERTIES), st.text(max_size=12)),
    text=st.one_of(st.text(max_size=30), st.integers(-10, 1 << 23).map(str)),
)
def test_parse_property_raises_only_one_line_invalid_value(prop, text):
    try:
        parse_property(prop, text)
    except InvalidValue as exc:
        assert "\n" not in str(exc)
