"""The guest tools start lean: every Python entry point runs without site
(-S) and without the PYTHON* environment (-E), finds its package on its own,
and imports only what its common path needs. Every RPC call starts a Python
in both qubes, inside gVisor, where each module costs milliseconds."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.rpc import broker

from .guest_helpers import GUEST, REPO, SYSTEM_PYTHON

LEAN_SHEBANG = "#!/usr/bin/python3 -SE"
ENTRY_DIRS = ("usr/bin", "usr/lib/qlite", "etc/qubes-rpc")


def python_entry_points() -> list[str]:
    out = []
    for d in ENTRY_DIRS:
        for path in sorted((REPO / "guest" / d).iterdir()):
            if (
                path.is_file()
                and not path.is_symlink()
                and path.read_bytes().startswith(b"#!")
                and (b"python" in path.read_bytes().split(b"\n", 1)[0])
            ):
                out.append(f"{d}/{path.name}")
    return out


ENTRY_POINTS = python_entry_points()


def test_the_entry_points_are_found():
    assert {
        "usr/lib/qlite/qrexec-client-vm.py",
        "usr/bin/qlite-gpg",
        "etc/qubes-rpc/qubes.Gpg",
    } <= set(ENTRY_POINTS)


def test_the_dispatcher_is_not_python():
    """It runs on every RPC call; a shell starts in a third of Python's time."""
    assert (REPO / "guest/usr/lib/qlite/qubes-rpc-dispatch").read_text().split("\n", 1)[0] == "#!/bin/sh"


@pytest.mark.parametrize("rel", ENTRY_POINTS)
def test_every_python_entry_point_has_the_lean_shebang(rel):
    # One argument: the kernel hands everything after the interpreter over as
    # a single word, so "-S -E" would not parse.
    assert (REPO / "guest" / rel).read_text().split("\n", 1)[0] == LEAN_SHEBANG


# A harmless run of each: usage, or a refusal of an empty request.
HARMLESS = {"usr/bin": ["--help"], "usr/lib/qlite": ["no.Such"], "etc/qubes-rpc": []}


@pytest.mark.parametrize("rel", ENTRY_POINTS)
def test_every_entry_point_runs_through_its_shebang_without_site_or_pythonpath(rel, tmp_path):
    """Run as the kernel runs it: the shebang's flags apply, site is never
    imported, and a PYTHONPATH pointing elsewhere changes nothing."""
    script = GUEST.root / rel
    script.chmod(0o755)
    trap = tmp_path / "trap"
    trap.mkdir()
    # Honouring PYTHONPATH (no -E) would run these, ahead of the real package.
    (trap / "sitecustomize.py").write_text("raise SystemExit('site ran')\n")
    (trap / "qlite_guest").mkdir()
    (trap / "qlite_guest/__init__.py").write_text("raise SystemExit('PYTHONPATH was used')\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(trap),
        "QLITE_RPC_DIRS": str(tmp_path / "none"),
        "QLITE_RPC_SOCKET": str(tmp_path / "no.sock"),
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [str(script), *HARMLESS[rel.rsplit("/", 1)[0]]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    assert b"site ran" not in proc.stderr and b"PYTHONPATH was used" not in proc.stderr
    assert proc.stdout or proc.stderr  # it said something of its own


# What each hot path must not import (module -> names). JSON goes through
# json's C half (qlite_guest.frames): the json package brings re.
HEAVY = {"dataclasses", "inspect", "typing", "subprocess", "tempfile", "shutil", "argparse", "site"}
NOT_IMPORTED = {
    "qlite_guest.client": HEAVY | {"contextlib", "json", "re"},
    "qlite_guest.splitgpg": HEAVY | {"json", "re"},
}


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_the_hot_paths_import_nothing_heavy(module):
    code = (
        "import sys\n"
        f"sys.path.append({str(GUEST.pythonpath)!r})\n"
        f"import {module}\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-SE", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    loaded = set(done.stdout.split())
    assert module in loaded
    assert not loaded & NOT_IMPORTED[module]


def test_the_qlite_gpg_sign_path_imports_nothing_heavy(tmp_path):
    """The client as far as the broker: options parsed, header built."""
    code = (
        "import sys\n"
        f"sys.path.append({str(GUEST.pythonpath)!r})\n"
        "from qlite_guest import gpgopts, splitgpg\n"
        "request = gpgopts.parse(['--status-fd=2', '-bsau', 'alice'])\n"
        "splitgpg.request_prefix(request, [])\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-SE", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert not set(done.stdout.split()) & (HEAVY | {"json", "re"})


# The name rules without re: the same as the broker's patterns.
NAME_CHARS = st.text(alphabet=st.sampled_from("Az09._+-/ é\0\n$@"), max_size=300)


@given(NAME_CHARS)
def test_the_guest_name_rules_match_the_brokers_patterns(text):
    names = GUEST.module("names")
    assert (names.service_problem(text) is None) == (
        bool(broker.SERVICE_RE.fullmatch(text)) and text not in (".", "..")
    )
    assert (names.argument_problem(text) is None) == bool(broker.ARGUMENT_RE.fullmatch(text))
    assert (names.qube_problem(text) is None) == bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", text))


@pytest.mark.parametrize("text", ["a" * 64, "a" * 65, "", "x" * 31, "x" * 32, "A" * 256 + "+", "+" * 256])
def test_the_guest_name_rules_at_their_limits(text):
    names = GUEST.module("names")
    assert (names.service_problem(text) is None) == bool(broker.SERVICE_RE.fullmatch(text))
    assert (names.argument_problem(text) is None) == bool(broker.ARGUMENT_RE.fullmatch(text))
    assert (names.qube_problem(text) is None) == bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", text))


@given(st.text(alphabet=st.sampled_from("Azfile0123456789._+:-/ é\0"), max_size=80))
def test_the_gpg_name_rules_without_re_match_the_patterns(text):
    gpgopts, splitgpg = GUEST.module("gpgopts"), GUEST.module("splitgpg")
    assert gpgopts.is_name(text) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,63}", text))
    assert splitgpg.is_file_name(text) == bool(re.fullmatch(r"file[1-9][0-9]?", text))


@pytest.mark.parametrize("name", ["file1", "file9", "file10", "file99", "file0", "file100", "file", "file٣", "xfile1"])
def test_gpg_file_names_table(name):
    assert GUEST.module("splitgpg").is_file_name(name) == bool(re.fullmatch(r"file[1-9][0-9]?", name, re.ASCII))
