"""Bad input and an unreachable engine: one clear line on stderr, exit 125,
and nothing changed."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def snapshot(home):
    return home.json("ls"), home.leftovers()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["create", "1bad", "--label", "red"], "invalid qube name"),
        (["create", "disp12", "--label", "red"], "reserved"),
        (["create", "dom0", "--label", "red"], "reserved"),
        (["create", "x-dm", "--label", "red"], "reserved"),
        (["create", "a" * 32, "--label", "red"], "invalid qube name"),
        (["create", "ok", "--label", "pink"], "unknown label"),
        (["create", "ok", "--label", "red", "--template", "nosuch"], "no such template"),
        (["create", "default-dvm", "--label", "red"], "already exists"),
        (["create", "debian-12", "--label", "red"], "already exists"),
        (["create", "ok", "--label", "red", "--memory", "lots"], "memory"),
        (["create", "ok", "--label", "red", "--prop", "nosuch=1"], "no such property"),
        (["create", "ok", "--label", "red", "--netvm", "nosuch"], "no such qube"),
        (["start", "nosuch"], "no such qube"),
        (["run", "nosuch", "--", "true"], "no such qube"),
        (["run", "--disposable", "--dvm", "nosuch", "--", "true"], "no such disposable template"),
        (["run", "--disposable"], "no command"),
        (["prefs", "default-dvm", "vcpus", "0"], "out of range"),
        (["template", "build", "nosuch"], "no template definition"),
        (["template", "revert", "debian-12"], "no earlier revision"),
        (["template", "remove", "debian-12"], "still used"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_125_and_changes_nothing(home, args, fragment):
    before = snapshot(home)
    proc = home.run(*args, check=False)
    assert proc.returncode == 125, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("qlite: error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert fragment in proc.stderr
    assert snapshot(home) == before


def test_unreachable_engine_is_one_line_125(home):
    before = home.json("ls")
    env = {"PATH": "/nonexistent", "QLITE_ENGINE": "docker", "QLITE_DOCKER_HOST": "unix:///nonexistent.sock"}
    proc = home.run("create", "ok", "--label", "red", check=False, env=env)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("qlite: error: ")
    assert home.json("ls") == before


def test_missing_podman_is_one_line_125(fresh_home):
    env = {"PATH": "/nonexistent"}
    proc = fresh_home.run("ls", check=False, env=env)
    assert proc.returncode == 125
    assert proc.stderr.count("\n") == 1 and "podman" in proc.stderr
    assert os.path.exists(fresh_home.path)
