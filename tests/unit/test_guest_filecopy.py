"""qubes.Filecopy: the sender's checks, the pack/unpack stream and the
receiver's refusals, in-process; then qlite-copy/qlite-move end to end
against a fake broker that runs the real service through the dispatcher."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .guest_helpers import GUEST, dispatching_broker, json_line, read_tree, short_tmpdir, write_tree

filecopy = GUEST.module("filecopy")


def stream_of(*headers: dict, content: dict[int, bytes] | None = None, end: bool = True) -> bytes:
    """A hand-made stream: HEADERS in order, CONTENT[i] after header i."""
    out = bytearray()
    for i, h in enumerate(headers):
        data = json.dumps(h).encode()
        out += struct.pack(">I", len(data)) + data
        out += (content or {}).get(i, b"")
    if end:
        out += struct.pack(">I", 14) + b'{"type":"end"}'
    return bytes(out)


def unpack(dest: Path, data: bytes, **limits: int):
    dest.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return filecopy.Unpacker(fd, filecopy.Limits(**limits)).run(io.BytesIO(data))
    finally:
        os.close(fd)


def packed(*paths: Path) -> bytes:
    return b"".join(filecopy.pack(filecopy.plan([str(p) for p in paths])))


# -- round trips ---------------------------------------------------------------------------


def test_nested_tree_round_trips_with_modes(tmp_path):
    tree = {"top": {"a.txt": b"hello", "empty": {}, "sub": {"deeper": {"b.bin": bytes(range(256)) * 500}},
                    "z": b""}}
    write_tree(tmp_path / "src", tree)
    os.chmod(tmp_path / "src/top/a.txt", 0o640)
    os.chmod(tmp_path / "src/top/sub", 0o750)
    os.utime(tmp_path / "src/top/a.txt", (1_600_000_000, 1_600_000_000))
    summary = unpack(tmp_path / "dest", packed(tmp_path / "src/top"))
    assert read_tree(tmp_path / "dest") == tree
    assert (summary.files, summary.dirs, summary.bytes) == (3, 4, 5 + 128000)
    assert stat.S_IMODE(os.stat(tmp_path / "dest/top/a.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "dest/top/sub").st_mode) == 0o750
    assert os.stat(tmp_path / "dest/top/a.txt").st_mtime == 1_600_000_000


def test_several_sources_and_a_single_file(tmp_path):
    write_tree(tmp_path / "src", {"one.txt": b"1", "d": {"two": b"2"}})
    unpack(tmp_path / "dest", packed(tmp_path / "src/one.txt", tmp_path / "src/d"))
    assert read_tree(tmp_path / "dest") == {"one.txt": b"1", "d": {"two": b"2"}}


def test_setuid_and_sticky_bits_do_not_cross(tmp_path):
    data = stream_of({"type": "file", "name": "x", "mode": 0o4755, "size": 1}, content={0: b"x"})
    unpack(tmp_path / "dest", data)
    assert stat.S_IMODE(os.stat(tmp_path / "dest/x").st_mode) == 0o755


SAFE_NAMES = st.text(alphabet=st.sampled_from("abcXYZ019._- é日"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))
TREES = st.recursive(
    st.binary(max_size=300),
    lambda children: st.dictionaries(SAFE_NAMES, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(SAFE_NAMES, TREES, min_size=1, max_size=3))
def test_random_trees_round_trip(tree):
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp, "src"), Path(tmp, "dest")
        write_tree(src, tree)
        summary = unpack(dest, packed(*(src / name for name in tree)))
        assert read_tree(dest) == tree
        assert summary.files + summary.dirs == sum(1 for _ in src.rglob("*"))


# -- the receiver never writes outside its destination -----------------------------------

HOSTILE_NAMES = st.one_of(
    SAFE_NAMES,
    st.sampled_from(["..", "../x", "/etc/passwd", "a/../../b", "", "a//b", "a/", "link/x", "link",
                     "x\x00y", "x\ny", "\u202eevil", "a" * 300, "ok/" * 2000, "\udcff"]),
    st.text(max_size=20),
)
HEADERS = st.fixed_dictionaries(
    {"type": st.sampled_from(["file", "dir", "end", "symlink", "fifo", 7])},
    optional={"name": HOSTILE_NAMES, "mode": st.one_of(st.integers(-5, 0o20000), st.booleans()),
              "size": st.one_of(st.integers(-3, 64), st.just(2 ** 70), st.text(max_size=3)),
              "mtime": st.integers(-1, 2 ** 41)},
)


@st.composite
def hostile_streams(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    out = bytearray()
    for header in draw(st.lists(HEADERS, max_size=6)):
        data = json.dumps(header).encode()
        length = draw(st.one_of(st.just(len(data)), st.integers(0, 2 ** 32 - 1)))
        out += struct.pack(">I", length) + data + draw(st.binary(max_size=70))
    return bytes(out)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_streams())
def test_hostile_streams_are_refused_cleanly_and_stay_inside(data):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        outside = sandbox / "outside"
        outside.mkdir()
        dest = sandbox / "dest"
        dest.mkdir()
        os.symlink(outside, dest / "link")
        try:
            unpack(dest, data, max_files=20, max_bytes=1000)
        except filecopy.Refusal as exc:
            assert str(exc) and "\n" not in str(exc)
        assert sorted(p.name for p in sandbox.iterdir()) == ["dest", "outside"]
        assert list(outside.iterdir()) == []


# -- the receiver's refusals ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../evil", "a/../../evil", "/tmp/evil", "", "a//b", "a/", ".",
                                  "x\x1by", "tab\there", "\u202etxt.exe", "n" * 256, "\udcff"])
def test_unsafe_names_are_refused(tmp_path, name):
    data = stream_of({"type": "file", "name": name, "mode": 0o644, "size": 1}, content={0: b"x"})
    with pytest.raises(filecopy.Refusal):
        unpack(tmp_path / "dest", data)
    assert list((tmp_path / "dest").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_symlink_planted_in_the_destination_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "docs")
    (outside / "victim").write_bytes(b"keep")
    os.symlink(outside / "victim", dest / "victim")
    for data in (stream_of({"type": "dir", "name": "docs", "mode": 0o755},
                           {"type": "file", "name": "docs/x", "mode": 0o644, "size": 1}, content={1: b"x"}),
                 stream_of({"type": "file", "name": "victim", "mode": 0o644, "size": 3}, content={0: b"bad"})):
        with pytest.raises(filecopy.Refusal):
            unpack(dest, data)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"keep"


def test_a_file_whose_directory_was_not_sent_is_refused(tmp_path):
    (tmp_path / "dest/existing").mkdir(parents=True)
    data = stream_of({"type": "file", "name": "existing/x", "mode": 0o644, "size": 1}, content={0: b"x"})
    with pytest.raises(filecopy.Refusal, match="not sent before"):
        unpack(tmp_path / "dest", data)


def test_existing_files_are_not_overwritten_but_existing_dirs_are_reused(tmp_path):
    (tmp_path / "dest/d").mkdir(parents=True)
    (tmp_path / "dest/d/old").write_bytes(b"old")
    unpack(tmp_path / "dest", stream_of({"type": "dir", "name": "d", "mode": 0o755},
                                        {"type": "file", "name": "d/new", "size": 1}, content={1: b"n"}))
    with pytest.raises(filecopy.Refusal, match="already exists"):
        unpack(tmp_path / "dest", stream_of({"type": "dir", "name": "d", "mode": 0o755},
                                            {"type": "file", "name": "d/old", "size": 3}, content={1: b"new"}))
    assert (tmp_path / "dest/d/old").read_bytes() == b"old"
    assert (tmp_path / "dest/d/new").read_bytes() == b"n"


def test_over_count_stops_and_keeps_what_was_received(tmp_path):
    headers = [{"type": "file", "name": f"f{i}", "size": 1} for i in range(4)]
    with pytest.raises(filecopy.Refusal, match="more than 2 entries"):
        unpack(tmp_path / "dest", stream_of(*headers, content={i: b"x" for i in range(4)}), max_files=2)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["f0", "f1"]


def test_over_size_stops_before_writing_the_file(tmp_path):
    data = stream_of({"type": "file", "name": "small", "size": 6}, {"type": "file", "name": "big", "size": 5},
                     content={0: b"123456", 1: b"12345"})
    with pytest.raises(filecopy.Refusal, match="more than 10 bytes"):
        unpack(tmp_path / "dest", data, max_bytes=10)
    assert read_tree(tmp_path / "dest") == {"small": b"123456"}


def test_a_stream_cut_in_a_file_removes_that_file_only(tmp_path):
    data = stream_of({"type": "file", "name": "whole", "size": 2}, {"type": "file", "name": "cut", "size": 100},
                     content={0: b"ok", 1: b"only part"}, end=False)
    with pytest.raises(filecopy.Refusal, match="middle of the file"):
        unpack(tmp_path / "dest", data)
    assert read_tree(tmp_path / "dest") == {"whole": b"ok"}


@pytest.mark.parametrize("raw, match", [
    (struct.pack(">I", 0), "length 0"),
    (struct.pack(">I", 9000) + b"{" * 9000, "length 9000"),
    (struct.pack(">I", 5) + b"nope!", "not UTF-8 JSON"),
    (struct.pack(">I", 2) + b"[]", "not a JSON object"),
    (struct.pack(">I", 2) + b"\xff\xfe", "not UTF-8 JSON"),
    (struct.pack(">I", 40) + b"{}", "middle of a header"),
    (b"\x00\x00", "before its end marker"),
    (b"", "before its end marker"),
    (stream_of({"type": "symlink", "name": "x"}, end=False), "unknown entry type"),
    (stream_of({"type": "file", "name": "x"}, end=False), "'size'"),
    (stream_of({"type": "file", "name": "x", "size": -1}, end=False), "'size'"),
    (stream_of({"type": "file", "name": "x", "size": True}, end=False), "'size'"),
    (stream_of({"type": "file", "name": "x", "size": 0, "mode": "rwx"}, end=False), "'mode'"),
    (stream_of({"type": "dir", "name": "d"}, {"type": "dir", "name": "d"}), "sent twice"),
    (stream_of() + b"trailing", "after the end"),
])
def test_bad_headers_are_refused(tmp_path, raw, match):
    with pytest.raises(filecopy.Refusal, match=match):
        unpack(tmp_path / "dest", raw)


# -- the sender's refusals -------------------------------------------------------------------


def test_sender_refuses_symlinks_fifos_and_sockets_anywhere_in_the_tree(tmp_path):
    write_tree(tmp_path / "src", {"d": {"ok": b"1", "deep": {}}})
    os.symlink("/etc/passwd", tmp_path / "src/d/deep/link")
    with pytest.raises(filecopy.SourceError, match="symbolic link"):
        filecopy.plan([str(tmp_path / "src/d")])
    os.unlink(tmp_path / "src/d/deep/link")
    os.mkfifo(tmp_path / "src/d/deep/fifo")
    with pytest.raises(filecopy.SourceError, match="FIFO"):
        filecopy.plan([str(tmp_path / "src/d")])
    with pytest.raises(filecopy.SourceError, match="FIFO"):
        filecopy.plan([str(tmp_path / "src/d/deep/fifo")])
    os.symlink(tmp_path / "src/d", tmp_path / "src/dirlink")
    with pytest.raises(filecopy.SourceError, match="symbolic link"):
        filecopy.plan([str(tmp_path / "src/dirlink")])


def test_sender_refuses_unsafe_names_duplicates_and_missing_files(tmp_path):
    write_tree(tmp_path / "a", {"same": b"1", "bad\nname": b"2"})
    write_tree(tmp_path / "b", {"same": b"3"})
    with pytest.raises(filecopy.SourceError, match="unsafe character"):
        filecopy.plan([str(tmp_path / "a")])
    with pytest.raises(filecopy.SourceError, match="both named"):
        filecopy.plan([str(tmp_path / "a/same"), str(tmp_path / "b/same")])
    with pytest.raises(filecopy.SourceError, match="No such file"):
        filecopy.plan([str(tmp_path / "missing")])


def test_a_file_that_changes_while_sent_aborts_the_stream(tmp_path):
    write_tree(tmp_path, {"f": b"12345"})
    entries = filecopy.plan([str(tmp_path / "f")])
    (tmp_path / "f").write_bytes(b"123")
    with pytest.raises(filecopy.SourceError, match="changed"):
        b"".join(filecopy.pack(entries))


# -- the service script ----------------------------------------------------------------------


def run_service(home: Path, data: bytes, source: str = "work", **env: str):
    import subprocess  # noqa: PLC0415

    return subprocess.run([str(GUEST.rpc_dir / "qubes.Filecopy")], input=data, capture_output=True, timeout=30,
                          env=GUEST.env(HOME=str(home), QREXEC_REMOTE_DOMAIN=source, **env))


def test_service_unpacks_into_qubes_incoming_and_answers_json(tmp_path):
    write_tree(tmp_path / "src", {"doc.txt": b"text"})
    proc = run_service(tmp_path / "home", packed(tmp_path / "src/doc.txt"))
    assert proc.returncode == 0, proc.stderr
    answer = json_line(proc.stdout)
    assert answer["ok"] is True and (answer["files"], answer["dirs"], answer["bytes"]) == (1, 0, 4)
    assert (tmp_path / "home/QubesIncoming/work/doc.txt").read_bytes() == b"text"


@pytest.mark.parametrize("source", ["", "..", "../x", "a/b", "-x", "x" * 40])
def test_service_refuses_a_bad_source_name(tmp_path, source):
    proc = run_service(tmp_path / "home", stream_of(), source=source)
    assert proc.returncode == 1
    assert b"not a valid qube name" in proc.stderr
    assert not (tmp_path / "home/QubesIncoming").exists() or not any((tmp_path / "home/QubesIncoming").iterdir())


def test_service_refuses_a_symlinked_incoming_directory(tmp_path):
    (tmp_path / "home/QubesIncoming").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "home/QubesIncoming/work")
    proc = run_service(tmp_path / "home", stream_of({"type": "file", "name": "f", "size": 1}, content={0: b"x"}))
    assert proc.returncode == 1 and b"cannot open" in proc.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_service_limits_come_from_the_environment(tmp_path):
    data = stream_of(*({"type": "file", "name": f"f{i}", "size": 0} for i in range(3)))
    proc = run_service(tmp_path / "home", data, QLITE_FILECOPY_MAX_FILES="2")
    assert proc.returncode == 1
    assert proc.stderr.decode().count("\n") == 1 and "more than 2 entries" in proc.stderr.decode()
    assert json_line(proc.stdout)["ok"] is False
    proc = run_service(tmp_path / "home2", stream_of({"type": "file", "name": "f", "size": 3}, content={0: b"abc"}),
                       QLITE_FILECOPY_MAX_BYTES="2")
    assert proc.returncode == 1 and b"more than 2 bytes" in proc.stderr
    proc = run_service(tmp_path / "home3", stream_of(), QLITE_FILECOPY_MAX_BYTES="lots")
    assert proc.returncode == 1 and b"QLITE_FILECOPY_MAX_BYTES" in proc.stderr


# -- qlite-copy / qlite-move end to end --------------------------------------------------------


@pytest.fixture
def rpc(tmp_path):
    """A fake broker running the real qubes.Filecopy with HOME=tmp_path/home."""
    sockdir = short_tmpdir()
    home = tmp_path / "home"
    home.mkdir()
    brokers = []

    def start(**service_env: str):
        broker = dispatching_broker(sockdir / f"rpc{len(brokers)}.sock", home, **service_env)
        brokers.append(broker)
        return broker

    yield start, home
    for b in brokers:
        b.close()
        assert not b.errors, b.errors
    shutil.rmtree(sockdir, ignore_errors=True)


def test_qlite_copy_lands_in_qubes_incoming_of_the_source(tmp_path, rpc):
    start, home = rpc
    broker = start()
    tree = {"report": {"a.txt": b"A" * 200_000, "sub": {"b": b"B"}}, "note.txt": b"n"}
    write_tree(tmp_path / "src", tree)
    proc = GUEST.run_tool("qlite-copy", str(tmp_path / "src/report"), str(tmp_path / "src/note.txt"),
                          socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert b"copied 3 files, 2 directories" in proc.stdout and b"to work" in proc.stdout
    assert read_tree(home / "QubesIncoming/src-qube") == tree
    assert read_tree(tmp_path / "src") == tree  # a copy keeps the sources
    assert broker.requests == [{"version": 1, "target": "@default", "service": "qubes.Filecopy", "argument": ""}]


def test_qlite_copy_to_vm_names_the_target(tmp_path, rpc):
    start, _ = rpc
    broker = start()
    write_tree(tmp_path / "src", {"f": b"1"})
    proc = GUEST.run_tool("qlite-copy-to-vm", "work", str(tmp_path / "src/f"), socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert broker.requests[0]["target"] == "work"


def test_qlite_move_deletes_sources_only_after_success(tmp_path, rpc):
    start, home = rpc
    broker = start()
    write_tree(tmp_path / "src", {"d": {"x": b"1"}, "f": b"2"})
    proc = GUEST.run_tool("qlite-move", str(tmp_path / "src/d"), str(tmp_path / "src/f"), socket_path=broker.path)
    assert proc.returncode == 0, proc.stderr
    assert b"moved" in proc.stdout
    assert list((tmp_path / "src").iterdir()) == []
    assert read_tree(home / "QubesIncoming/src-qube") == {"d": {"x": b"1"}, "f": b"2"}

    # Now the receiver refuses (the names exist already): nothing is deleted.
    write_tree(tmp_path / "src", {"d": {"x": b"1"}, "f": b"2"})
    proc = GUEST.run_tool("qlite-move-to-vm", "work", str(tmp_path / "src/d"), str(tmp_path / "src/f"),
                          socket_path=broker.path)
    assert proc.returncode != 0
    assert b"already exists" in proc.stderr and b"nothing was deleted" in proc.stderr
    assert read_tree(tmp_path / "src") == {"d": {"x": b"1"}, "f": b"2"}


def test_qlite_move_keeps_sources_when_the_receiver_hits_a_limit(tmp_path, rpc):
    start, home = rpc
    broker = start(QLITE_FILECOPY_MAX_FILES="2")
    write_tree(tmp_path / "src", {"d": {"1": b"1", "2": b"2", "3": b"3"}})
    proc = GUEST.run_tool("qlite-move", str(tmp_path / "src/d"), socket_path=broker.path)
    assert proc.returncode != 0
    assert b"more than 2 entries" in proc.stderr
    assert read_tree(tmp_path / "src") == {"d": {"1": b"1", "2": b"2", "3": b"3"}}
    assert read_tree(home / "QubesIncoming/src-qube") == {"d": {"1": b"1"}}


def test_qlite_copy_refuses_special_files_before_calling(tmp_path, rpc):
    start, _ = rpc
    broker = start()
    write_tree(tmp_path / "src", {"d": {"ok": b"1"}})
    os.mkfifo(tmp_path / "src/d/pipe")
    os.symlink("ok", tmp_path / "src/link")
    for path in (tmp_path / "src/d", tmp_path / "src/link"):
        proc = GUEST.run_tool("qlite-move", str(path), socket_path=broker.path)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and "nothing was sent" in err and "Traceback" not in err
    assert broker.requests == []
    assert (tmp_path / "src/d/ok").exists()


def test_qlite_copy_refused_by_policy_exits_126(tmp_path):
    from qlite.rpc import wire  # noqa: PLC0415

    from .guest_helpers import FakeBroker  # noqa: PLC0415

    sockdir = short_tmpdir()

    def deny(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "deny", "code": 126, "message": "refused by policy"})

    broker = FakeBroker(sockdir / "rpc.sock", deny)
    try:
        write_tree(tmp_path / "src", {"f": b"1"})
        proc = GUEST.run_tool("qlite-move", str(tmp_path / "src/f"), socket_path=broker.path)
        assert proc.returncode == 126
        assert b"refused by policy" in proc.stderr
        assert (tmp_path / "src/f").exists()
    finally:
        broker.close()
        shutil.rmtree(sockdir, ignore_errors=True)
