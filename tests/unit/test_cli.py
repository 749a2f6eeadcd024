"""The CLI's pure parts: `run` argument splitting and usage errors (125)."""

from __future__ import annotations

import argparse

import pytest

import qlite.cli
from qlite.cli.commands import split_run_args
from qlite.errors import InvalidValue


@pytest.mark.parametrize(
    ("rest", "disposable", "expected"),
    [
        (["work", "--", "ls", "-l"], False, ("work", ["ls", "-l"])),
        (["work", "ls", "-l"], False, ("work", ["ls", "-l"])),
        (["work", "--", "--help"], False, ("work", ["--help"])),
        (["work", "--", "grep", "--", "-x"], False, ("work", ["grep", "--", "-x"])),
        (["--", "ls"], True, (None, ["ls"])),
        (["ls", "-l"], True, (None, ["ls", "-l"])),
        (["--", "sh", "-c", "echo -- hi"], True, (None, ["sh", "-c", "echo -- hi"])),
        (["--", "grep", "--", "-x"], True, (None, ["grep", "--", "-x"])),
        # A "--" that belongs to the command, after the command has started:
        (["work", "git", "diff", "--", "README"], False, ("work", ["git", "diff", "--", "README"])),
        (["git", "diff", "--", "README"], True, (None, ["git", "diff", "--", "README"])),
        (["a", "b", "--", "ls"], False, ("a", ["b", "--", "ls"])),
        (["work", "--", "ls"], True, (None, ["work", "--", "ls"])),
    ],
)
def test_split_run_args(rest, disposable, expected):
    assert split_run_args(list(rest), disposable) == expected


@pytest.mark.parametrize(
    ("rest", "disposable", "fragment"),
    [
        ([], False, "usage"),
        (["work"], False, "no command"),
        (["work", "--"], False, "no command"),
        (["--", "ls"], False, "no command"),
        ([], True, "no command"),
        (["--"], True, "no command"),
    ],
)
def test_split_run_args_errors(rest, disposable, fragment):
    with pytest.raises(InvalidValue, match=fragment) as exc:
        split_run_args(list(rest), disposable)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["create"],
        ["create", "work"],  # --label is required
        ["create", "work", "-l", "red", "--memory", "lots"],
        ["create", "work", "-l", "red", "--vcpus", "2.5"],
        ["create", "work", "-l", "red", "--mode", "hvm"],
        ["create", "work", "-l", "red", "--bogus"],
        ["start"],
        ["template", "explode"],
        ["tags", "work", "frobnicate"],
        ["service", "restart"],
        ["shutdown", "--timeout", "soon"],
        ["run", "--no-such-flag", "work", "ls"],
        ["ls", "extra"],
        ["--no-such-global-flag"],
        # Each action takes only its own options.
        ["device", "attach", "--fs-uuid", "1234", "work", "sdb1"],
        ["device", "list", "--ro"],
        ["device", "pair", "work", "--exec"],
        ["aem", "verify", "--boot-pcrs", "7"],
        ["template", "list", "--force"],
        ["splitgpg", "list", "vault", "--client", "work"],
        ["device"],
        ["device", "frob"],
    ],
)
def test_usage_errors_exit_125(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        qlite.cli.main(argv)
    assert exc.value.code == 125
    err = capsys.readouterr().err
    assert err.startswith("qlite: error:")
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["create", "--help"]])
def test_help_and_version_exit_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        qlite.cli.main(argv)
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--disposable", "--", "true"],
        ["run", "work", "-u", "root", "--", "id"],
        ["ls", "--json"],
        ["create", "work", "-l", "red", "--netvm", "none", "--prop", "a=b"],
        ["firewall", "work", "add", "action=accept", "dsthost=example.org"],
        ["device", "attach", "work", "sdb1", "--ro"],
        ["tui"],
        ["reconcile"],
    ],
)
def test_the_one_command_parser_reads_argv_as_the_whole_parser_does(argv):
    one = qlite.cli.build_parser(argv[0])
    assert one.matched
    assert vars(one.parse_args(argv)) == vars(qlite.cli.build_parser().parse_args(argv))


def test_every_command_has_a_parser_of_its_own():
    full = qlite.cli.build_parser()
    names = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(names) > 20
    for name in names:
        assert qlite.cli.build_parser(name).matched, name
    assert not qlite.cli.build_parser("nosuch").matched


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["splitgpg", "export", "vault", "ABCD"], {"action": "export", "vault": "vault", "args": ["ABCD"]}),
        (
            ["splitgpg", "import", "--json", "vault", "-"],
            {"action": "import", "vault": "vault", "args": ["-"], "json": True},
        ),
        (["splitgpg", "setup", "vault", "--client", "a", "--client", "b"], {"vault": "vault", "client": ["a", "b"]}),
        (["splitgpg", "list", "vault", "--secret"], {"vault": "vault", "secret": True, "client": []}),
        (
            ["device", "--json", "attach", "work", "sdb1", "--ro"],
            {"action": "attach", "args": ["work", "sdb1"], "ro": True, "json": True, "fs_uuid": None},
        ),
        (["device", "pair", "--fs-uuid", "1234", "work"], {"action": "pair", "args": ["work"], "fs_uuid": "1234"}),
        (["template", "build", "debian-12", "--force", "-q"], {"name": "debian-12", "force": True, "quiet": True}),
        (["template", "revert", "debian-12"], {"name": "debian-12", "force": False, "quiet": False}),
        (["aem", "seal", "--secret-file", "s", "--boot-pcrs", "0,7"], {"secret_file": "s", "boot_pcrs": "0,7"}),
        (["policy", "eval", "qubes.Gpg", "work", "vault"], {"action": "eval", "args": ["qubes.Gpg", "work", "vault"]}),
    ],
)
def test_each_action_reads_its_own_arguments(argv, expected):
    args = qlite.cli.parse(qlite.cli.build_parser(argv[0]), argv, argv[0])
    assert {k: getattr(args, k) for k in expected} == expected
