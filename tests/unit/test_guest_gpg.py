"""Split GPG, guest side: the gpgopts allowlist (tables and Hypothesis), the
qubes.Gpg header, and qlite-gpg against a fake broker that runs the REAL
qubes.Gpg service (through the dispatcher) with the REAL gpg over a
throwaway GNUPGHOME, including git commit -S / verify-commit."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.rpc import wire

from .guest_helpers import GUEST, FakeBroker, dispatching_broker, short_tmpdir

gpgopts = GUEST.module("gpgopts")
splitgpg = GUEST.module("splitgpg")
client = GUEST.module("client")

GPG = shutil.which("gpg") or "/usr/bin/gpg"

F, S, K = "file", "stdin", "key"


def ops(*pairs):
    return tuple(gpgopts.Operand(kind, value) for kind, value in pairs)


# -- gpgopts: what is accepted, in its normal form ----------------------------------------

ACCEPTED = [
    # git commit -S
    (
        ["--status-fd=2", "-bsau", "KEYID"],
        "detach-sign",
        ("--status-fd=2", "--detach-sign", "--sign", "--armor", "--local-user=KEYID"),
        (),
    ),
    # git verify-commit
    (
        ["--keyid-format=long", "--status-fd=1", "--verify", "/tmp/.git_vtag_ab12", "-"],
        "verify",
        ("--keyid-format=long", "--status-fd=1", "--verify"),
        ops((F, "/tmp/.git_vtag_ab12"), (S, "-")),
    ),
    (["-ba"], "detach-sign", ("--detach-sign", "--armor"), ()),
    (["-b", "-s", "-a", "-u", "KEY"], "detach-sign", ("--detach-sign", "--sign", "--armor", "--local-user=KEY"), ()),
    (["-bsauKEY"], "detach-sign", ("--detach-sign", "--sign", "--armor", "--local-user=KEY"), ()),
    (["--status-fd", "2", "--detach-sign"], "detach-sign", ("--status-fd=2", "--detach-sign"), ()),
    (["--status-fd=1", "-s"], "sign", ("--status-fd=1", "--sign"), ()),
    (["--local-user=KEY", "--sign", "in.txt"], "sign", ("--local-user=KEY", "--sign"), ops((F, "in.txt"))),
    (
        ["--local-user", "Test <t@example.org>", "-s", "-"],
        "sign",
        ("--local-user=Test <t@example.org>", "--sign"),
        ops((S, "-")),
    ),
    (["--clearsign"], "clearsign", ("--clearsign",), ()),
    (["--clear-sign"], "clearsign", ("--clearsign",), ()),
    (
        ["-s", "--clearsign", "--no-emit-version", "--comment", "hi there", "--no-comment"],
        "clearsign",
        ("--sign", "--clearsign", "--no-emit-version", "--comment=hi there", "--no-comments"),
        (),
    ),
    (["-e", "-r", "KEY", "-a"], "encrypt", ("--encrypt", "--recipient=KEY", "--armor"), ()),
    (
        [
            "--encrypt",
            "--recipient=A",
            "-R",
            "B",
            "--throw-keyids",
            "--cipher-algo",
            "AES256",
            "--compress-algo=zlib",
            "--trust-model",
            "always",
            "x.txt",
        ],
        "encrypt",
        (
            "--encrypt",
            "--recipient=A",
            "--hidden-recipient=B",
            "--throw-keyids",
            "--cipher-algo=AES256",
            "--compress-algo=zlib",
            "--trust-model=always",
        ),
        ops((F, "x.txt")),
    ),
    (
        ["-se", "-rKEY", "--digest-algo=SHA512", "-t"],
        "sign-encrypt",
        ("--sign", "--encrypt", "--recipient=KEY", "--digest-algo=SHA512", "--textmode"),
        (),
    ),
    (["-d"], "decrypt", ("--decrypt",), ()),
    (["--decrypt", "--", "-weird.gpg"], "decrypt", ("--decrypt",), ops((F, "-weird.gpg"))),
    (["-d", "msg.asc"], "decrypt", ("--decrypt",), ops((F, "msg.asc"))),
    (["--verify"], "verify", ("--verify",), ()),
    (["--verify", "sig.asc"], "verify", ("--verify",), ops((F, "sig.asc"))),
    (["--verify", "-", "data"], "verify", ("--verify",), ops((S, "-"), (F, "data"))),
    (["--verify", "sig", "d1", "d2"], "verify", ("--verify",), ops((F, "sig"), (F, "d1"), (F, "d2"))),
    (["-k"], "list-keys", ("--list-keys",), ()),
    (
        ["--list-keys", "alice", "bob@example.org"],
        "list-keys",
        ("--list-keys",),
        ops((K, "alice"), (K, "bob@example.org")),
    ),
    (
        ["--list-public-keys", "--with-colons", "--fixed-list-mode", "--with-fingerprint", "--with-keygrip"],
        "list-keys",
        ("--list-keys", "--with-colons", "--fixed-list-mode", "--with-fingerprint", "--with-keygrip"),
        (),
    ),
    (["-K", "--keyid-format", "0xLONG"], "list-secret-keys", ("--list-secret-keys", "--keyid-format=0xlong"), ()),
    (["--list-secret-keys", "--fingerprint"], "list-secret-keys", ("--list-secret-keys", "--fingerprint"), ()),
    (["--fingerprint", "alice"], "list-keys", ("--fingerprint",), ops((K, "alice"))),
    (["--list-sigs", "--", "-dash-key"], "list-sigs", ("--list-sigs",), ops((K, "-dash-key"))),
    (["--export", "-a", "KEY"], "export", ("--export", "--armor"), ops((K, "KEY"))),
    (["--export", "--no-armor"], "export", ("--export", "--no-armor"), ()),
    (["--version"], "version", ("--version",), ()),
    (
        [
            "--batch",
            "--no-tty",
            "--yes",
            "-q",
            "-v",
            "--quiet",
            "--verbose",
            "--no-verbose",
            "--utf8-strings",
            "--charset",
            "utf-8",
            "--display-charset=iso-8859-1",
            "--emit-version",
            "--always-trust",
            "-k",
        ],
        "list-keys",
        (
            "--batch",
            "--no-tty",
            "--yes",
            "--quiet",
            "--verbose",
            "--quiet",
            "--verbose",
            "--no-verbose",
            "--utf8-strings",
            "--display-charset=utf-8",
            "--display-charset=iso-8859-1",
            "--emit-version",
            "--always-trust",
            "--list-keys",
        ),
        (),
    ),
]


@pytest.mark.parametrize("argv, command, options, operands", ACCEPTED)
def test_accepted_command_lines_and_their_normal_form(argv, command, options, operands):
    request = gpgopts.parse(argv)
    assert (request.command, request.options, request.operands) == (command, options, operands)
    assert gpgopts.parse(request.args()) == request  # the normal form is a fixpoint


# -- gpgopts: what is refused -----------------------------------------------------------

FORBIDDEN = [
    (["--export-secret-keys"], "--export-secret-keys"),
    (["--export-secret-subkeys", "-a"], "--export-secret-subkeys"),
    (["--export", "--export-options", "export-secret"], "--export-options"),
    (["--gen-key"], "--gen-key"),
    (["--full-gen-key"], "--full-gen-key"),
    (["--quick-gen-key", "x"], "--quick-gen-key"),
    (["--quick-add-key", "x"], "--quick-add-key"),
    (["--edit-key", "x"], "--edit-key"),
    (["--delete-keys", "x"], "--delete-keys"),
    (["--delete-secret-keys", "x"], "--delete-secret-keys"),
    (["--delete-secret-and-public-keys", "x"], "--delete-secret-and-public-keys"),
    (["--import"], "--import"),
    (["--homedir", "/tmp", "-k"], "--homedir"),
    (["--options", "/tmp/x", "-k"], "--options"),
    (["--output", "x", "-s"], "--output"),
    (["--output=-", "-s"], "--output"),
    (["-s", "-o", "x"], "-o"),
    (["-so-"], "-o"),
    (["--passphrase", "x", "-s"], "--passphrase"),
    (["--passphrase-fd", "0", "-s"], "--passphrase-fd"),
    (["--passphrase-file", "/x", "-s"], "--passphrase-file"),
    (["--command-fd", "0", "-s"], "--command-fd"),
    (["--pinentry-mode", "loopback", "-s"], "--pinentry-mode"),
    (["--gpg-agent-info", "x", "-s"], "--gpg-agent-info"),
    (["--exec-path", "/tmp", "-s"], "--exec-path"),
    (["--load-extension", "x", "-s"], "--load-extension"),
    (["--logger-fd", "2", "-s"], "--logger-fd"),
    (["--log-file", "/tmp/x", "-s"], "--log-file"),
    (["--status-file", "/tmp/x", "-s"], "--status-file"),
    (["--attribute-fd", "2", "-k"], "--attribute-fd"),
    (["--photo-viewer", "sh", "-k"], "--photo-viewer"),
    (["--keyserver", "x", "-k"], "--keyserver"),
    (["--with-key-data", "-k"], "--with-key-data"),
    (["--symmetric"], "--symmetric"),
    (["-c"], "-c"),
    (["-bsnau", "KEY"], "-n"),
    (["-k", "-x"], "-x"),
    (["-\x1b[2J"], "-"),
    # abbreviations of allowed (and forbidden) options
    (["--clear"], "--clear"),
    (["--clearsig"], "--clearsig"),
    (["--lis"], "--lis"),
    (["--list-key"], "--list-key"),
    (["--export-secret-k"], "--export-secret-k"),
    (["--detach", "-a"], "--detach"),
    (["--local=KEY", "-s"], "--local"),
    (["--stat=2", "-s"], "--stat"),
    (["--arm", "-s"], "--arm"),
]

FORBIDDEN_VALUES = [
    ["--status-fd=3", "-s"],
    ["--status-fd", "0", "-s"],
    ["--status-fd=01", "-s"],
    ["--status-fd=1 ", "-s"],
    ["--keyid-format=medium", "-k"],
    ["--trust-model", "tofu", "-k"],
    ["--trust-model=tofu+pgp", "-k"],
    ["--digest-algo", "SHA256;rm", "-s"],
    ["--cipher-algo=-x", "-e"],
    ["--charset", "", "-k"],
    ["-u", "--export-secret-keys", "-s"],
    ["-u", "", "-s"],
    ["--local-user=a\nb", "-s"],
    ["--comment", "line1\nline2", "--clearsign"],
    ["--comment=" + "x" * 600, "--clearsign"],
]


@pytest.mark.parametrize("argv, name", FORBIDDEN)
def test_forbidden_options_are_named(argv, name):
    with pytest.raises(gpgopts.ForbiddenOption) as info:
        gpgopts.parse(argv)
    message = str(info.value)
    assert message.startswith("Forbidden option: ")
    assert name in message
    assert "\n" not in message and "\x1b" not in message


def test_an_abbreviation_says_to_write_the_option_in_full():
    with pytest.raises(gpgopts.ForbiddenOption, match="abbreviations are not accepted"):
        gpgopts.parse(["--clear"])


@pytest.mark.parametrize("argv", FORBIDDEN_VALUES)
def test_forbidden_option_values(argv):
    with pytest.raises(gpgopts.ForbiddenOption) as info:
        gpgopts.parse(argv)
    assert str(info.value).startswith("Forbidden option value: --")
    assert "\n" not in str(info.value)


USAGE_ERRORS = [
    ([], "no command"),
    (["-a"], "no command"),
    (["-s", "-k"], "conflicting commands"),
    (["--export", "--verify"], "conflicting commands"),
    (["-bse"], "conflicting commands"),
    (["-d", "--clearsign"], "conflicting commands"),
    (["--fingerprint", "--export"], "conflicting commands"),
    (["-u"], "needs a value"),
    (["-s", "--local-user"], "needs a value"),
    (["-bsau"], "needs a value"),
    (["--armor=yes", "-s"], "takes no value"),
    (["--sign=x"], "takes no value"),
    (["-s", "a", "b"], "at most one input file"),
    (["-d", "a", "-"], "at most one input file"),
    (["--verify", "-", "-"], "only once"),
    (["--verify", "sig", "-a"], "must follow '--'"),
    (["--export", "KEY", "--export-secret-keys"], "must follow '--'"),
    (["-k", "alice", "--"], "must follow '--'"),
    (["--version", "x"], "no arguments"),
    (["-s", ""], "empty file name"),
    (["-k", "--", ""], "bad key name"),
    (["-k", "a\x00b"], "bad key name"),
    (["--verify", *[f"f{i}" for i in range(17)]], "at most 16 files"),
    (["-k", *[f"k{i}" for i in range(257)]], "too many key names"),
    (["-k"] * 1025, "too many arguments"),
]


@pytest.mark.parametrize("argv, fragment", USAGE_ERRORS)
def test_usage_errors(argv, fragment):
    with pytest.raises(gpgopts.UsageError, match=fragment):
        gpgopts.parse(argv)


def test_double_dash_ends_options():
    request = gpgopts.parse(["--export", "--", "--export-secret-keys", "-a"])
    assert request.options == ("--export",)
    assert request.operands == ops((K, "--export-secret-keys"), (K, "-a"))
    # ...and gpg sees them after its own "--", so never as options.
    argv = request.gpg_argv("/usr/bin/gpg")
    assert argv[argv.index("--") + 1 :] == ["--export-secret-keys", "-a"]


def test_stdin_use():
    assert gpgopts.parse(["-bsau", "K"]).reads_stdin
    assert gpgopts.parse(["-s", "-"]).reads_stdin
    assert not gpgopts.parse(["-s", "f"]).reads_stdin
    assert gpgopts.parse(["--verify"]).reads_stdin
    assert gpgopts.parse(["--verify", "sig", "-"]).reads_stdin
    assert not gpgopts.parse(["--verify", "sig"]).reads_stdin
    assert not gpgopts.parse(["-k"]).reads_stdin
    assert not gpgopts.parse(["--export", "-"]).reads_stdin  # a key name, never stdin
    assert not gpgopts.parse(["--version"]).reads_stdin


def test_the_vault_argv_forces_batch_and_stdout_and_renames_files():
    request = gpgopts.parse(["--status-fd=2", "-bsau", "KEY", "/home/user/in.txt"])
    assert request.files == ("/home/user/in.txt",)
    renamed = request.with_files(["/tmp/qlite-gpg-x/file1"])
    assert renamed.gpg_argv("/usr/bin/gpg") == [
        "/usr/bin/gpg",
        "--batch",
        "--no-tty",
        "--no-secmem-warning",
        "--status-fd=2",
        "--detach-sign",
        "--sign",
        "--armor",
        "--local-user=KEY",
        "--output",
        "-",
        "--",
        "/tmp/qlite-gpg-x/file1",
    ]
    assert gpgopts.parse(["-k", "x"]).gpg_argv("gpg") == [
        "gpg",
        "--batch",
        "--no-tty",
        "--no-secmem-warning",
        "--list-keys",
        "--",
        "x",
    ]
    assert gpgopts.parse(["--verify", "s", "-"]).with_files(["file1"]).gpg_argv("gpg") == [
        "gpg",
        "--batch",
        "--no-tty",
        "--no-secmem-warning",
        "--verify",
        "--",
        "file1",
        "-",
    ]
    with pytest.raises(ValueError):
        request.with_files([])


ALLOWED_NAMES = {option.name for option in gpgopts.OPTIONS.values()}


def test_every_name_sent_to_gpg_is_a_full_gpg_option_name():
    # Otherwise gpg would expand it as an abbreviation of something else.
    dumped = subprocess.run([GPG, "--dump-options"], capture_output=True, text=True, check=True).stdout.split()
    assert ALLOWED_NAMES | {"output"} <= {name.removeprefix("--") for name in dumped}


# -- gpgopts: Hypothesis --------------------------------------------------------------------

FORBIDDEN_NAMES = {
    "export-secret-keys",
    "export-secret-subkeys",
    "gen-key",
    "full-gen-key",
    "quick-gen-key",
    "generate-key",
    "quick-add-key",
    "edit-key",
    "delete-keys",
    "delete-secret-keys",
    "import",
    "homedir",
    "options",
    "output",
    "passphrase",
    "passphrase-fd",
    "command-fd",
    "pinentry-mode",
    "exec-path",
    "load-extension",
    "logger-fd",
    "status-file",
    "export-options",
    "symmetric",
    "sign-key",
    "lsign-key",
    "passwd",
    "gen-revoke",
}
VOCABULARY = sorted(
    [f"--{name}" for name in gpgopts.OPTIONS]
    + [f"--{name}" for name in FORBIDDEN_NAMES]
    + ["-" + letter for letter in gpgopts.SHORT]
    + ["-o", "-c", "-n", "-bsau", "-ba", "-se", "-uK", "-bso"]
    + [
        "--",
        "-",
        "--status-fd=1",
        "--status-fd=3",
        "--local-user=K",
        "--clear",
        "--lis",
        "--export-secret-k",
        "KEY",
        "file.txt",
        "long",
        "always",
        "tofu",
        "1",
        "2",
        "SHA256",
        "",
    ]
)


@given(st.lists(st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=12)), max_size=10))
def test_any_argv_is_refused_cleanly_or_accepted_without_forbidden_options(argv):
    try:
        request = gpgopts.parse(argv)
    except (gpgopts.ForbiddenOption, gpgopts.UsageError) as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert request.command in set(gpgopts.COMMANDS.values())
    assert gpgopts.parse(request.args()) == request
    names = request.with_files([f"file{i}" for i in range(1, len(request.files) + 1)])
    vault_argv = names.gpg_argv("/usr/bin/gpg")
    end = vault_argv.index("--")
    for arg in vault_argv[1:end]:
        if arg == "-":  # the value of --output
            continue
        name = arg[2:].partition("=")[0]
        assert arg.startswith("--") and name in ALLOWED_NAMES | {"output", "no-secmem-warning"}, arg
        assert name not in FORBIDDEN_NAMES - {"output"}
    assert vault_argv[end - 2 : end] == ["--output", "-"] or "--output" not in vault_argv[:end]
    for operand in request.operands:
        assert operand.kind in ("stdin", "file", "key")


# -- the header -----------------------------------------------------------------------------


def test_header_round_trip_and_limits():
    header = splitgpg.Header(["--verify", "--", "file1", "-"], [("file1", 12)])
    data = splitgpg.encode_header(header)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert splitgpg.decode_header(data[4:]) == header
    with pytest.raises(splitgpg.RequestError, match="too long"):
        splitgpg.encode_header(splitgpg.Header(["-k", "--", *["k" * 1000] * 70], []))


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "not a version 1"),
        (b'{"version": 2, "args": [], "files": []}', "not a version 1"),
        (b'{"version": 1, "args": "-k", "files": []}', "args"),
        (b'{"version": 1, "args": [1], "files": []}', "args"),
        (b'{"version": 1, "args": [], "files": {}}', "files"),
        (b'{"version": "1", "args": [], "files": []}', "not a version 1"),
        (b'{"version": 1, "args": [], "files": [{"name": "../x", "size": 1}]}', "file1, file2"),
        (b'{"version": 1, "args": [], "files": [{"name": "/etc/passwd", "size": 1}]}', "file1, file2"),
        (b'{"version": 1, "args": [], "files": [{"name": "file1", "size": -1}]}', "no size"),
        (b'{"version": 1, "args": [], "files": [{"name": "file1", "size": true}]}', "no size"),
        (b'{"version": 1, "args": [], "files": [{"name": "file1", "size": 104857601}]}', "limit"),
        (
            b'{"version": 1, "args": [], "files": [{"name": "file1", "size": 60000000}, '
            b'{"name": "file2", "size": 60000000}]}',
            "limit",
        ),
    ],
)
def test_bad_headers(raw, fragment):
    with pytest.raises(splitgpg.RequestError, match=fragment):
        splitgpg.decode_header(raw)


def test_the_sent_header_names_files_not_paths(tmp_path):
    sig = tmp_path / "secret-project" / "x.sig"
    sig.parent.mkdir()
    sig.write_bytes(b"SIG")
    request = gpgopts.parse(["--status-fd=1", "--verify", str(sig), "-"])
    sent, chunks = splitgpg.request_prefix(request, splitgpg.read_inputs(request.files))
    stream = b"".join(chunks)
    header = splitgpg.decode_header(stream[4 : 4 + int.from_bytes(stream[:4], "big")])
    assert header == splitgpg.Header(["--status-fd=1", "--verify", "--", "file1", "-"], [("file1", 3)])
    assert stream.endswith(b"SIG") and b"secret-project" not in stream
    assert gpgopts.parse(header.args) == sent


def test_inputs_over_the_limit_and_missing_inputs(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    with pytest.raises(splitgpg.RequestError, match="limit"):
        splitgpg.read_inputs((str(tmp_path / "a"),), limit=9)
    with pytest.raises(splitgpg.RequestError, match="No such file"):
        splitgpg.read_inputs((str(tmp_path / "missing"),))


def test_target_domain():
    assert splitgpg.target_domain({}) == "@default"
    assert splitgpg.target_domain({"QUBES_GPG_DOMAIN": "vault"}) == "vault"
    assert splitgpg.target_domain({"QLITE_GPG_DOMAIN": "keys", "QUBES_GPG_DOMAIN": "vault"}) == "keys"


def test_qubes_gpg_client_is_the_same_tool():
    assert GUEST.bin("qubes-gpg-client").read_bytes() == GUEST.bin("qlite-gpg").read_bytes()
    for path in (GUEST.bin("qlite-gpg"), GUEST.bin("qubes-gpg-client"), GUEST.rpc_dir / "qubes.Gpg"):
        assert os.access(path, os.X_OK)


# -- the client against scripted brokers -----------------------------------------------------


@pytest.fixture
def sockdir():
    d = short_tmpdir()
    made: list[FakeBroker] = []
    yield d, made
    for b in made:
        b.close()
    shutil.rmtree(d, ignore_errors=True)
    for b in made:
        assert not b.errors, b.errors


def scripted(sockdir, handler):
    d, made = sockdir
    broker = FakeBroker(d / f"rpc{len(made)}.sock", handler)
    made.append(broker)
    return broker


def test_forbidden_option_is_refused_before_connecting(sockdir):
    calls = []
    broker = scripted(sockdir, lambda conn: calls.append(conn.recv_request()))
    proc = GUEST.run_tool("qlite-gpg", "--export-secret-keys", "-a", socket_path=broker.path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == ["Forbidden option: --export-secret-keys"]
    proc = GUEST.run_tool("qlite-gpg", "-s", "-k", socket_path=broker.path)
    assert (proc.returncode, proc.stderr.decode().strip()) == (2, "qlite-gpg: conflicting commands: --list-keys --sign")
    proc = GUEST.run_tool("qubes-gpg-client", "-s", "/nonexistent/in.txt", socket_path=broker.path)
    assert proc.returncode == 2 and proc.stderr.startswith(b"qubes-gpg-client: /nonexistent/in.txt: No such file")
    assert calls == []


def test_a_refused_call_is_gpg_exit_2_with_a_message(sockdir):
    requests = []

    def deny(conn):
        requests.append(conn.recv_request())
        conn.send_json(wire.RESULT, {"result": "deny", "code": 126, "message": "denied by policy"})

    broker = scripted(sockdir, deny)
    proc = GUEST.run_tool("qlite-gpg", "--status-fd=2", "-bsau", "KEY", socket_path=broker.path, input=b"data")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "qlite-gpg: the vault refused the request (denied by policy)"
    assert requests == [{"version": 1, "target": "@default", "service": "qubes.Gpg", "argument": ""}]
    proc = GUEST.run_tool("qlite-gpg", "-k", socket_path=broker.path, QLITE_GPG_DOMAIN="vault")
    assert requests[-1]["target"] == "vault" and proc.returncode == 2


def test_no_broker_and_no_service_are_exit_2(sockdir):
    proc = GUEST.run_tool("qlite-gpg", "-k", socket_path=sockdir[0] / "none.sock")
    assert proc.returncode == 2 and b"cannot reach the vault (@default)" in proc.stderr

    def no_service(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "vault"})
        conn.send_json(wire.EXIT, {"code": 127})

    proc = GUEST.run_tool("qlite-gpg", "-k", socket_path=scripted(sockdir, no_service).path)
    assert proc.returncode == 2 and b"vault has no qubes.Gpg service" in proc.stderr


def test_listing_does_not_wait_for_stdin(sockdir):
    got = []

    def reply(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "vault"})
        got.append(conn.read_stdin())
        conn.send(wire.STDOUT, b"pub ...\n")
        conn.send(wire.STDERR, b"note\n")
        conn.send_json(wire.EXIT, {"code": 0})

    broker = scripted(sockdir, reply)
    # stdin is a pipe that is never written to or closed: reading it would hang.
    proc = subprocess.Popen(
        [GUEST.bin("qlite-gpg"), "-k", "alice"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=GUEST.env(QLITE_RPC_SOCKET=str(broker.path)),
    )
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.stdin.close()
    assert (proc.returncode, out, err) == (0, b"pub ...\n", b"note\n")
    header = splitgpg.decode_header(got[0][4:])
    assert header == splitgpg.Header(["--list-keys", "--", "alice"], [])


# -- end to end: the real service and the real gpg ------------------------------------------


def _gpg(home, *args, input=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPG_", "GNUPG"))}
    env["GNUPGHOME"] = str(home)
    return subprocess.run(
        [splitgpg.GPG, "--batch", *args], input=input, capture_output=True, env=env, timeout=60, check=True
    )


@pytest.fixture(scope="module")
def vault_keys():
    """A throwaway GNUPGHOME with an ed25519 signing key and a cv25519
    encryption subkey: (GNUPGHOME, fingerprint). Stops its gpg-agent after."""
    assert os.path.exists(splitgpg.GPG), "gpg is missing: setup.sh installs gnupg"
    home = short_tmpdir()  # short: gpg-agent's socket lives in it
    home.chmod(0o700)
    try:
        _gpg(home, "--passphrase", "", "--quick-gen-key", "Test <t@example.org>", "ed25519", "sign")
        colons = _gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
        fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
        _gpg(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr")
        yield home, fpr
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def vault(vault_keys, tmp_path):
    """(run(tool_args, input) -> CompletedProcess, fingerprint, broker, the service's TMPDIR)."""
    home, fpr = vault_keys
    sockdir = short_tmpdir()
    service_tmp = tmp_path / "vault-tmp"
    service_tmp.mkdir()
    broker = dispatching_broker(
        sockdir / "rpc.sock", tmp_path, source="work", target="vault", GNUPGHOME=str(home), TMPDIR=str(service_tmp)
    )

    def run(*args, input=b"", tool="qlite-gpg"):
        return GUEST.run_tool(tool, *args, socket_path=broker.path, input=input, cwd=tmp_path)

    yield run, fpr, broker, service_tmp
    broker.close()
    shutil.rmtree(sockdir, ignore_errors=True)
    assert not broker.errors, broker.errors
    assert list(service_tmp.iterdir()) == []  # every request's temp dir was removed


def test_clearsign_and_verify(vault):
    run, _, broker, _ = vault
    signed = run("--clearsign", input=b"hi\n")
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----") and b"\nhi\n" in signed.stdout
    checked = run("--verify", input=signed.stdout)
    assert checked.returncode == 0, checked.stderr
    assert b'Good signature from "Test <t@example.org>"' in checked.stderr
    assert broker.requests[0] == {"version": 1, "target": "@default", "service": "qubes.Gpg", "argument": ""}


def test_detached_sign_then_verify_with_status_fds(vault, tmp_path):
    run, fpr, _, _ = vault
    signed = run("--status-fd=2", "-bsau", fpr, input=b"payload\n", tool="qubes-gpg-client")
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith(b"-----BEGIN PGP SIGNATURE-----")
    assert b"\n[GNUPG:] SIG_CREATED D " in b"\n" + signed.stderr
    sig = tmp_path / "payload.sig"
    sig.write_bytes(signed.stdout)
    good = run("--keyid-format=long", "--status-fd=1", "--verify", str(sig), "-", input=b"payload\n")
    assert good.returncode == 0, good.stderr
    assert f"[GNUPG:] GOODSIG {fpr[-16:]} Test <t@example.org>".encode() in good.stdout
    assert f"[GNUPG:] VALIDSIG {fpr}".encode() in good.stdout
    bad = run("--status-fd=1", "--verify", str(sig), "-", input=b"tampered\n")
    assert bad.returncode == 1 and b"[GNUPG:] BADSIG" in bad.stdout
    # A data file instead of stdin: both files travel in the request.
    (tmp_path / "payload").write_bytes(b"payload\n")
    assert run("--verify", str(sig), str(tmp_path / "payload")).returncode == 0


def test_encrypt_then_decrypt_from_stdin_and_from_a_file(vault, tmp_path):
    run, _, _, _ = vault
    encrypted = run("-e", "-r", "t@example.org", "-a", input=b"secret text\n")
    assert encrypted.returncode == 0, encrypted.stderr
    assert encrypted.stdout.startswith(b"-----BEGIN PGP MESSAGE-----")
    decrypted = run("-d", input=encrypted.stdout)
    assert (decrypted.returncode, decrypted.stdout) == (0, b"secret text\n"), decrypted.stderr
    (tmp_path / "msg.asc").write_bytes(encrypted.stdout)
    from_file = run("-d", "msg.asc")
    assert (from_file.returncode, from_file.stdout) == (0, b"secret text\n"), from_file.stderr
    # Output goes to stdout, never to a file next to the input.
    signed = run("-s", "msg.asc")
    assert signed.returncode == 0 and signed.stdout and not (tmp_path / "msg.asc.gpg").exists()


def test_listing_keys(vault):
    run, fpr, _, _ = vault
    listed = run("-k")
    assert listed.returncode == 0, listed.stderr
    assert b"Test <t@example.org>" in listed.stdout and b"ed25519" in listed.stdout
    colons = run("--list-keys", "--with-colons", "--fixed-list-mode", "t@example.org")
    assert colons.returncode == 0, colons.stderr
    lines = colons.stdout.decode().splitlines()
    assert any(line.startswith("pub:") for line in lines)
    assert f"fpr:::::::::{fpr}:" in lines
    secret = run("-K", "--with-keygrip")
    assert secret.returncode == 0 and b"sec " in secret.stdout and b"Keygrip" in secret.stdout
    assert run("-k", "nobody@nowhere.invalid").returncode == 2


def test_export_is_public_only(vault):
    run, fpr, _, _ = vault
    exported = run("--export", "-a", fpr)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert b"PRIVATE" not in exported.stdout
    refused = run("--export-secret-keys", "-a", fpr)
    assert (refused.returncode, refused.stdout) == (2, b"")
    assert refused.stderr.decode().strip() == "Forbidden option: --export-secret-keys"


def _raw_call(broker, stream: bytes):
    """Send STREAM to qubes.Gpg as a client that skips qlite-gpg's checks."""
    out, err = bytearray(), bytearray()
    with client.connect("@default", "qubes.Gpg", path=str(broker.path)) as call:
        code = client.pump(call, iter([stream]), out.extend, err.extend)
    return code, bytes(out), bytes(err)


def _header(args, files=()):
    return splitgpg.encode_header(splitgpg.Header(list(args), list(files)))


@pytest.mark.parametrize(
    "args, files, content, message",
    [
        (["--export-secret-keys", "--armor", "--"], [], b"", "Forbidden option: --export-secret-keys"),
        (["--export-secret-subkeys", "--"], [], b"", "Forbidden option: --export-secret-subkeys"),
        (["--quick-gen-key", "--", "x"], [], b"", "Forbidden option: --quick-gen-key"),
        (["--edit-key", "--", "x"], [], b"", "Forbidden option: --edit-key"),
        (
            ["--export", "--export-options=export-secret-subkey-passwd", "--"],
            [],
            b"",
            "Forbidden option: --export-options",
        ),
        (["--status-fd=5", "--sign", "--"], [], b"", "Forbidden option value: --status-fd=5"),
        (["--export-sec", "--"], [], b"", "Forbidden option: --export-sec"),
        (["--homedir=/tmp", "--list-keys", "--"], [], b"", "Forbidden option: --homedir"),
        (["--output=/home/user/x", "--sign", "--"], [], b"", "Forbidden option: --output"),
        # a path named by the client is never opened: files must be sent
        (["--verify", "--", "/etc/passwd"], [], b"", "qubes.Gpg: bad header: the files sent are not the file operands"),
        (["--decrypt", "--", "file1"], [], b"", "qubes.Gpg: bad header: the files sent are not the file operands"),
        (
            ["--verify", "--", "file2", "file1"],
            [("file1", 1), ("file2", 1)],
            b"ab",
            "qubes.Gpg: bad header: the files sent are not the file operands",
        ),
        (
            ["--list-keys", "--"],
            [("file1", 1)],
            b"a",
            "qubes.Gpg: bad header: the files sent are not the file operands",
        ),
        (
            ["--verify", "--", "file1"],
            [("file1", 100)],
            b"short",
            "qubes.Gpg: the request ended in the middle of a file",
        ),
    ],
)
def test_the_service_checks_again_what_a_crafted_client_sends(vault, args, files, content, message):
    _, _, broker, _ = vault
    code, out, err = _raw_call(broker, _header(args, files) + content)
    assert (code, out) == (2, b"")
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


def test_the_options_are_checked_before_the_rest_of_the_header(vault):
    _, _, broker, _ = vault
    header = b'{"args": ["--export-secret-keys", "-a"], "files": {}}'  # no version, files not a list
    code, out, err = _raw_call(broker, len(header).to_bytes(4, "big") + header)
    assert (code, out, err) == (2, b"", b"Forbidden option: --export-secret-keys\n")


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"\x00\x00", "the request ended early"),
        (b"\x00\x00\x00\x00", "bad header length 0"),
        ((64 * 1024 + 1).to_bytes(4, "big") + b"{}", "bad header length 65537"),
        (b'\x00\x00\x00\x0e{"version": 3}', "not a version 1 JSON object"),
        (b"\x00\x00\x00\x02{}", "args is not a list of strings"),
    ],
)
def test_the_service_refuses_broken_headers(vault, stream, message):
    _, _, broker, _ = vault
    code, out, err = _raw_call(broker, stream)
    assert (code, out) == (2, b"") and message in err.decode()


