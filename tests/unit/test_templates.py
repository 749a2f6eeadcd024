"""Template revision tags and definition fingerprints (pure), plus the
revision bookkeeping over the fake engine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.core.templates import TemplateManager, fingerprint, image_ref, meaningful_changes, tag_revision
from qlite.errors import NotFound, StateError

from .conftest import IMAGE_ID, TEMPLATE


@pytest.mark.parametrize(
    ("tag", "template", "expected"),
    [
        ("localhost/qlite/debian-12:1", "debian-12", 1),
        ("localhost/qlite/debian-12:42", "debian-12", 42),
        ("localhost/qlite/debian-12:007", "debian-12", 7),
        ("localhost/qlite/debian-12:latest", "debian-12", None),
        ("localhost/qlite/debian-12:", "debian-12", None),
        ("localhost/qlite/debian-12:1a", "debian-12", None),
        ("localhost/qlite/debian-12:-1", "debian-12", None),
        ("localhost/qlite/debian-12:+1", "debian-12", None),
        ("localhost/qlite/debian-12:1 ", "debian-12", None),
        ("localhost/qlite/debian-12:1", "debian", None),
        ("localhost/qlite/debian:1", "debian-12", None),
        ("localhost/qlite-cache/debian-12:1", "debian-12", None),
        ("docker.io/qlite/debian-12:1", "debian-12", None),
        ("localhost/qlite/fedora-40:3", "fedora-40", 3),
    ],
)
def test_tag_revision(tag, template, expected):
    assert tag_revision(tag, template) == expected


@settings(max_examples=200)
@given(template=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), rev=st.integers(1, 10**6))
def test_tag_revision_inverts_image_ref(template, rev):
    assert tag_revision(image_ref(template, rev), template) == rev


@settings(max_examples=200)
@given(tag=st.text(max_size=40), template=st.text(max_size=10))
def test_tag_revision_never_crashes(tag, template):
    result = tag_revision(tag, template)
    assert result is None or (isinstance(result, int) and result >= 0)


FILES = [("images/debian-12/Containerfile", b"FROM x\n"), ("guest/a", b"a"), ("Containerfile", b"FROM $BASE")]


def test_fingerprint_is_a_sha256_hex():
    fp = fingerprint(FILES)
    assert len(fp) == 64 and int(fp, 16) >= 0


def test_fingerprint_is_order_independent():
    assert fingerprint(FILES) == fingerprint(list(reversed(FILES)))
    assert fingerprint(FILES) == fingerprint([FILES[1], FILES[0], FILES[2]])


@pytest.mark.parametrize(
    "change",
    [
        lambda f: [(f[0][0], f[0][1] + b" "), *f[1:]],  # content
        lambda f: [(f[0][0] + "x", f[0][1]), *f[1:]],  # name
        lambda f: f[:-1],  # a file removed
        lambda f: [*f, ("guest/b", b"")],  # an empty file added
        lambda f: [(f[0][0], f[1][1]), (f[1][0], f[0][1]), f[2]],  # contents swapped between files
    ],
)
def test_fingerprint_is_content_sensitive(change):
    assert fingerprint(change(FILES)) != fingerprint(FILES)


def test_fingerprint_of_nothing_is_stable():
    assert fingerprint([]) == fingerprint([])


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=6, unique_by=lambda t: t[0]), st.randoms()
)
def test_fingerprint_order_independence_fuzz(files, rnd):
    shuffled = list(files)
    rnd.shuffle(shuffled)
    assert fingerprint(shuffled) == fingerprint(files)


# -- revision bookkeeping over the fake engine ----------------------------------------


def test_recorded_revision_is_current(ctx):
    tm = TemplateManager(ctx)
    t = tm.get(TEMPLATE)
    assert t.current_rev == 1
    assert tm.current_image(TEMPLATE) == IMAGE_ID
    assert [r.rev for r in t.revisions] == [1]


def test_unknown_template(ctx):
    with pytest.raises(NotFound):
        TemplateManager(ctx).current_image("fedora-40")


def test_revert_goes_back_one_revision(ctx, engine):
    tm = TemplateManager(ctx)
    engine.add_image("cd" * 32, (image_ref(TEMPLATE, 2),))
    tm._record(TEMPLATE, 2, "cd" * 32, "update")
    assert tm.current_image(TEMPLATE) == "cd" * 32
    target = tm.revert(TEMPLATE)
    assert target.rev == 1
    assert tm.current_image(TEMPLATE) == IMAGE_ID
    assert [r.rev for r in tm.get(TEMPLATE).revisions] == [1]
    assert "cd" * 32 not in engine.images  # the discarded revision's image is gone
    with pytest.raises(StateError):
        tm.revert(TEMPLATE)


# -- "nothing to upgrade" -------------------------------------------------------------------

# What podman diff showed after apt-get update && apt-get upgrade upgraded
# nothing in the debian-12 template (its update removes the lists again).
NOTHING_UPGRADED = [
    ("C", "/etc"),
    ("C", "/var/cache/apt"),
    ("C", "/var/cache/apt/archives/lock"),
    ("C", "/var/lib/apt/lists"),
    ("C", "/var/lib/dpkg/lock"),
    ("C", "/var/lib/dpkg/lock-frontend"),
]


@pytest.mark.parametrize(
    ("changes", "meaningful"),
    [
        (NOTHING_UPGRADED, []),
        ([], []),
        # the default update keeps the package lists it fetched: still nothing
        ([("A", "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"), ("C", "/var/lib/apt")], []),
        ([("C", "/var/log"), ("A", "/var/log/apt/history.log"), ("A", "/tmp/x"), ("A", "/run/lock/y")], []),
        # an upgrade: dpkg's database and the upgraded files
        (
            NOTHING_UPGRADED
            + [("C", "/var/lib/dpkg"), ("C", "/var/lib/dpkg/status"), ("C", "/usr/bin"), ("C", "/usr/bin/gpg")],
            ["/var/lib/dpkg/status", "/usr/bin/gpg"],
        ),
        # a template's own update command that writes a file
        ([("C", "/etc"), ("A", "/etc/qtest-updated")], ["/etc/qtest-updated"]),
        ([("D", "/etc/motd")], ["/etc/motd"]),
        ([("C", "/etc/passwd")], ["/etc/passwd"]),
        # a directory that changed by itself (not through a listed entry) counts
        ([("C", "/opt/app/")], ["/opt/app"]),
        # a path merely starting like a noise directory is not noise
        ([("A", "/var/logbook")], ["/var/logbook"]),
    ],
)
def test_meaningful_changes(changes, meaningful):
    assert meaningful_changes(changes) == meaningful


def test_an_update_with_nothing_to_upgrade_makes_no_revision(ctx, engine):
    tm = TemplateManager(ctx)
    engine.add_image(IMAGE_ID, (image_ref(TEMPLATE, 1),), {"qlite.origin": "build"})
    engine.update_changes = list(NOTHING_UPGRADED)
    said: list[str] = []
    rev = tm.update(TEMPLATE, said.append)
    assert rev.rev == 1 and rev.image_id == IMAGE_ID
    assert [r.rev for r in tm.get(TEMPLATE).revisions] == [1]
    assert said[-1] == f"template {TEMPLATE} is up to date (revision 1)"
    assert not [c for c in engine.calls if c[0] in ("commit", "tag_image")]
    # Something to upgrade: a new revision, as before.
    engine.update_changes = NOTHING_UPGRADED + [("C", "/var/lib/dpkg/status")]
    rev = tm.update(TEMPLATE, said.append)
    assert rev.rev == 2 and tm.get(TEMPLATE).current_rev == 2
    assert said[-1].startswith(f"{TEMPLATE} is now at revision 2")
