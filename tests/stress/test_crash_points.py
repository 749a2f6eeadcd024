"""``kill -9`` at random moments during ``create``, ``clone`` and
``remove``. Straight after each kill the SQLite state is consistent; after
``reconcile`` the qube either exists completely (row, settled, private
volume with its data) or not at all, and no engine object belongs to no
qube."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import engine_objects, kill9, mismatches, rows, store_problems

pytestmark = pytest.mark.integration

SEED = 4242
ROUNDS = 12
MARKER = "kept through a clone\n"


@pytest.fixture(scope="module")
def base(home):
    """A halted qube with a file in its private volume, to clone."""
    home.run("create", "base", "--label", "blue", "--netvm", "none")
    home.run("run", "base", "--", "sh", "-c", f"printf '{MARKER.strip()}\\n' > ~/marker")
    home.run("shutdown", "--wait", "base")
    return home


def duration(home, *args: str) -> float:
    started = time.monotonic()
    home.run(*args)
    return time.monotonic() - started


def killed_at(home, delay: float, *args: str) -> int:
    """Run ``qlite ARGS`` and SIGKILL it after DELAY seconds (if it still
    runs); its exit code."""
    proc = home.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        kill9(proc.pid)
    return proc.wait(timeout=60)


def private_volume(home, qube: str) -> Path | None:
    """Where QUBE's private volume is on the host; None if it has none."""
    volumes = engine_objects(home)["volumes"]
    names = [n for n, labels in volumes.items() if labels.get("qlite.qube") == qube]
    if not names:
        return None
    mountpoint = subprocess.run(
        ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", names[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    return Path(mountpoint)


def settle(home) -> dict[str, dict]:
    """Check the state as the kill left it, reconcile, check again."""
    assert store_problems(home) == []
    home.run("reconcile")
    assert store_problems(home) == []
    assert mismatches(home) == []
    return rows(home)


@pytest.mark.parametrize("op", ["create", "clone", "remove"])
def test_kill_9_at_random_points(base, op):
    home = base
    rng = random.Random(f"{SEED}-{op}")
    # How long the operation takes here, so the kills spread over all of it.
    full = {
        "create": lambda: duration(home, "create", "probe-c", "--label", "red", "--netvm", "none"),
        "clone": lambda: duration(home, "clone", "base", "probe-c"),
        "remove": lambda: (
            home.run("create", "probe-c", "--label", "red", "--netvm", "none"),
            duration(home, "remove", "probe-c"),
        )[1],
    }[op]()
    home.run("remove", "probe-c", check=False)
    outcomes: Counter[str] = Counter()
    for i in range(ROUNDS):
        name = f"{op[:2]}-{i}"
        # Python's start-up is the first ~half; kill within the work itself.
        delay = rng.uniform(0.4 * full, 1.05 * full)
        if op == "create":
            code = killed_at(home, delay, "create", name, "--label", "red", "--netvm", "none")
        elif op == "clone":
            code = killed_at(home, delay, "clone", "base", name)
        else:
            home.run("create", name, "--label", "red", "--netvm", "none")
            code = killed_at(home, delay, "remove", name)
        after = settle(home)
        if name in after:
            outcomes["complete" if op != "remove" else "kept"] += 1
            assert after[name]["pending"] is None
            volume = private_volume(home, name)
            assert volume is not None and (volume / "home" / "user").is_dir(), (
                f"{name} exists without an initialised private volume"
            )
            if op == "clone":
                assert (volume / "home" / "user" / "marker").read_text() == MARKER
            # It is a working qube: it can go.
            home.run("remove", name)
        else:
            outcomes["absent"] += 1
        assert code in (0, -9), (name, code)
    print(f"{op}: {ROUNDS} kills over {full:.2f}s: {dict(outcomes)}")
    assert "base" in rows(home)
    assert (private_volume(home, "base") / "home" / "user" / "marker").read_text() == MARKER
