"""Network loops are refused on every path that can make one: a qube's own
netvm, a chain of gateways, and the global default_netvm, which every qube
without a netvm of its own follows."""

from __future__ import annotations

import pytest

from qlite.core.qubes import QubeManager
from qlite.errors import InvalidValue

from .conftest import insert_row


@pytest.fixture
def qm(ctx):
    return QubeManager(ctx)


def gateway(qm, name: str, netvm: str | None = None):
    return insert_row(qm, name, provides_network=True, netvm_raw=netvm)


# Each case: gateways to make (name -> explicit netvm or None to follow the
# default), then one change; whether it makes a loop.
CASES = [
    pytest.param({"gw": None}, ("global", "gw"), True, id="gw-follows-the-default-that-is-gw"),
    pytest.param({"gw": "dom0"}, ("global", "gw"), False, id="gw-has-its-own-uplink"),
    pytest.param({"gw": "dom0"}, ("reset", "gw"), False, id="reset-while-default-is-dom0"),
    pytest.param({"gw1": None, "gw2": "gw1"}, ("global", "gw2"), True, id="chain-back-through-the-default"),
    pytest.param({"gw1": "dom0", "gw2": "gw1"}, ("global", "gw2"), False, id="chain-to-the-host"),
    pytest.param({"a": "dom0", "b": "a"}, ("set", "a", "b"), True, id="two-gateways-point-at-each-other"),
    pytest.param({"a": "dom0"}, ("set", "a", "a"), True, id="own-netvm"),
    pytest.param({"a": "dom0", "b": "a", "c": "b"}, ("set", "a", "c"), True, id="three-hop-loop"),
    pytest.param({"a": "dom0", "b": "dom0"}, ("set", "a", "b"), False, id="no-loop"),
]


@pytest.mark.parametrize(("gateways", "change", "loops"), CASES)
def test_loops_are_refused_and_nothing_changes(qm, gateways, change, loops):
    for name, netvm in gateways.items():
        gateway(qm, name, netvm)
    before = (qm.prefs.get("default_netvm"), {q.name: q.netvm_raw for q in qm.list()})
    kind, *args = change

    def apply():
        if kind == "global":
            qm.check_default_netvm(args[0])
            qm.prefs.set("default_netvm", args[0])
        elif kind == "reset":
            qm.reset_pref(args[0], "netvm")
        else:
            qm.set_pref(args[0], "netvm", args[1])

    if loops:
        with pytest.raises(InvalidValue) as exc:
            apply()
        assert "\n" not in str(exc.value)
        assert (qm.prefs.get("default_netvm"), {q.name: q.netvm_raw for q in qm.list()}) == before
    else:
        apply()


def test_reset_to_follow_a_default_that_is_itself_is_refused(qm):
    gateway(qm, "gw", "dom0")
    qm.prefs.set("default_netvm", "gw")
    with pytest.raises(InvalidValue, match="network loop: gw -> gw"):
        qm.reset_pref("gw", "netvm")
    assert qm.get("gw").netvm_raw == "dom0"


def test_a_loop_already_in_the_store_is_reported_at_start_not_recursed_into(ctx, qm):
    """A loop made by an older qlite: start says what to do, in one line."""
    qm.prefs.set("default_template", "debian-12")
    qm.create("gw", label="green", props={"provides_network": "True"})
    qm.prefs.set("default_netvm", "gw")  # as the old, unchecked CLI did
    with pytest.raises(InvalidValue) as exc:
        qm.start("gw")
    message = str(exc.value)
    assert "network loop: gw -> gw" in message and "qlite prefs gw netvm dom0" in message
    assert "following the global default_netvm" in message
    assert qm.net_depth(qm.get("gw")) == 0
    assert ctx.engine.containers == {}


def test_the_cli_refuses_a_global_default_that_loops(tmp_path, monkeypatch, capsys):
    """The command that left every qube unable to start."""
    import qlite.cli
    from qlite.domain.context import Context
    from qlite.paths import Paths

    home = tmp_path / "home"
    monkeypatch.setenv("QLITE_HOME", str(home))
    qm = QubeManager(Context(Paths(home)))
    gateway(qm, "gw")
    qm.store.close()
    assert qlite.cli.main(["prefs", "--global", "default_netvm", "gw"]) == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "network loop: gw -> gw" in err
    assert qlite.cli.main(["prefs", "--global", "default_netvm"]) == 0
    assert capsys.readouterr().out == "dom0\n"
