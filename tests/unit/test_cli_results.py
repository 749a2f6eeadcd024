"""Commands return results and print nothing themselves; main() shows
each result once. The JSON keys scripts read are pinned here, command by
command, through the CLI in-process over the fake engine."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest

from qlite.cli import build_parser, main, parse
from qlite.cli.render import json_ready, show
from qlite.cli.results import (
    Lines,
    Message,
    PolicyAnswer,
    Raw,
    Record,
    Result,
    Table,
    TemplateApproved,
    TemplateRemoved,
    TemplateReverted,
    TemplateRevision,
    TemplateUpdate,
)
from qlite.core.templates import TemplateManager, image_ref
from qlite.doctor import Check
from qlite.gpg.vault import KeyInfo, SubkeyInfo
from qlite.rpc import audit

from .conftest import TEMPLATE


def run(ctx, capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv), ctx)
    except SystemExit as exc:  # argument errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(ctx, capsys, tmp_path, monkeypatch):
    """A home with a qube 'work' (a feature, a tag, a firewall rule), an
    RPC log, and anti-evil-maid components that measure in a moment."""
    for argv in (
        ["prefs", "--global", "default_template", TEMPLATE],
        ["create", "work", "-l", "blue", "-t", TEMPLATE],
        ["features", "work", "gui", "1"],
        ["tags", "work", "add", "alpha"],
        ["firewall", "work", "add", "action=drop", "proto=tcp", "dstports=22", "comment=no ssh"],
    ):
        assert run(ctx, capsys, *argv)[0] == 0, argv
    audit.append(
        ctx.paths.rpc_log,
        {
            "time": 1.0,
            "source": "work",
            "service": "qubes.Filecopy",
            "target": "b",
            "decision": "deny",
            "reason": "denied by policy p:1",
            "rule": "p:1",
        },
    )
    monkeypatch.setenv("QLITE_TPM_TCTI", "none")
    aem_dir, measured = ctx.paths.home / "aem", tmp_path / "measured"
    aem_dir.mkdir()
    measured.mkdir()
    (aem_dir / "components.json").write_text(
        json.dumps(
            {
                "qlite": [str(measured)],
                "binary:runsc": "/nonexistent",
                "binary:podman": "/nonexistent",
                "binary:qemu": "/nonexistent",
                "runsc-config": [str(measured)],
                "policy": [str(measured)],
            }
        )
    )
    (tmp_path / "secret").write_text("the secret\n")
    (tmp_path / "pass").write_text("passphrase\n")
    monkeypatch.setattr("qlite.doctor.run_checks", lambda ctx, kvm=True: [Check("podman", "ok", "podman 5")])
    return ctx


def shape(doc):
    """DOC's keys: an object's in order, a list's element by element."""
    if isinstance(doc, dict):
        return list(doc)
    if isinstance(doc, list):
        return [shape(v) for v in doc]
    return type(doc).__name__


QUBE = [
    "name",
    "class",
    "state",
    "label",
    "template",
    "netvm",
    "mode",
    "netpath",
    "memory",
    "vcpus",
    "template_for_dispvms",
    "provides_network",
    "tags",
    "revision",
]
PREFS = [
    "name",
    "class",
    "uuid",
    "label",
    "template",
    "netvm",
    "provides_network",
    "memory",
    "maxmem",
    "vcpus",
    "autostart",
    "default_dispvm",
    "template_for_dispvms",
    "default_user",
    "include_in_backups",
    "mode",
    "ip",
]
TEMPLATE_INFO = ["name", "class", "current_revision", "image", "image_id", "revisions", "users", "origin"]
FIREWALL = [["action"], ["action", "proto", "dstports", "comment"]]


def second_revision(ctx, tmp):
    ctx.engine.add_image("cd" * 32, (image_ref(TEMPLATE, 2),))
    TemplateManager(ctx)._record(TEMPLATE, 2, "cd" * 32, "update")


def unused(ctx, tmp):
    assert main(["remove", "work"], ctx) == 0
    assert main(["prefs", "--global", "-D", "default_template"], ctx) == 0


def a_drive(ctx, tmp):
    ctx.block_devices.add("sdb1", fs_uuid="1234-ABCD", label="STICK", serial="S9")


def sealed(ctx, tmp):
    assert main(["aem", "seal", "--secret-file", f"{tmp}/secret", "--passphrase-file", f"{tmp}/pass"], ctx) == 0


