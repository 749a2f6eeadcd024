"""What the stress and fault suite shares: checks of the state a crash may
have broken, and finding (by label) the processes of a home's containers.

Every module here runs in its own home (the root conftest's ``home``
fixture), with fixed random seeds so that a failure can be replayed, and
every wait is bounded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import psutil
import pytest

pytestmark = pytest.mark.integration


def store_problems(home) -> list[str]:
    """What is wrong with the home's SQLite state, read directly (so even a
    store that qlite could not open would be reported)."""
    conn = sqlite3.connect(f"file:{home.path / 'qlite.db'}?mode=ro", uri=True, timeout=30)
    try:
        problems = []
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity}")
        fks = conn.execute("PRAGMA foreign_key_check").fetchall()
        if fks:
            problems.append(f"foreign_key_check: {fks}")
        names = {r[0] for r in conn.execute("SELECT name FROM qubes")}
        stray = {r[0] for r in conn.execute("SELECT qube FROM features")} - names - {"dom0"}
        if stray:
            problems.append(f"features of no qube: {sorted(stray)}")
        for table in ("tags", "firewall", "device_assignments"):
            orphans = {r[0] for r in conn.execute(f"SELECT qube FROM {table}")} - names
            if orphans:
                problems.append(f"{table} of no qube: {sorted(orphans)}")
        return problems
    finally:
        conn.close()


def rows(home) -> dict[str, dict]:
    """The home's qube rows (name -> row), read directly."""
    conn = sqlite3.connect(f"file:{home.path / 'qlite.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return {r["name"]: dict(r) for r in conn.execute("SELECT * FROM qubes")}
    finally:
        conn.close()


def engine_objects(home) -> dict[str, dict[str, dict]]:
    """The home's containers, volumes and networks: name -> labels."""
    out: dict[str, dict[str, dict]] = {}
    for kind, args, name_of, labels_of in (
        ("containers", ["ps", "-a"], lambda o: o["Names"][0], lambda o: o.get("Labels")),
        ("volumes", ["volume", "ls"], lambda o: o["Name"], lambda o: o.get("Labels")),
        ("networks", ["network", "ls"], lambda o: o["name"], lambda o: o.get("labels")),
    ):
        proc = subprocess.run(
            ["podman", *args, "--format", "json", "--filter", f"label=qlite.home={home.hash}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        out[kind] = {name_of(o): labels_of(o) or {} for o in json.loads(proc.stdout or "[]")}
    return out


def mismatches(home) -> list[str]:
    """Differences between the rows and the engine after a reconcile: a
    qube without its private volume, or an engine object of no qube."""
    qubes = rows(home)
    objects = engine_objects(home)
    problems = []
    have_volume = {labels.get("qlite.qube") for labels in objects["volumes"].values()}
    for name, row in qubes.items():
        if row["pending"] is not None:
            problems.append(f"{name} is still pending ({row['pending']})")
        if row["class"] != "TemplateVM" and name not in have_volume:
            problems.append(f"{name} has no private volume")
    for kind, found in objects.items():
        for obj, labels in found.items():
            if labels.get("qlite.qube") not in qubes:
                problems.append(f"{kind[:-1]} {obj} belongs to no qube")
    return problems


def nft_chains(home) -> set[str]:
    """The firewall chains in the home's nft table."""
    proc = subprocess.run(
        ["nft", "-j", "list", "table", "inet", f"qlite-{home.hash}"], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        return set()
    return {item["chain"]["name"] for item in json.loads(proc.stdout)["nftables"] if "chain" in item}


def runsc_processes(container_id: str) -> list[psutil.Process]:
    """The runsc sandbox and gofer of the container with this full ID."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("runsc") and any(container_id in arg for arg in cmdline):
            out.append(proc)
    return out


def home_conmons(home) -> list[int]:
    """conmon processes of the home's containers (their command line names
    the home's runsc wrapper)."""
    marker = str(home.path)
    out = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if proc.info["name"] == "conmon" and marker in " ".join(proc.info["cmdline"] or ()):
            out.append(proc.info["pid"])
    return out


def wait_for(predicate, timeout: float, interval: float = 0.5):
    """PREDICATE's first truthy value within TIMEOUT seconds, else its last."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def kill9(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def caller_and_target(home, policy: str):
    """A fresh daemon, and two running offline qubes ``caller`` and
    ``target`` under the admin POLICY; the daemon is stopped afterwards."""
    home.run("daemon", "stop")
    home.run("daemon", "start")
    home.run("create", "caller", "--label", "blue", "--netvm", "none")
    home.run("create", "target", "--label", "green", "--netvm", "none")
    home.run("start", "caller", "target")
    (home.path / "policy.d").mkdir(exist_ok=True)
    (home.path / "policy.d" / "30-stress.policy").write_text(policy)
    yield home
    home.run("daemon", "stop", check=False)