def test_git_commit_signed_and_verified_through_the_vault(vault, tmp_path):
    _, fpr, broker, _ = vault
    repo = tmp_path / "repo"
    repo.mkdir()
    env = GUEST.env(
        QLITE_RPC_SOCKET=str(broker.path),
        HOME=str(tmp_path),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    program = str(GUEST.bin("qlite-gpg"))

    def git(*args):
        return subprocess.run(
            ["git", "-c", f"gpg.program={program}", "-c", f"user.signingkey={fpr}", *args],
            cwd=repo,
            env=env,
            capture_output=True,
            timeout=60,
        )

    assert git("init", "-q").returncode == 0
    (repo / "a.txt").write_text("hello\n")
    assert git("add", "a.txt").returncode == 0
    committed = git("commit", "-S", "-q", "-m", "signed in the vault")
    assert committed.returncode == 0, committed.stderr
    raw = git("cat-file", "commit", "HEAD").stdout
    assert b"\ngpgsig -----BEGIN PGP SIGNATURE-----" in raw
    verified = git("verify-commit", "-v", "HEAD")
    assert verified.returncode == 0, verified.stderr
    assert b'Good signature from "Test <t@example.org>"' in verified.stderr
    shown = git("log", "--format=%G? %GF%n%GG", "-1").stdout.decode()
    assert shown.startswith(f"G {fpr}\n"), shown  # %GG: gpg's (or qlite-gpg's) messages
    # A forged signature (the payload changed after signing) fails to verify.
    forged = raw.replace(b"signed in the vault", b"signed elsewhere")
    oid = (
        subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
            cwd=repo,
            env=env,
            input=forged,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    assert git("verify-commit", oid).returncode != 0


def test_stdin_and_files_stream_concurrently_with_output(vault):
    # Bigger than the frame and pipe buffers both ways: nothing may deadlock.
    run, _, _, _ = vault
    data = os.urandom(3 * 1024 * 1024)
    encrypted = run("-e", "-r", "t@example.org", "--compress-algo", "none", input=data)
    assert encrypted.returncode == 0, encrypted.stderr
    decrypted = run("-d", input=encrypted.stdout)
    assert decrypted.returncode == 0 and decrypted.stdout == data