@pytest.mark.parametrize(
    ("argv", "expected", "before"),
    [
        (["create", "new", "-l", "red", "-t", TEMPLATE, "--json"], QUBE, None),
        (["clone", "work", "copy", "--json"], QUBE, None),
        (["ls", "--json"], [[*QUBE, "preloaded", "usage"]] * 2, None),
        (["prefs", "work", "--json"], PREFS, None),
        (["prefs", "work", "--json", "memory"], ["memory"], None),
        (["prefs", "--global", "--json"], ["default_template", "default_dispvm", "default_netvm"], None),
        (["prefs", "--global", "--json", "default_netvm"], ["default_netvm"], None),
        (["features", "work", "--json"], ["gui"], None),
        (["features", "work", "--json", "gui"], ["gui"], None),
        (["tags", "work", "--json"], ["str"], None),
        (["firewall", "work", "--json"], FIREWALL, None),
        (["firewall", "work", "add", "action=accept", "--json"], [*FIREWALL, ["action"]], None),
        (["firewall", "work", "del", "1", "--json"], FIREWALL[:1], None),
        (["firewall", "work", "reset", "--json"], FIREWALL[:1], None),
        (["template", "list", "--json"], [TEMPLATE_INFO], None),
        (["template", "revert", TEMPLATE, "--json"], ["name", "revision", "image_id"], second_revision),
        (["template", "approve", TEMPLATE, "--json"], ["name", "image_id"], None),
        (["template", "remove", TEMPLATE, "--json"], ["name", "removed"], unused),
        (["reconcile", "--json"], ["disposables", "interrupted", "containers", "volumes", "networks", "images"], None),
        (
            ["policy", "eval", "--json", "qubes.Filecopy", "work", "work"],
            ["action", "target", "choices", "user", "rule", "reason"],
            None,
        ),
        (
            ["policy", "eval", "--json", "qubes.Filecopy", "dom0", "work"],
            ["action", "target", "choices", "user", "rule", "reason"],
            None,
        ),
        (["policy", "lint", "--json"], ["errors", "warnings"], None),
        (["policy", "ask", "--json"], [], None),
        (["log", "rpc", "--json"], [["time", "source", "service", "target", "decision", "reason", "rule"]], None),
        (["doctor", "--json"], [["check", "status", "detail", "fix"]], None),
        (
            ["splitgpg", "setup", "vault", "--client", "work", "--json"],
            ["vault", "clients", "created", "policy_file"],
            None,
        ),
        (
            ["device", "list", "--json"],
            [
                [
                    "name",
                    "path",
                    "size",
                    "fs_uuid",
                    "fs_type",
                    "label",
                    "serial",
                    "ident",
                    "attached_to",
                    "read_only",
                    "assigned_to",
                    "host_mounts",
                ]
            ],
            a_drive,
        ),
        (["aem", "log", "--json"], ["measurements", "chain", "tpm", "pcr", "sealed", "sealed_at", "enforced"], None),
        (
            ["aem", "verify", "--json", "--passphrase-file", "{tmp}/pass"],
            ["ok", "mode", "detail", "changed", "secret"],
            sealed,
        ),
    ],
)
def test_json_keys(home, capsys, tmp_path, argv, expected, before):
    if before is not None:
        before(home, tmp_path)
    capsys.readouterr()
    code, out, err = run(home, capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 0, err
    assert shape(json.loads(out)) == expected


@pytest.mark.parametrize(
    ("cls", "keys"),
    [
        # Shapes of commands that need a real engine (a template build, a
        # vault's gpg) to run.
        (TemplateRevision, ["name", "revision", "image_id", "origin"]),
        (TemplateUpdate, ["name", "revision", "image_id", "origin", "updated"]),
        (TemplateReverted, ["name", "revision", "image_id"]),
        (TemplateApproved, ["name", "image_id"]),
        (TemplateRemoved, ["name", "removed"]),
        (PolicyAnswer, ["action", "target", "choices", "user", "rule", "reason"]),
    ],
)
def test_json_shapes_of_single_commands(cls, keys):
    assert [f.name for f in fields(cls)] == keys


def test_a_dataclass_becomes_its_fields_as_it_did_by_hand():
    key = KeyInfo(
        "F" * 40,
        "K" * 16,
        ["A <a@b>"],
        False,
        "22",
        "255",
        "1",
        "",
        "ed25519",
        subkeys=[SubkeyInfo("G" * 16, "cv25519", "e", "2024-01-01", None)],
    )
    assert json_ready([key]) == [key.as_json()]


# -- commands print nothing: main() shows what they return ----------------------------

# What streams as it goes, or asks, or needs a real engine to do its work.
NOT_HERE = {"run", "tui", "setup"}


def enforced(ctx, tmp):
    sealed(ctx, tmp)
    assert main(["aem", "enforce"], ctx) == 0


# What a command needs done first.
BEFORE = {
    "aem enforce": sealed,
    "aem relax": enforced,
    "aem verify --passphrase-file {tmp}/pass": sealed,
    "aem reseal --yes --passphrase-file {tmp}/pass": sealed,
}

QUIET = [
    ["create", "new", "-l", "red", "-t", TEMPLATE],
    ["create", "new", "-l", "red", "-t", TEMPLATE, "--json"],
    ["start", "work"],
    ["pause", "work"],
    ["unpause", "work"],
    ["kill", "work"],
    ["shutdown", "work"],
    ["shutdown", "--all"],
    ["ls"],
    ["ls", "--json"],
    ["ls", "--running"],
    ["prefs", "work"],
    ["prefs", "work", "memory"],
    ["prefs", "work", "memory", "800"],
    ["prefs", "--global"],
    ["prefs", "--global", "default_netvm"],
    ["features", "work"],
    ["features", "work", "gui"],
    ["features", "work", "x", "1"],
    ["features", "work", "-D", "gui"],
    ["tags", "work"],
    ["tags", "work", "list", "alpha"],
    ["tags", "work", "list", "beta"],
    ["tags", "work", "add", "beta"],
    ["tags", "work", "del", "alpha"],
    ["firewall", "work"],
    ["firewall", "work", "add", "action=accept"],
    ["firewall", "work", "del", "1"],
    ["firewall", "work", "reset"],
    ["clone", "work", "copy"],
    ["remove", "work"],
    ["remove", "nosuch"],
    ["template", "list"],
    ["template", "approve", TEMPLATE],
    ["doctor"],
    ["reconcile"],
    ["daemon", "status"],
    ["service", "status"],
    ["policy", "eval", "qubes.Filecopy", "work", "work"],
    ["policy", "lint"],
    ["policy", "ask"],
    ["splitgpg", "setup", "vault"],
    ["device", "list"],
    ["device", "list", "--json"],
    ["aem", "log"],
    ["aem", "seal", "--secret-file", "{tmp}/secret", "--passphrase-file", "{tmp}/pass"],
    ["aem", "verify", "--passphrase-file", "{tmp}/pass"],
    ["aem", "reseal", "--yes", "--passphrase-file", "{tmp}/pass"],
    ["aem", "enforce"],
    ["aem", "relax"],
    ["log", "rpc"],
    ["log", "rpc", "--json"],
]


def parsed(ctx, argv: list[str]) -> argparse.Namespace:
    args = parse(build_parser(argv[0]), argv, argv[0])
    args.ctx = ctx
    return args


@pytest.mark.parametrize("argv", QUIET, ids=" ".join)
def test_a_command_returns_what_it_shows_and_prints_nothing(home, capsys, tmp_path, argv):
    if " ".join(argv) in BEFORE:
        BEFORE[" ".join(argv)](home, tmp_path)
    args = parsed(home, [a.format(tmp=tmp_path) for a in argv])
    capsys.readouterr()
    result = args.func(args)
    assert capsys.readouterr().out == ""
    assert result is None or isinstance(result, Result)
    assert not isinstance(result, Raw)  # only an exported key is written as it is


def test_every_command_is_checked_for_printing():
    full = build_parser()
    names = set(next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert {argv[0] for argv in QUIET} | NOT_HERE == names


@pytest.mark.parametrize(
    ("result", "human", "as_json"),
    [
        (Table(["A", "B"], [["x", None]], data=[{"a": "x"}]), "A  B\nx  -\n", '[\n  {\n    "a": "x"\n  }\n]\n'),
        (Record({"gui": "1"}, data={"gui": "1"}), f"{'gui':<30} 1\n", '{\n  "gui": "1"\n}\n'),
        (Message("", data={"k": None}), "\n", '{\n  "k": null\n}\n'),  # an empty value is still a line
        (Lines([], data=[]), "", "[]\n"),
        (Lines(["tag"]), "tag\n", ""),  # no data: --json prints nothing
        (Raw("-----BEGIN PGP"), "-----BEGIN PGP", "-----BEGIN PGP"),
        (
            Result(data=PolicyAnswer("deny", None, [], None, None, "no")),
            "",
            '{\n  "action": "deny",\n  "target": null,\n  "choices": [],\n  "user": null,\n  "rule": null,\n'
            '  "reason": "no"\n}\n',
        ),
    ],
)
def test_one_renderer_for_both_forms(capsys, monkeypatch, result, human, as_json):
    monkeypatch.setenv("NO_COLOR", "1")
    assert show(result, False) == 0
    assert capsys.readouterr().out == human
    show(result, True)
    assert capsys.readouterr().out == as_json


@pytest.mark.parametrize(("as_json", "err"), [(False, "done\nsee\n"), (True, "done\n")])
def test_a_note_goes_to_stderr_in_either_form_and_a_footnote_only_for_people(capsys, as_json, err):
    assert show(Lines(["out"], data=["out"], note="done", footnote="see", exit_code=3), as_json) == 3
    assert capsys.readouterr().err == err
