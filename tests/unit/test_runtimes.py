"""One qube, one runtime: both runtimes answer every call of QubeRuntime,
the runtime is chosen once from the mode, and no other module asks which
mode a qube is in to run it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from qlite.core.qubes import QubeManager
from qlite.core.runtimes import ContainerRuntime
from qlite.domain.ports import QubeRuntime
from qlite.vm.runner import VmRunner

from .conftest import insert_row

QLITE = Path(__file__).resolve().parents[2] / "qlite"
CALLS = [name for name, _ in inspect.getmembers(QubeRuntime, inspect.isfunction) if not name.startswith("_")]
CAPABILITIES = ["title", "gateways", "preloadable", "resources_fixed_because"]


@pytest.mark.parametrize("runtime", [ContainerRuntime, VmRunner])
def test_each_runtime_answers_every_call(runtime):
    for name in CALLS:
        ours = inspect.signature(getattr(QubeRuntime, name))
        theirs = inspect.signature(getattr(runtime, name))
        assert len(theirs.parameters) == len(ours.parameters), name
    for name in CAPABILITIES:
        assert hasattr(runtime, name), name
    assert set(CALLS) >= {"state", "start", "shutdown", "kill", "pause", "resume", "exec", "run", "run_disposable"}


@pytest.mark.parametrize(("mode", "runtime"), [("container", ContainerRuntime), ("vm", VmRunner)])
def test_the_runtime_follows_the_mode(ctx, mode, runtime):
    qm = QubeManager(ctx)
    q = insert_row(qm, "work", mode=mode)
    assert isinstance(qm.runtime(q), runtime)
    assert qm.runtime(q) is qm.runtime_of_mode(mode)


ASKS_MODE = re.compile(r"""\bmode\s*[!=]=\s*["'](?:vm|container)["']""")


def test_no_module_but_the_runtime_choice_asks_a_qubes_mode():
    asking = {}
    for path in sorted(QLITE.rglob("*.py")):
        rel = path.relative_to(QLITE.parent).as_posix()
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if ASKS_MODE.search(line)]
        if lines:
            asking[rel] = lines
    chooser = asking.pop("qlite/core/qubes.py", [])
    assert len(chooser) == 1  # runtime_of_mode
    assert asking == {}
