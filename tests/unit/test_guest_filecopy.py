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
    tree = {"top": {"a.txt": b"hello", "empty": {}, "sub": {"deeper": {"b.bin": bytes(range(256)) * 500}}, "z": b""}}
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


SAFE_NAMES = st.text(alphabet=st.sampled_from("abcXYZ019._- é日"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
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


# -- the modes the receiver gives ------------------------------------------------------------

# (type, sent mode or None for none sent, mode on disk): a directory is always rwx for
# its owner, a file always rw; group and other never get write; no setuid, setgid or sticky.
MODES = [
    ("dir", 0, 0o700),
    ("dir", 0o500, 0o700),
    ("dir", 0o055, 0o755),
    ("dir", 0o750, 0o750),
    ("dir", 0o775, 0o755),
    ("dir", 0o777, 0o755),
    ("dir", 0o1777, 0o755),
    ("dir", 0o2770, 0o750),
    ("dir", None, 0o755),
    ("file", 0, 0o600),
    ("file", 0o400, 0o600),
    ("file", 0o444, 0o644),
    ("file", 0o640, 0o640),
    ("file", 0o100, 0o700),
    ("file", 0o664, 0o644),
    ("file", 0o666, 0o644),
    ("file", 0o777, 0o755),
    ("file", 0o4755, 0o755),
    ("file", 0o2775, 0o755),
    ("file", 0o7777, 0o755),
    ("file", None, 0o644),
]


@pytest.mark.parametrize(
    "kind, sent, expected", MODES, ids=[f"{k}-{'none' if s is None else oct(s)}" for k, s, _ in MODES]
)
def test_received_modes_are_normalised(tmp_path, kind, sent, expected):
    header = {"type": kind, "name": "x"} | ({} if sent is None else {"mode": sent})
    if kind == "file":
        header["size"] = 1
    unpack(tmp_path / "dest", stream_of(header, content={0: b"x"} if kind == "file" else None))
    assert stat.S_IMODE(os.lstat(tmp_path / "dest/x").st_mode) == expected


def test_a_mode_0_directory_stays_usable(tmp_path):
    data = stream_of(
        {"type": "dir", "name": "d", "mode": 0},
        {"type": "dir", "name": "d/e", "mode": 0},
        {"type": "file", "name": "d/e/f", "mode": 0, "size": 2},
        content={2: b"hi"},
    )
    unpack(tmp_path / "dest", data)
    assert read_tree(tmp_path / "dest") == {"d": {"e": {"f": b"hi"}}}
    for path in ("d", "d/e"):
        assert stat.S_IMODE(os.lstat(tmp_path / "dest" / path).st_mode) == 0o700
    (tmp_path / "dest/d/e/new").write_bytes(b"")  # the owner can add to it


# -- the receiver never writes outside its destination -----------------------------------

HOSTILE_NAMES = st.one_of(
    SAFE_NAMES,
    st.sampled_from(
        [
            "..",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "",
            "a//b",
            "a/",
            "link/x",
            "link",
            "x\x00y",
            "x\ny",
            "\u202eevil",
            "a" * 300,
            "ok/" * 2000,
            "\udcff",
        ]
    ),
    st.text(max_size=20),
)
HEADERS = st.fixed_dictionaries(
    {"type": st.sampled_from(["file", "dir", "end", "symlink", "fifo", 7])},
    optional={
        "name": HOSTILE_NAMES,
        "mode": st.one_of(st.integers(-5, 0o20000), st.booleans()),
        "size": st.one_of(st.integers(-3, 64), st.just(2**70), st.text(max_size=3)),
        "mtime": st.integers(-1, 2**41),
    },
)


@st.composite
def hostile_streams(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    out = bytearray()
    for header in draw(st.lists(HEADERS, max_size=6)):
        data = json.dumps(header).encode()
        length = draw(st.one_of(st.just(len(data)), st.integers(0, 2**32 - 1)))
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


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../evil",
        "a/../../evil",
        "/tmp/evil",
        "",
        "a//b",
        "a/",
        ".",
        "x\x1by",
        "tab\there",
        "\u202etxt.exe",
        "n" * 256,
        "\udcff",
    ],
)
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
    for data in (
        stream_of(
            {"type": "dir", "name": "docs", "mode": 0o755},
            {"type": "file", "name": "docs/x", "mode": 0o644, "size": 1},
            content={1: b"x"},
        ),
        stream_of({"type": "file", "name": "victim", "mode": 0o644, "size": 3}, content={0: b"bad"}),
    ):
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
    unpack(
        tmp_path / "dest",
        stream_of(
            {"type": "dir", "name": "d", "mode": 0o755}, {"type": "file", "name": "d/new", "size": 1}, content={1: b"n"}
        ),
    )
    with pytest.raises(filecopy.Refusal, match="already exists"):
        unpack(
            tmp_path / "dest",
            stream_of(
                {"type": "dir", "name": "d", "mode": 0o755},
                {"type": "file", "name": "d/old", "size": 3},
                content={1: b"new"},
            ),
        )
    assert (tmp_path / "dest/d/old").read_bytes() == b"old"
    assert (tmp_path / "dest/d/new").read_bytes() == b"n"


def listing(root: Path) -> dict:
    """Everything under ROOT, never through a symlink: each path's type and
    permission bits, a file's content and a symlink's target."""
    out: dict = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        st_ = entry.stat(follow_symlinks=False)
        mode = stat.S_IMODE(st_.st_mode)
        if entry.is_symlink():
            out[entry.name] = ("link", os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            out[entry.name] = ("dir", mode, listing(Path(entry.path)))
        else:
            out[entry.name] = ("file", mode, Path(entry.path).read_bytes())
    return out


def with_pre_existing(dest: Path) -> None:
    """What a destination holds before a stream: files, a directory the stream
    reuses, a symlink to outside, odd modes the receiver must leave alone."""
    write_tree(dest, {"keep.txt": b"old", "shared": {"old": b"o"}, "locked": {}})
    os.chmod(dest / "keep.txt", 0o666)
    os.chmod(dest / "shared", 0o777)
    os.chmod(dest / "locked", 0o500)
    (dest.parent / "outside").mkdir()
    os.symlink(dest.parent / "outside", dest / "link")


# Entries a stream sends before it goes wrong: into a directory that was there
# already, and into new nested directories (one of them mode 0, one with no write bit).
PREFIX = [
    ({"type": "dir", "name": "shared", "mode": 0o755}, b""),
    ({"type": "file", "name": "shared/new", "mode": 0o644, "size": 3}, b"new"),
    ({"type": "dir", "name": "d", "mode": 0}, b""),
    ({"type": "dir", "name": "d/e", "mode": 0o555}, b""),
    ({"type": "file", "name": "d/e/f", "mode": 0o400, "size": 5}, b"12345"),
    ({"type": "dir", "name": "d/e/empty"}, b""),
    ({"type": "file", "name": "top.txt", "size": 0}, b""),
]


def prefix_then(*more: tuple[dict, bytes], end: bool = True) -> bytes:
    entries = PREFIX + list(more)
    return stream_of(*(h for h, _ in entries), content={i: c for i, (_, c) in enumerate(entries)}, end=end)


REFUSED_MIDWAY = [
    pytest.param(
        prefix_then(({"type": "file", "name": "d/big", "size": 1000}, b"x" * 1000)),
        {"max_bytes": 100},
        "more than 100 bytes",
        id="size-over-the-limit",
    ),
    pytest.param(
        prefix_then(({"type": "file", "name": "more", "size": 0}, b"")),
        {"max_files": len(PREFIX)},
        "more than 7 entries",
        id="count-over-the-limit",
    ),
    pytest.param(prefix_then(({"type": "file", "name": "..", "size": 1}, b"x")), {}, "'..'", id="dotdot"),
    pytest.param(prefix_then(({"type": "file", "name": "d/../../x", "size": 1}, b"x")), {}, "'..'", id="dotdot-inside"),
    pytest.param(
        prefix_then(({"type": "file", "name": "d/e/cut", "size": 100}, b"only part"), end=False),
        {},
        "middle of the file",
        id="cut-in-a-file",
    ),
    pytest.param(prefix_then(end=False), {}, "before its end marker", id="no-end-marker"),
    pytest.param(prefix_then(end=False)[:-3], {}, "middle of", id="cut-in-content"),
    pytest.param(prefix_then() + b"x", {}, "after the end", id="data-after-end"),
    pytest.param(
        prefix_then(({"type": "file", "name": "keep.txt", "size": 3}, b"new")), {}, "already exists", id="existing-file"
    ),
    pytest.param(prefix_then(({"type": "dir", "name": "link"}, b"")), {}, "already exists", id="existing-link"),
    pytest.param(
        prefix_then(({"type": "file", "name": "link/x", "size": 0}, b"")), {}, "not sent before", id="through-a-link"
    ),
    pytest.param(
        prefix_then(({"type": "file", "name": "locked/x", "size": 0}, b"")), {}, "not sent before", id="unsent-dir"
    ),
    pytest.param(prefix_then(({"type": "dir", "name": "d/e"}, b"")), {}, "sent twice", id="dir-sent-twice"),
    pytest.param(prefix_then(({"type": "fifo", "name": "p"}, b"")), {}, "unknown entry type", id="bad-type"),
    pytest.param(prefix_then(({"type": "file", "name": "m", "size": 0, "mode": -1}, b"")), {}, "'mode'", id="bad-mode"),
]


@pytest.mark.parametrize("data, limits, match", REFUSED_MIDWAY)
def test_a_refused_stream_leaves_the_destination_as_it_was(tmp_path, data, limits, match):
    dest = tmp_path / "dest"
    with_pre_existing(dest)
    before = listing(tmp_path)
    with pytest.raises(filecopy.Refusal, match=match):
        unpack(dest, data, **limits)
    assert listing(tmp_path) == before


def test_a_refusal_reports_that_nothing_was_kept(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        unpacker = filecopy.Unpacker(fd)
        with pytest.raises(filecopy.Refusal):
            unpacker.run(io.BytesIO(prefix_then(end=False)))
    finally:
        os.close(fd)
    assert unpacker.summary.as_dict() == {"files": 0, "dirs": 0, "bytes": 0}
    assert list(dest.iterdir()) == []


def tree_entries(tree: dict, modes: st.DataObject, prefix: str = "") -> list[tuple[dict, bytes]]:
    """The stream entries for TREE, parents first, each with a drawn mode."""
    out: list[tuple[dict, bytes]] = []
    for name, value in tree.items():
        mode = modes.draw(st.integers(0, 0o7777))
        if isinstance(value, dict):
            out.append(({"type": "dir", "name": prefix + name, "mode": mode}, b""))
            out += tree_entries(value, modes, f"{prefix}{name}/")
        else:
            out.append(({"type": "file", "name": prefix + name, "mode": mode, "size": len(value)}, value))
    return out


FAULTS = st.sampled_from(
    [
        ({"type": "file", "name": "../escape", "size": 1}, b"x"),
        ({"type": "file", "name": "big", "size": 10_000}, b"x" * 10_000),
        ({"type": "file", "name": "keep.txt", "size": 1}, b"x"),
        ({"type": "dir", "name": "nowhere/x"}, b""),
        ({"type": "symlink", "name": "s"}, b""),
        ({"type": "file", "name": "cut", "size": 50}, b"short"),
        "truncate",
        "trailing",
    ]
)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=st.dictionaries(st.one_of(SAFE_NAMES, st.just("shared")), TREES, min_size=1, max_size=3),
    fault=FAULTS,
    modes=st.data(),
)
def test_random_refused_streams_leave_the_destination_as_it_was(tree, fault, modes):
    entries = tree_entries(tree, modes)
    if fault == "truncate":
        whole = stream_of(*(h for h, _ in entries), content={i: c for i, (_, c) in enumerate(entries)})
        data = whole[: modes.draw(st.integers(0, len(whole) - 1))]
    elif fault == "trailing":
        data = stream_of(*(h for h, _ in entries), content={i: c for i, (_, c) in enumerate(entries)}) + b"\0"
    else:
        # A file cut short goes last: anywhere else, the headers after it
        # could happen to be exactly its missing bytes and leave a valid
        # stream (hypothesis found one: "short" plus one directory header).
        at = len(entries) if fault[0].get("name") == "cut" else modes.draw(st.integers(0, len(entries)))
        entries = entries[:at] + [fault] + entries[at:]
        data = stream_of(*(h for h, _ in entries), content={i: c for i, (_, c) in enumerate(entries)})
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp, "dest")
        with_pre_existing(dest)
        before = listing(Path(tmp))
        with pytest.raises(filecopy.Refusal):
            unpack(dest, data, max_bytes=5000)
        assert listing(Path(tmp)) == before


@pytest.mark.parametrize(
    "raw, match",
    [
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
    ],
)
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
    import subprocess

    return subprocess.run(
        [str(GUEST.rpc_dir / "qubes.Filecopy")],
        input=data,
        capture_output=True,
        timeout=30,
        env=GUEST.env(HOME=str(home), QREXEC_REMOTE_DOMAIN=source, **env),
    )


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


def test_service_refusal_removes_what_it_made_and_says_nothing_was_kept(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = run_service(home, prefix_then(({"type": "file", "name": "../x", "size": 1}, b"x")))
    assert proc.returncode == 1 and b"'..'" in proc.stderr
    answer = json_line(proc.stdout)
    assert answer["ok"] is False and (answer["files"], answer["dirs"], answer["bytes"]) == (0, 0, 0)
    assert answer["dest"] == str(home / "QubesIncoming/work")
    assert list(home.iterdir()) == []  # it made QubesIncoming/work, so it removes them

    (home / "QubesIncoming").mkdir()
    proc = run_service(home, prefix_then(end=False))
    assert proc.returncode == 1
    assert list(home.iterdir()) == [home / "QubesIncoming"]
    assert list((home / "QubesIncoming").iterdir()) == []

    with_pre_existing(home / "QubesIncoming/work")
    before = listing(tmp_path)
    proc = run_service(home, prefix_then(end=False))
    assert proc.returncode == 1
    assert listing(tmp_path) == before


def test_service_limits_come_from_the_environment(tmp_path):
    data = stream_of(*({"type": "file", "name": f"f{i}", "size": 0} for i in range(3)))
    proc = run_service(tmp_path / "home", data, QLITE_FILECOPY_MAX_FILES="2")
    assert proc.returncode == 1
    assert proc.stderr.decode().count("\n") == 1 and "more than 2 entries" in proc.stderr.decode()
    assert json_line(proc.stdout)["ok"] is False
    proc = run_service(
        tmp_path / "home2",
        stream_of({"type": "file", "name": "f", "size": 3}, content={0: b"abc"}),
        QLITE_FILECOPY_MAX_BYTES="2",
    )
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
    proc = GUEST.run_tool(
        "qlite-copy", str(tmp_path / "src/report"), str(tmp_path / "src/note.txt"), socket_path=broker.path
    )
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
    proc = GUEST.run_tool(
        "qlite-move-to-vm", "work", str(tmp_path / "src/d"), str(tmp_path / "src/f"), socket_path=broker.path
    )
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
    assert list(home.iterdir()) == []  # QubesIncoming/src-qube was made for this copy, and removed with it


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
    from qlite.rpc import wire

    from .guest_helpers import FakeBroker

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
