"""Shared fixtures.

Integration tests drive the real ``qlite`` CLI against the real podman
service and runsc, each test module in its own QLITE_HOME. The template
image is shared through the host's image store, so a home adopts the
``debian-12`` that setup.sh built instead of rebuilding it. Every home's
podman service is stopped and every engine object it labelled is removed
(and checked to be gone) at teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QLITE = [sys.executable, "-m", "qlite"]

# A suite started as a background job inherits SIGINT ignored, and so would
# every qlite it starts: the tests of Ctrl-C need it as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def home_hash(home: Path) -> str:
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]


def podman_objects(*labels: str) -> dict[str, list[str]]:
    """Names of containers, volumes and networks carrying all LABELS
    ("key=value", or "key" for any value), read with the host's podman CLI."""
    wanted = [label.partition("=") for label in labels]

    def match(obj_labels: dict | None) -> bool:
        obj_labels = obj_labels or {}
        return all(k in obj_labels and (not sep or obj_labels[k] == v) for k, sep, v in wanted)

    out = {}
    for kind, args, name_of, labels_of in (
        ("containers", ["ps", "-a"], lambda o: o["Names"][0], lambda o: o.get("Labels")),
        ("volumes", ["volume", "ls"], lambda o: o["Name"], lambda o: o.get("Labels")),
        ("networks", ["network", "ls"], lambda o: o["name"], lambda o: o.get("labels")),
    ):
        proc = subprocess.run(["podman", *args, "--format", "json"], capture_output=True, text=True, timeout=60)
        objs = json.loads(proc.stdout or "[]")
        out[kind] = sorted(name_of(o) for o in objs if match(labels_of(o)))
    return out


@dataclass
class Home:
    """A hermetic qlite home and a runner for the real CLI in it."""

    path: Path

    @property
    def hash(self) -> str:
        return home_hash(self.path)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["QLITE_HOME"] = str(self.path)
        env.pop("QLITE_ENGINE", None)
        return env

    def run(
        self,
        *args: str,
        input: bytes | str | None = None,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        proc = subprocess.run(
            [*QLITE, *args],
            input=input,
            capture_output=True,
            text=text,
            env={**self.env, **(env or {})},
            timeout=timeout,
            cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"qlite {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*QLITE, *args], env=self.env, cwd=REPO, **kwargs)

    def leftovers(self) -> dict[str, list[str]]:
        return podman_objects(f"qlite.home={self.hash}")

    def image_tags(self) -> list[str]:
        """The tags by which this home holds template images."""
        proc = subprocess.run(
            ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, timeout=60
        )
        return [t for t in proc.stdout.split() if t.startswith(f"localhost/qlite-home-{self.hash}/")]

    def disposable_leftovers(self) -> dict[str, list[str]]:
        """Engine objects of this home's disposables (they carry an owner)."""
        return podman_objects(f"qlite.home={self.hash}", "qlite.owner")

    def teardown(self) -> dict[str, list[str]]:
        """Remove everything this home made; return what was still left."""
        self.run("reconcile", check=False)
        try:
            rows = json.loads(self.run("ls", "--json", check=False).stdout or "[]")
        except ValueError:
            rows = []
        for pref in ("default_dispvm", "default_netvm", "default_template"):
            self.run("prefs", "--global", "-D", pref, check=False)
        for row in rows:
            if row["class"] != "TemplateVM":
                self.run("remove", "--force", row["name"], check=False)
        # Templates last: removing one releases this home's tag on the shared image.
        for row in rows:
            if row["class"] == "TemplateVM":
                self.run("template", "remove", row["name"], check=False)
        left = self.leftovers()
        left["image tags"] = self.image_tags()
        # The daemon first: its rescans would start the podman service again.
        self.run("daemon", "stop", check=False)
        self.run("service", "stop", check=False)
        # Whatever a failed test left behind is still removed, by label, with
        # the host's podman: setup's drop-in taught it qlite's runtimes.
        env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
        for tag in left["image tags"]:
            subprocess.run(["podman", "untag", tag, tag], capture_output=True, timeout=60)
        for kind, names in left.items():
            if kind == "image tags":
                continue
            for name in names:
                cmd = {
                    "containers": ["rm", "-f"],
                    "volumes": ["volume", "rm", "-f"],
                    "networks": ["network", "rm", "-f"],
                }[kind]
                subprocess.run(["podman", *cmd, name], capture_output=True, timeout=60, env=env)
        shutil.rmtree(self.path, ignore_errors=True)
        return left


def make_home(prefix: str) -> Home:
    base = Path(os.environ.get("QLITE_TEST_TMP", "/var/tmp"))
    return Home(Path(tempfile.mkdtemp(prefix=f"qlite-test-{prefix}-", dir=base)))


@pytest.fixture(scope="module")
def home(request) -> Home:
    """A set-up home (debian-12 adopted, default-dvm created) for one module."""
    h = make_home(request.module.__name__.rsplit(".", 1)[-1])
    try:
        h.run("setup", "--quiet", timeout=1800)
        yield h
    finally:
        left = h.teardown()
    assert not any(left.values()), f"engine objects left behind by {request.module.__name__}: {left}"


@pytest.fixture
def fresh_home(request) -> Home:
    """An empty home (no setup) for one test."""
    h = make_home("fresh")
    try:
        yield h
    finally:
        h.teardown()
