"""Qube names: the Contracts' rule ^[A-Za-z][A-Za-z0-9_.-]{0,30}$, with
none, default, dom0, dispN and *-dm reserved."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.domain.names import name_problem, validate_name
from qlite.errors import InvalidName, QliteError

VALID = [
    "a",
    "Z",
    "work",
    "personal",
    "sys-net",
    "sys_firewall",
    "v1.2",
    "a-b_c.d",
    "A0",
    "a" * 31,
    "x" + "-" * 30,
    "Dom0",
    "None",
    "DEFAULT",
    "dom01x",
    "display",
    "disp",
    "dispvm",
    "disp-1",
    "disp1a",
    "default-dvm",
    "dm",
    "a-dm2",
    "x-DM",
    "nonexistent",
    "dom",
    "default0",
]
INVALID = [
    ("", "empty"),
    ("1work", "starts with a digit"),
    ("_work", "starts with _"),
    ("-work", "starts with -"),
    (".work", "starts with ."),
    ("work space", "space"),
    ("work/x", "slash"),
    ("work:x", "colon"),
    ("wörk", "non-ASCII letter"),
    ("ａbc", "full-width letter"),
    ("a" * 32, "32 characters"),
    ("a" * 100, "100 characters"),
    ("none", "reserved"),
    ("default", "reserved"),
    ("dom0", "reserved"),
    ("disp1", "disposable-style"),
    ("disp0", "disposable-style"),
    ("disp9999", "disposable-style"),
    ("disp12345", "disposable-style"),
    ("sys-net-dm", "ends in -dm"),
    ("a-dm", "ends in -dm"),
    ("abc\n", "trailing newline"),
    ("abc\r", "trailing CR"),
    ("abc\t", "trailing tab"),
    ("\nabc", "leading newline"),
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name):
    assert validate_name(name) == name
    assert name_problem(name) is None


@pytest.mark.parametrize(("name", "why"), INVALID, ids=[w for _, w in INVALID])
def test_invalid_names(name, why):
    with pytest.raises(InvalidName) as exc:
        validate_name(name)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("invalid qube name")


@pytest.mark.parametrize(("length", "ok"), [(1, True), (30, True), (31, True), (32, False), (33, False)])
def test_length_limit(length, ok):
    name = "q" * length
    if ok:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidName):
            validate_name(name)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("disp1", True),
        ("disp0042", True),
        ("disp9999", True),
        ("disp" + "1" * 27, True),  # 31 characters
        ("disp" + "1" * 28, False),  # 32 characters
        ("disp", True),  # an ordinary valid name, not a disposable one
        ("work", True),
        ("dom0", False),
        ("none", False),
        ("x-dm", False),
        ("disp1\n", False),
        ("disp-1", True),
        ("1disp", False),
    ],
)
def test_allow_disp(name, ok):
    if ok:
        assert validate_name(name, allow_disp=True) == name
    else:
        with pytest.raises(InvalidName):
            validate_name(name, allow_disp=True)


@pytest.mark.parametrize("name", ["disp1", "disp0042", "disp9999"])
def test_disp_names_need_allow_disp(name):
    with pytest.raises(InvalidName, match="disposables"):
        validate_name(name)


@pytest.mark.parametrize("value", [None, 5, b"work", ["work"]])
def test_non_strings_are_invalid_names(value):
    with pytest.raises(InvalidName):
        validate_name(value)  # type: ignore[arg-type]


def test_invalid_name_is_a_qlite_error():
    assert issubclass(InvalidName, QliteError)


# --------------------------------------------------------------------------
# Hypothesis: the oracle is the Contracts' rule, applied with fullmatch.

CONTRACT = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
DISP = re.compile(r"disp[0-9]+")


def contract_allows(name: str, allow_disp: bool) -> bool:
    if allow_disp and DISP.fullmatch(name) and len(name) <= 31:
        return True
    if not CONTRACT.fullmatch(name):
        return False
    if name in ("none", "default", "dom0") or DISP.fullmatch(name) or name.endswith("-dm"):
        return False
    return True


names = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abzAZ09_.-\n\r\t é", max_size=40),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,33}", fullmatch=True),
    st.from_regex(r"disp[0-9]{0,30}\n?", fullmatch=True),
    st.from_regex(r"[a-z]{1,5}-dm\n?", fullmatch=True),
    st.sampled_from(["none", "default", "dom0", "none\n", "dom0\n", "work\n"]),
)


@settings(max_examples=400, deadline=None)
@given(name=names, allow_disp=st.booleans())
def test_validate_name_matches_the_contract(name, allow_disp):
    try:
        result = validate_name(name, allow_disp=allow_disp)
    except InvalidName as exc:
        assert "\n" not in str(exc)
        assert not contract_allows(name, allow_disp), f"{name!r} was refused"
    else:
        assert result == name
        assert contract_allows(name, allow_disp), f"{name!r} was accepted"
