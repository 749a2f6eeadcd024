"""F5: grants and approvals belong to a qube, not to its name. A qube
created under a removed qube's name inherits nothing."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.integration

ASK_TIMEOUT = 20


@pytest.fixture(scope="module")
def split(home):
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": str(ASK_TIMEOUT)})
    yield home
    home.run("daemon", "stop")


def gpg_call(home, client: str) -> subprocess.Popen:
    return home.popen(
        "run", client, "--", "qlite-gpg", "--list-keys", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def pending(home) -> list[dict]:
    return home.json("policy", "ask")


def wait_ask(home, timeout: float = 30) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asks = pending(home)
        if asks:
            return asks[0]
        time.sleep(0.2)
    return None


def approve_once(home, client: str) -> None:
    """The user says yes to one qlite-gpg call; the next is auto-accepted."""
    p = gpg_call(home, client)
    ask = wait_ask(home)
    assert ask is not None and ask["source"] == client
    home.run("policy", "ask", str(ask["id"]), "allow", "vault")
    assert p.wait(timeout=120) == 0
    again = gpg_call(home, client)
    assert again.wait(timeout=120) == 0 and pending(home) == []  # auto-accepted: nobody was asked


def last_gpg_decision(home, client: str) -> dict:
    rows = [
        r
        for r in home.json("log", "rpc", "-n", "200")
        if r.get("source") == client and r.get("service") == "qubes.Gpg" and r.get("decision") not in ("asking", "done")
    ]
    return rows[-1]


@pytest.mark.parametrize("recreated", ["vault", "client"])
def test_f5_a_qube_made_under_a_removed_name_inherits_nothing(split, recreated):
    home = split
    home.run("create", "client", "--label", "blue")
    home.run("splitgpg", "setup", "vault", "--client", "client", "--autoaccept", "600")
    try:
        approve_once(home, "client")
        home.run("shutdown", "--wait", "--all")
        home.run("remove", recreated)
        # The attacker's qube takes the name.
        home.run("create", recreated, "--label", "red")
        if recreated == "client":
            home.run("features", "client", "autoaccept.qubes.Gpg", "600")
        # Nothing names it any more: the call is refused at once, and the
        # vault is not even started for it.
        p = gpg_call(home, "client")
        assert p.wait(timeout=120) != 0  # gpg's own failure code: qlite-gpg stands in for gpg
        decision = last_gpg_decision(home, "client")
        assert decision["decision"] == "deny" and "no rule" in decision.get("reason", "")
        state = next(r["state"] for r in home.json("ls") if r["name"] == "vault")
        assert state == "Halted"
        # The admin sets it up again: the user is asked again, not auto-accepted.
        home.run("splitgpg", "setup", "vault", "--client", "client")
        p = gpg_call(home, "client")
        ask = wait_ask(home)
        assert ask is not None and ask["source"] == "client", "auto-accepted on an approval given to another qube"
        home.run("policy", "ask", str(ask["id"]), "deny")
        assert p.wait(timeout=120) != 0
    finally:
        home.run("shutdown", "--wait", "--all", check=False)
        for name in ("client", "vault"):
            home.run("remove", "--force", name, check=False)
