"""qlite-open-in-dvm against a fake broker that runs the real qubes.OpenInVM
(through the dispatcher) with a temporary HOME whose open-program edits or
inspects the file."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from qlite.rpc import wire

from .guest_helpers import GUEST, FakeBroker, dispatching_broker, short_tmpdir

openinvm = GUEST.module("openinvm")


@pytest.fixture
def dvm(tmp_path):
    """(start(open_program_body) -> broker, the disposable's HOME)."""
    sockdir = short_tmpdir()
    home = tmp_path / "dvm-home"
    (home / ".config/qlite").mkdir(parents=True)
    made = []

    def start(body: str):
        program = tmp_path / "open-program.sh"
        program.write_text("#!/bin/sh\n" + body)
        program.chmod(0o755)
        (home / ".config/qlite/open-program").write_text(f"# how this qube opens files\n{program}\n")
        broker = dispatching_broker(sockdir / "rpc.sock", home, target="disp1234")
        made.append(broker)
        return broker

    yield start, home
    for b in made:
        b.close()
        assert not b.errors, b.errors
    shutil.rmtree(sockdir, ignore_errors=True)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_edited_file_is_written_back_atomically_keeping_its_mode(tmp_path, dvm):
    start, _ = dvm
    broker = start(
        'test "$(basename "$1")" = "my report.txt" || exit 9\nprintf "edited:" > "$1.new"\n'
        'cat "$1" >> "$1.new"\nmv "$1.new" "$1"\n'
    )
    doc = tmp_path / "docs/my report.txt"
    doc.parent.mkdir()
    doc.write_bytes(b"original")
    doc.chmod(0o640)
    inode = doc.stat().st_ino
    proc = GUEST.run_tool("qlite-open-in-dvm", str(doc), socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert doc.read_bytes() == b"edited:original"
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640
    assert doc.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert leftovers(doc.parent) == ["my report.txt"]
    assert broker.requests == [{"version": 1, "target": "@dispvm", "service": "qubes.OpenInVM", "argument": ""}]
    assert b"disp1234" in proc.stderr


def test_write_back_goes_through_a_symlink_to_its_target(tmp_path, dvm):
    start, _ = dvm
    broker = start('printf new > "$1"\n')
    (tmp_path / "real.txt").write_bytes(b"old")
    os.symlink("real.txt", tmp_path / "link.txt")
    proc = GUEST.run_tool("qlite-open-in-dvm", str(tmp_path / "link.txt"), socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(tmp_path / "link.txt")
    assert (tmp_path / "real.txt").read_bytes() == b"new"


def test_view_only_never_writes_back(tmp_path, dvm):
    start, _ = dvm
    # Even a program that manages to change the file (root ignores 0400) changes nothing here.
    broker = start('chmod u+w "$1"; printf changed > "$1"\n')
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"original")
    proc = GUEST.run_tool("qlite-open-in-dvm", str(doc), "--view-only", socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert doc.read_bytes() == b"original"
    assert leftovers(tmp_path).count("doc.txt") == 1 and not any(".qlite-tmp" in n for n in leftovers(tmp_path))


def test_unchanged_file_is_left_alone(tmp_path, dvm):
    start, home = dvm
    broker = start('cp "$1" "$HOME/seen"\n')
    doc = tmp_path / "big.bin"
    content = os.urandom(300_000)
    doc.write_bytes(content)
    inode = doc.stat().st_ino
    proc = GUEST.run_tool("qlite-open-in-dvm", str(doc), socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert (home / "seen").read_bytes() == content  # the disposable got it all
    assert doc.stat().st_ino == inode and doc.read_bytes() == content
    assert not list(home.glob("qlite-open-*"))


def test_failing_program_is_the_exit_code_and_the_file_is_kept(tmp_path, dvm):
    start, _ = dvm
    broker = start('printf junk > "$1"; exit 4\n')
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"original")
    proc = GUEST.run_tool("qlite-open-in-dvm", str(doc), socket_path=broker.path)
    assert proc.returncode == 4
    assert doc.read_bytes() == b"original"
    assert leftovers(tmp_path) == ["doc.txt", "dvm-home", "open-program.sh"]


def test_refused_and_not_a_regular_file(tmp_path):
    sockdir = short_tmpdir()

    def deny(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "deny", "code": 126, "message": "no"})

    broker = FakeBroker(sockdir / "rpc.sock", deny)
    try:
        (tmp_path / "doc").write_bytes(b"x")
        assert GUEST.run_tool("qlite-open-in-dvm", str(tmp_path / "doc"), socket_path=broker.path).returncode == 126
        proc = GUEST.run_tool("qlite-open-in-dvm", str(tmp_path), socket_path=broker.path)
        assert proc.returncode == 1 and b"not a regular file" in proc.stderr
    finally:
        broker.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_a_lying_reply_is_refused_and_nothing_is_written(tmp_path):
    sockdir = short_tmpdir()

    def liar(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "disp1"})
        conn.read_stdin()
        header = openinvm.encode_header({"result": "changed", "size": 3})
        conn.send(wire.STDOUT, header + b"toolong")
        conn.send_json(wire.EXIT, {"code": 0})

    broker = FakeBroker(sockdir / "rpc.sock", liar)
    try:
        (tmp_path / "doc").write_bytes(b"original")
        proc = GUEST.run_tool("qlite-open-in-dvm", str(tmp_path / "doc"), socket_path=broker.path)
        assert proc.returncode == 1 and b"longer than it said" in proc.stderr
        assert leftovers(tmp_path) == ["doc"] and (tmp_path / "doc").read_bytes() == b"original"
    finally:
        broker.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_program_choice(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".config/qlite").mkdir(parents=True)
    (home / ".config/qlite/open-program").write_text("\n# comment\nmyviewer --flag\n")
    assert openinvm.program_argv("/t/f", str(home)) == ["/bin/sh", "-c", 'myviewer --flag "$@"', "open-program", "/t/f"]
    (home / ".config/qlite/open-program").unlink()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shown = ["/bin/sh", "-c", openinvm.SHOW_AS_TEXT, "show", "/t/f"]
    # Nothing configured: the file is shown as text (no editor can run
    # without a terminal, and a minimal template has no xdg-open).
    assert openinvm.program_argv("/t/f", str(home), {"PATH": str(bindir)}) == shown
    (bindir / "xdg-open").write_text("#!/bin/sh\n")
    (bindir / "xdg-open").chmod(0o755)
    assert openinvm.program_argv("/t/f", str(home), {"PATH": str(bindir)}) == shown  # no display to open it on
    for display in ({"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"}):
        assert openinvm.program_argv("/t/f", str(home), {"PATH": str(bindir), **display}) == [
            str(bindir / "xdg-open"),
            "/t/f",
        ]


def test_with_nothing_configured_the_file_is_shown_on_the_callers_stderr(tmp_path):
    """The README's example works in a fresh disposable template: with no
    open-program and no display, the caller sees the file and exits 0."""
    sockdir = short_tmpdir()
    home = tmp_path / "dvm-home"
    home.mkdir()
    broker = dispatching_broker(
        sockdir / "rpc.sock", home, target="disp1234", PATH="/usr/bin:/bin", DISPLAY="", WAYLAND_DISPLAY=""
    )
    try:
        doc = tmp_path / "notes.txt"
        doc.write_bytes(b"first line\nsecond line\n")
        proc = GUEST.run_tool("qlite-open-in-dvm", str(doc), socket_path=broker.path, input=b"")
        assert proc.returncode == 0, proc.stderr
        assert b"notes.txt (shown as text" in proc.stderr and b"first line\nsecond line\n" in proc.stderr
        assert doc.read_bytes() == b"first line\nsecond line\n"
        assert leftovers(tmp_path) == ["dvm-home", "notes.txt"]
    finally:
        broker.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert not broker.errors, broker.errors


@pytest.mark.parametrize(
    "name, safe", [("a.txt", "a.txt"), ("a\nb", "a_b"), ("..", "file"), ("", "file"), ("\u202egpj.exe", "_gpj.exe")]
)
def test_sent_names_are_made_safe(name, safe):
    assert openinvm.safe_name(name) == safe
