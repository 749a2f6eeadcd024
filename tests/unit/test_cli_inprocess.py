"""The CLI in-process: main(argv, ctx) over the fake engine and a
temporary home, as a script sees it (stdout, stderr, the exit code)."""

from __future__ import annotations

import json

import pytest

from qlite.cli import main

from .conftest import TEMPLATE


def run(ctx, capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv), ctx)
    except SystemExit as exc:  # argument errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_create_then_list_and_prefs_as_json(ctx, capsys):
    code, out, _ = run(ctx, capsys, "create", "work", "-l", "blue", "-t", TEMPLATE, "--json")
    assert code == 0 and json.loads(out)["name"] == "work"
    code, out, _ = run(ctx, capsys, "ls", "--json")
    assert [q["name"] for q in json.loads(out) if q.get("class") == "AppVM"] == ["work"]
    assert run(ctx, capsys, "prefs", "work", "memory", "800")[0] == 0
    code, out, _ = run(ctx, capsys, "prefs", "work", "--json", "memory")
    assert code == 0 and json.loads(out) == {"memory": 800}


def test_tags_features_and_clone(ctx, capsys):
    run(ctx, capsys, "create", "work", "-l", "blue", "-t", TEMPLATE)
    assert run(ctx, capsys, "tags", "work", "add", "alpha")[0] == 0
    assert json.loads(run(ctx, capsys, "tags", "work", "--json")[1]) == ["alpha"]
    assert run(ctx, capsys, "features", "work", "gui", "1")[0] == 0
    code, out, _ = run(ctx, capsys, "clone", "work", "work2", "--json")
    assert code == 0 and json.loads(out)["name"] == "work2"
    assert json.loads(run(ctx, capsys, "features", "work2", "--json")[1]) == {"gui": "1"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["remove", "nosuch", "work"], "no such qube: 'nosuch'"),
        (["device", "attach", "--fs-uuid", "1234", "work", "sdb1"], "unrecognized arguments: --fs-uuid"),
        (["prefs", "work", "memory", "lots"], "memory"),
        (["tags", "work", "add", "bad tag!"], "letters, digits"),
    ],
)
def test_refusals_change_nothing(ctx, capsys, argv, message):
    run(ctx, capsys, "create", "work", "-l", "blue", "-t", TEMPLATE)
    before = run(ctx, capsys, "ls", "--json")[1]
    code, _out, err = run(ctx, capsys, *argv)
    assert code == 125 and err.startswith("qlite: error:") and message in err and err.count("\n") == 1
    assert run(ctx, capsys, "ls", "--json")[1] == before
