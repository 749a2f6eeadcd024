"""The safe-path seam: nothing beneath a qube-writable root is reached
through a symlink or outside the root, with openat2 and with the
component-by-component fallback alike."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from qlite import safepath
from qlite.safepath import (
    UnsafePath,
    chmod_beneath,
    components,
    copy_tree,
    lstat_beneath,
    make_dirs,
    open_beneath,
    open_trusted_dir,
    opened,
    remove_beneath,
)


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    if request.param == "walk":
        monkeypatch.setattr(safepath, "_openat2_works", False)
    else:
        assert safepath._have_openat2(), "this kernel has openat2 (5.6+)"
    return request.param


@pytest.fixture
def tree(tmp_path):
    """root/ (qube-writable) beside outside/ (a host canary)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("inside")
    outside.mkdir()
    (outside / "secret").write_text("host")
    os.chmod(outside / "secret", 0o600)
    return root, outside


def plant(root: Path, outside: Path, rel: str, kind: str) -> None:
    """Replace REL under ROOT with KIND."""
    p = root / rel
    if p.is_dir() and not p.is_symlink():
        import shutil

        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink-out":
        p.symlink_to(outside)
    elif kind == "symlink-in":
        p.symlink_to(root / "a")
    elif kind == "relative-up":
        p.symlink_to("../../outside")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "file":
        p.write_text("x")


@pytest.mark.parametrize("rel", ["a", "a/b"])
@pytest.mark.parametrize("kind", ["symlink-out", "symlink-in", "relative-up"])
def test_no_component_may_be_a_symlink(tree, resolver, rel, kind):
    root, outside = tree
    plant(root, outside, rel, kind)
    with opened(open_trusted_dir(root)) as rfd:
        with pytest.raises(OSError) as exc:
            os.close(open_beneath(rfd, "a/b/f"))
    assert exc.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_a_non_directory_in_the_middle_is_refused(tree, resolver, kind):
    root, outside = tree
    plant(root, outside, "a/b", kind)
    with opened(open_trusted_dir(root)) as rfd, pytest.raises(OSError) as exc:
        os.close(open_beneath(rfd, "a/b/f"))
    assert exc.value.errno == errno.ENOTDIR


def test_a_final_symlink_is_refused_and_a_path_one_reports_it(tree, resolver):
    root, outside = tree
    (root / "link").symlink_to(outside / "secret")
    with opened(open_trusted_dir(root)) as rfd:
        with pytest.raises(OSError) as exc:
            os.close(open_beneath(rfd, "link", os.O_RDONLY))
        assert exc.value.errno == errno.ELOOP
        with opened(open_beneath(rfd, "link", os.O_PATH)) as fd:
            assert stat.S_ISLNK(os.fstat(fd).st_mode)


def test_a_regular_open_works(tree, resolver):
    root, _ = tree
    with opened(open_trusted_dir(root)) as rfd, opened(open_beneath(rfd, "a/b/f")) as fd:
        assert os.read(fd, 100) == b"inside"


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("a/b", ["a", "b"]),
        ("a//b/", ["a", "b"]),
        ("./a", ["a"]),
        ("", []),
        ("/etc", None),
        ("a/../b", None),
        ("..", None),
    ],
)
def test_components(rel, ok):
    if ok is None:
        with pytest.raises(UnsafePath):
            components(rel)
    else:
        assert components(rel) == ok


def test_a_trusted_root_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath):
        open_trusted_dir(tmp_path / "link")


def test_make_dirs_sets_only_what_it_created(tree, resolver):
    root, _ = tree
    os.chmod(root / "a", 0o700)
    with opened(open_trusted_dir(root)) as rfd:
        with opened(make_dirs(rfd, "a/new/deeper", modes={1: 0o751, 2: 0o700}, owners={2: (1000, 1000)})) as fd:
            st = os.fstat(fd)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o700)
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o700  # existing: untouched
    assert stat.S_IMODE((root / "a" / "new").stat().st_mode) == 0o751


