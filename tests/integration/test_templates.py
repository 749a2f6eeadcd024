"""Templates on the real image store: build with progress, revisions seen at
the next start, update, revert, remove, and adoption across homes.

The test template is defined in a scratch share directory (QLITE_SHARE)
on top of the debian-12 image, and its update command is local-only, so
the test sends no traffic off this machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, make_home

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def share(home):
    base_image = home.json("template", "list")[0]["image_id"]
    name = f"qt-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="qlite-share-", dir="/var/tmp"))
    for item in ("runsc-config", "guest", "guest-src", "Containerfile", "policies"):
        os.symlink(REPO / item, root / item)
    (root / "images").mkdir()
    os.symlink(REPO / "images" / "debian-12", root / "images" / "debian-12")
    tdir = root / "images" / name
    tdir.mkdir()
    (tdir / "Containerfile").write_text(
        f'FROM {base_image}\nRUN echo built > /etc/qtest-marker\nLABEL qlite.update="date +%s%N > /etc/qtest-updated"\n'
    )
    yield name, root
    shutil.rmtree(root, ignore_errors=True)
    images = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    ).stdout.split()
    for ref in images:
        if ref.startswith(f"localhost/qlite/{name}:") or ref.startswith(f"localhost/qlite-cache/stage-{name}:"):
            subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)


def test_template_lifecycle(home, share):
    name, root = share
    env = {"QLITE_SHARE": str(root)}

    built = home.run("template", "build", name, env=env)
    assert "STEP" in built.stderr  # progress is shown
    listing = {t["name"]: t for t in home.json("template", "list")}
    assert listing[name]["current_revision"] is not None
    rev1 = listing[name]["current_revision"]
    again = home.run("template", "build", name, env=env)
    assert "up to date" in again.stderr

    home.run("create", "tq", "--label", "orange", "--template", name)
    home.run("run", "tq", "--", "sh", "-c", "echo mine > ~/mine")
    assert home.run("run", "tq", "--", "cat", "/etc/qtest-marker").stdout == "built\n"
    assert home.run("run", "tq", "--", "test", "-e", "/etc/qtest-updated", check=False).returncode == 1

    updated = home.run("template", "update", name, "--json", env=env)
    assert json.loads(updated.stdout)["updated"] is True  # its update writes a file: a new revision
    rev2 = home.json("template", "list")
    rev2 = next(t for t in rev2 if t["name"] == name)
    assert rev2["current_revision"] > rev1 and rev2["revisions"] == [rev1, rev2["current_revision"]]

    # A running qube keeps its revision until its next start.
    assert home.run("run", "tq", "--", "test", "-e", "/etc/qtest-updated", check=False).returncode == 1
    home.run("shutdown", "tq")
    home.run("start", "tq")
    assert home.run("run", "tq", "--", "test", "-e", "/etc/qtest-updated", check=False).returncode == 0
    assert home.run("run", "tq", "--", "cat", "/home/user/mine").stdout == "mine\n"

    home.run("template", "revert", name)
    cur = next(t for t in home.json("template", "list") if t["name"] == name)
    assert cur["current_revision"] == rev1 and cur["revisions"] == [rev1]
    home.run("shutdown", "tq")
    assert home.run("run", "tq", "--", "test", "-e", "/etc/qtest-updated", check=False).returncode == 1
    assert home.run("run", "tq", "--", "cat", "/home/user/mine").stdout == "mine\n"
    gone = subprocess.run(["podman", "image", "exists", f"localhost/qlite/{name}:{rev2['current_revision']}"])
    assert gone.returncode == 1  # the reverted revision's image was removed

    busy = home.run("template", "remove", name, check=False)
    assert busy.returncode == 125 and "still used by: tq" in busy.stderr
    home.run("remove", "--force", "tq")
    home.run("template", "remove", name)
    assert name not in {t["name"] for t in home.json("template", "list")}
    assert subprocess.run(["podman", "image", "exists", f"localhost/qlite/{name}:{rev1}"]).returncode == 1
    # Revision 2's image was still in use when it was reverted; it is
    # collected once nothing uses it, so no image of the template is left.
    assert template_images(name) == []


def template_images(name: str) -> list[str]:
    proc = subprocess.run(
        ["podman", "images", "-a", "-q", "--filter", f"label=qlite.template={name}"], capture_output=True, text=True
    )
    return proc.stdout.split()


def test_another_home_adopts_instead_of_rebuilding(home, share):
    """The image store is shared: a second home adopts the image, and the
    image stays as long as any home holds it."""
    name, root = share
    env = {"QLITE_SHARE": str(root)}
    home.run("template", "build", name, env=env)
    rev = next(t for t in home.json("template", "list") if t["name"] == name)

    def exists() -> bool:
        return subprocess.run(["podman", "image", "exists", rev["image"]]).returncode == 0

    other = make_home("adopt")
    try:
        out = other.run("template", "build", name, env=env)
        assert "using the existing image" in out.stderr and "STEP" not in out.stderr
        theirs = next(t for t in other.json("template", "list") if t["name"] == name)
        assert theirs["image_id"] == rev["image_id"] and theirs["origin"] == "adopted"

        home.run("template", "remove", name)  # the home that built it lets go first
        assert exists()
        home.run("template", "build", name, env=env)  # and adopts it back
        assert next(t for t in home.json("template", "list") if t["name"] == name)["origin"] == "adopted"
        other.run("template", "remove", name)
        assert exists()
    finally:
        other.teardown()
    home.run("template", "remove", name)
    assert not exists()
    assert template_images(name) == []


def test_an_update_with_nothing_to_upgrade_makes_no_revision(home, share):
    """apt upgrades nothing (its package lists are empty: nothing leaves
    this machine), so no new revision is made. (An update that changes the
    template makes one: test_template_lifecycle.)"""
    _, root = share
    name = f"qt-noop-{secrets.token_hex(3)}"
    base_image = next(t for t in home.json("template", "list") if t["name"] == "debian-12")["image_id"]
    tdir = root / "images" / name
    tdir.mkdir()
    (tdir / "Containerfile").write_text(
        f"FROM {base_image}\n"
        'LABEL qlite.update="export DEBIAN_FRONTEND=noninteractive; apt-get -y upgrade && apt-get clean"\n'
    )
    env = {"QLITE_SHARE": str(root)}
    try:
        home.run("template", "build", name, env=env)
        rev = next(t for t in home.json("template", "list") if t["name"] == name)
        for _ in range(2):
            proc = home.run("template", "update", name, "--json", env=env)
            assert f"template {name} is up to date (revision {rev['current_revision']})" in proc.stderr
            assert "0 upgraded" in proc.stderr  # apt really ran
            result = json.loads(proc.stdout)
            assert (result["revision"], result["updated"]) == (rev["current_revision"], False)
            now = next(t for t in home.json("template", "list") if t["name"] == name)
            assert (now["current_revision"], now["revisions"], now["image_id"]) == (
                rev["current_revision"],
                rev["revisions"],
                rev["image_id"],
            )
        assert not home.leftovers()["containers"]  # the update's container went
    finally:
        home.run("template", "remove", name, check=False)
    assert template_images(name) == []
