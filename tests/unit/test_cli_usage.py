"""The CLI as scripts and people use it: options anywhere after the
command, errors that point to the command's --help, every name checked
before anything is done, typed JSON, bounded arguments, one-line messages."""

from __future__ import annotations

import json
import time

import pytest

import qlite.cli
from qlite.cli import build_parser, parse
from qlite.core.qubes import QubeManager
from qlite.domain.context import Context
from qlite.net.firewall import Rule, shadowed_by
from qlite.paths import Paths
from qlite.rpc import audit

from .conftest import insert_row


def parsed(argv: list[str]):
    return parse(build_parser(argv[0]), argv, argv[0])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["prefs", "work", "--json", "memory"], {"json": True, "args": ["work", "memory"]}),
        (["prefs", "--json", "work", "memory"], {"json": True, "args": ["work", "memory"]}),
        (["policy", "eval", "--json", "qubes.Gpg", "a", "b"], {"json": True, "args": ["qubes.Gpg", "a", "b"]}),
        (["remove", "a", "-f", "b"], {"force": True, "names": ["a", "b"]}),
        (["tags", "work", "add", "--json", "x"], {"json": True, "tags": ["x"]}),
        (["create", "w", "--json", "-l", "red"], {"json": True, "name": "w", "label": "red"}),
        (["clone", "a", "b", "--json"], {"json": True, "source": "a", "name": "b"}),
        # The rest of the line belongs to the command run in the qube.
        (["run", "work", "--", "ls", "--json", "-f"], {"args": ["work", "--", "ls", "--json", "-f"]}),
    ],
)
def test_options_anywhere_after_the_command(argv, expected):
    args = parsed(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["create", "w", "-l", "red", "extra"], "see 'qlite create --help'"),
        (["prefs", "a", "b", "c", "--bogus"], "see 'qlite prefs --help'"),
        (["log", "rpc", "-n", "-1"], "--lines must be 0 or more"),
        (["shutdown", "--timeout", "-5", "nosuch"], "--timeout takes seconds, 0 or more"),
        (["shutdown", "--timeout", "nan", "x"], "--timeout takes seconds"),
    ],
)
def test_usage_errors_are_one_line_and_point_to_the_command(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        parsed(argv)
    assert exc.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home with two qubes' rows (no engine objects: nothing here needs
    them), for the real CLI run in this process."""
    monkeypatch.setenv("QLITE_HOME", str(tmp_path / "home"))
    qm = QubeManager(Context(Paths(tmp_path / "home")))
    insert_row(qm, "work", netvm_raw="", autostart=True)
    insert_row(qm, "jtest", netvm_raw="")
    qm.store.close()
    return Paths(tmp_path / "home")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = qlite.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_several_names_are_all_checked_before_anything_is_done(home, capsys):
    code, _out, err = cli(capsys, "remove", "nosuch", "jtest")
    assert code == 125 and err == "qlite: error: no such qube: 'nosuch'\n"
    code, out, _err = cli(capsys, "prefs", "jtest", "name")
    assert (code, out) == (0, "jtest\n")  # still there


def test_prefs_json_has_the_types_of_ls_json(home, capsys):
    code, out, _ = cli(capsys, "prefs", "work", "--json")
    prefs = json.loads(out)
    assert code == 0
    assert prefs["autostart"] is True and prefs["provides_network"] is False
    assert prefs["memory"] == 400 and prefs["vcpus"] == 2 and prefs["maxmem"] == 0
    assert prefs["netvm"] is None and prefs["ip"] is None and prefs["label"] == "green"
    assert json.loads(cli(capsys, "prefs", "work", "--json", "memory")[1]) == {"memory": 400}
    glob = json.loads(cli(capsys, "prefs", "--global", "--json")[1])
    assert glob["default_dispvm"] is None and glob["default_netvm"] == "dom0"


@pytest.mark.parametrize(("lines", "shown"), [("0", 0), ("2", 2), ("50", 3)])
def test_log_lines(home, capsys, lines, shown):
    for i in range(3):
        audit.append(
            home.rpc_log,
            {
                "time": time.time(),
                "source": "work",
                "service": f"s{i}",
                "target": "b",
                "decision": "deny",
                "reason": f"denied by policy p:{i}",
                "rule": f"p:{i}",
            },
        )
    code, out, _ = cli(capsys, "log", "rpc", "-n", lines)
    assert code == 0 and len(out.splitlines()) == shown
    for line in out.splitlines():
        assert line.count("p:") == 1 and "((" not in line and "))" not in line


def test_policy_eval_names_the_rule_once(home, capsys):
    code, out, _ = cli(capsys, "policy", "eval", "qubes.Filecopy", "work", "jtest")
    assert code == 0 and out.startswith("ask")
    assert out.count("90-default.policy:") == 1


def test_a_bad_tag_says_what_is_allowed(home, capsys):
    code, _out, err = cli(capsys, "tags", "work", "add", "bad tag!")
    assert code == 125 and "letters, digits, '-' or '_'" in err and err.count("\n") == 1


EVERYTHING = Rule("accept")


@pytest.mark.parametrize(
    ("rules", "index", "by"),
    [
        ([EVERYTHING, Rule("drop")], 1, 0),
        ([Rule("drop", proto="tcp"), EVERYTHING, Rule("drop", dsthost="10.0.0.1")], 2, 1),
        ([Rule("drop"), Rule("accept")], 1, 0),  # a drop of everything shadows too
        ([Rule("accept", dsthost="1.2.3.4"), Rule("drop")], 1, None),
        ([Rule("accept", expire=2_000_000_000), Rule("drop")], 1, None),  # reachable once it expires
        ([Rule("accept", specialtarget="dns"), Rule("drop")], 1, None),
        ([EVERYTHING], 0, None),
    ],
)
def test_shadowed_rules(rules, index, by):
    assert shadowed_by(rules, index) == by


def test_adding_an_unreachable_rule_warns_with_the_way_out(ctx):
    qm = QubeManager(ctx)
    insert_row(qm, "fw", netvm_raw="")
    qm.net.add_rule("fw", Rule("drop", proto="tcp"))  # after the default accept
    assert any("rule 1 can never match" in w and "--before 0" in w for w in ctx.warnings)
    ctx.warnings.clear()
    qm.net.add_rule("fw", Rule("drop", proto="udp"), before=0)
    assert ctx.warnings == []