@pytest.mark.parametrize("kind", ["symlink-out", "relative-up", "fifo", "file"])
def test_make_dirs_refuses_what_is_in_the_way(tree, resolver, kind):
    root, outside = tree
    plant(root, outside, "home", kind)
    with opened(open_trusted_dir(root)) as rfd, pytest.raises(UnsafePath):
        make_dirs(rfd, "home/user")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_chmod_never_follows(tree, resolver):
    root, outside = tree
    (root / "s").symlink_to(outside / "secret")
    with opened(open_trusted_dir(root)) as rfd:
        with pytest.raises(UnsafePath):
            chmod_beneath(rfd, "s", 0o666)
        chmod_beneath(rfd, "a/b/f", 0o640)
    assert stat.S_IMODE((outside / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "a" / "b" / "f").stat().st_mode) == 0o640


def test_remove_never_follows(tree, resolver):
    root, outside = tree
    (root / "a" / "b" / "out").symlink_to(outside)
    with opened(open_trusted_dir(root)) as rfd:
        assert remove_beneath(rfd, "a") is True
        assert remove_beneath(rfd, "a") is False
        (root / "x").symlink_to(outside)
        assert remove_beneath(rfd, "x") is True
    assert (outside / "secret").read_text() == "host"
    assert sorted(p.name for p in root.iterdir()) == []


def test_lstat_beneath(tree, resolver):
    root, outside = tree
    (root / "l").symlink_to(outside)
    with opened(open_trusted_dir(root)) as rfd:
        assert stat.S_ISLNK(lstat_beneath(rfd, "l").st_mode)
        assert lstat_beneath(rfd, "nothing") is None
        assert lstat_beneath(rfd, "nothing/deeper") is None
        assert stat.S_ISREG(lstat_beneath(rfd, "a/b/f").st_mode)


def test_copy_tree_copies_links_as_links_and_skips_specials(tree, resolver):
    root, outside = tree
    src, dst = root, root.parent / "dst"
    dst.mkdir()
    (src / "a" / "out").symlink_to(outside)
    (src / "a" / "secretlink").symlink_to(outside / "secret")
    os.mkfifo(src / "fifo")
    (src / "a" / "b" / "f").chmod(0o604)
    os.chown(src / "a" / "b" / "f", 1000, 1000)
    os.utime(src / "a" / "b" / "f", ns=(1, 1_000_000_000))
    os.setxattr(src / "a" / "b" / "f", "user.k", b"v")
    (src / "a" / "b").chmod(0o500)  # a directory the copy must still fill
    with opened(open_trusted_dir(src)) as s, opened(open_trusted_dir(dst)) as d:
        report = copy_tree(s, d)
    assert (report.files, report.dirs, report.symlinks, report.skipped) == (1, 2, 2, ["fifo"])
    f = dst / "a" / "b" / "f"
    st = f.stat()
    assert f.read_text() == "inside" and stat.S_IMODE(st.st_mode) == 0o604
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1000, 1000, 1_000_000_000)
    assert os.getxattr(f, "user.k") == b"v"
    assert stat.S_IMODE((dst / "a" / "b").stat().st_mode) == 0o500
    assert os.readlink(dst / "a" / "out") == str(outside)
    assert (outside / "secret").read_text() == "host"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (dst / "fifo").exists()


@pytest.mark.parametrize(("max_depth", "fits"), [(4, False), (6, True)])
def test_copy_tree_bounds_the_depth(tmp_path, max_depth, fits):
    src, dst = tmp_path / "s", tmp_path / "d"
    src.joinpath(*["x"] * 6).mkdir(parents=True)
    dst.mkdir()
    with opened(open_trusted_dir(src)) as s, opened(open_trusted_dir(dst)) as d:
        if fits:
            assert copy_tree(s, d, max_depth=max_depth).dirs == 6
        else:
            with pytest.raises(UnsafePath):
                copy_tree(s, d, max_depth=max_depth)
