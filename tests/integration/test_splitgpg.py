"""Split GPG with real gpg and git: a key made in an offline vault signs a
commit in a client qube (verified on the host with the exported public
key), decrypts for the client, and never reaches the client."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import threading
import time

import pytest

pytestmark = pytest.mark.integration

ASK_TIMEOUT = 20
WINDOW = 6


@pytest.fixture(scope="module")
def gpg(home, tmp_path_factory):
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": str(ASK_TIMEOUT)})
    home.run("create", "work", "--label", "blue")
    setup = home.json("splitgpg", "setup", "vault", "--client", "work", "--autoaccept", str(WINDOW))
    assert setup["created"] and setup["clients"] == ["work"]
    fpr = home.run("splitgpg", "gen-key", "vault", "--name", "Vault Test", "--email", "vault@qlite.test").stdout.strip()
    assert len(fpr) == 40
    gnupghome = tmp_path_factory.mktemp("hostgpg")
    os.chmod(gnupghome, 0o700)
    yield {"home": home, "fpr": fpr, "gnupghome": gnupghome}
    subprocess.run(["gpgconf", "--homedir", str(gnupghome), "--kill", "gpg-agent"], capture_output=True)
    home.run("daemon", "stop")


def answer_next_ask(home, allow: bool = True, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asks = home.json("policy", "ask")
        if asks:
            ask = asks[0]
            home.run("policy", "ask", str(ask["id"]), "allow" if allow else "deny")
            return ask
        time.sleep(0.2)
    raise AssertionError("no question appeared")


def finish_approving(home, p: subprocess.Popen, stdin: bytes | None = None, timeout: float = 90):
    """Wait for P, saying yes to any question it raises (bounded)."""
    result: list[tuple[bytes, bytes]] = []
    feeder = threading.Thread(target=lambda: result.append(p.communicate(stdin, timeout=timeout)))
    feeder.start()
    deadline = time.monotonic() + timeout
    while feeder.is_alive() and time.monotonic() < deadline:
        for ask in home.json("policy", "ask"):
            home.run("policy", "ask", str(ask["id"]), "allow", check=False)
        feeder.join(0.3)
    feeder.join(5)
    return result[0]


def in_work(home, script: str, **kw) -> subprocess.Popen:
    return home.popen("run", "work", "--", "sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def host_gpg(gnupghome, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["gpg", "--homedir", str(gnupghome), "--batch", "--no-tty", *args], input=input, capture_output=True, timeout=60
    )


def test_the_vault_is_offline_and_holds_the_secret_key(gpg):
    home = gpg["home"]
    row = next(r for r in home.json("ls") if r["name"] == "vault")
    assert row["netvm"] is None
    secret = home.json("splitgpg", "list", "vault", "--secret")
    assert [k["fingerprint"] for k in secret] == [gpg["fpr"]]
    policy = (home.path / "policy.d" / "40-splitgpg.policy").read_text()
    assert "qubes.Gpg  *  work  vault  ask" in policy
    assert home.json("features", "work")["autoaccept.qubes.Gpg"] == str(WINDOW)


def test_gpg_says_nothing_about_insecure_memory(gpg):
    """gVisor cannot lock memory; the vault's gpg.conf (written by setup)
    and the service's own options keep gpg's warning out of every call."""
    home = gpg["home"]
    conf = home.run("run", "vault", "--", "cat", ".gnupg/gpg.conf").stdout
    assert "no-secmem-warning" in conf.splitlines()
    direct = home.run("run", "vault", "--", "gpg", "--batch", "--list-keys", input="")
    assert "insecure memory" not in direct.stderr and "Vault Test" in direct.stdout
    p = in_work(home, "echo quiet | qlite-gpg --clearsign")
    out, err = finish_approving(home, p)
    assert p.returncode == 0 and b"BEGIN PGP SIGNATURE" in out, err
    assert b"insecure memory" not in err
    forget_approvals(home)  # the next test starts with a question, as a fresh client would


def forget_approvals(home) -> None:
    """A "yes" stands for the client's window: a new daemon remembers none."""
    home.run("daemon", "stop")
    home.run("daemon", "start", env={"QLITE_ASK_TIMEOUT": str(ASK_TIMEOUT)})


def test_the_key_listing_is_readable(gpg):
    home, fpr = gpg["home"], gpg["fpr"]
    (key,) = home.json("splitgpg", "list", "vault")
    assert key["fingerprint"] == fpr and key["algorithm"] == "ed25519"
    assert [s["algorithm"] for s in key["subkeys"]] == ["cv25519"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", key["created_at"]) and key["expires_at"] is None
    assert (key["algo"], key["created"].isdigit()) == ("22", True)  # gpg's raw fields are still there
    table = home.run("splitgpg", "list", "vault").stdout
    row = next(line for line in table.splitlines() if fpr in line)
    assert "ed25519, cv25519" in row and key["created_at"][:10] in row and "never" in row
    assert " 22 " not in row and key["created"] not in row


def test_commit_signed_in_the_client_verifies_on_the_host(gpg):
    home, fpr = gpg["home"], gpg["fpr"]
    script = (
        "set -e; rm -rf repo; mkdir repo; cd repo; git init -q; "
        "git config user.name 'Work Qube'; git config user.email work@qlite.test; "
        f"git config user.signingkey {fpr}; git config gpg.program qlite-gpg; "
        "echo content > file; git add file; git commit -q -S -m 'signed through the vault'; "
        "git verify-commit HEAD 2>&1; git log --show-signature -1 --format=%G? "
    )
    p = in_work(home, script)
    ask = answer_next_ask(home)
    assert ask["source"] == "work" and ask["service"] == "qubes.Gpg" and ask["choices"] == ["vault"]
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, (out, err)
    assert b"Good signature" in out  # verify-commit through the vault, within the window

    # On the host: the exported public key verifies the commit.
    public = home.run("splitgpg", "export", "vault", fpr).stdout
    assert "BEGIN PGP PUBLIC KEY BLOCK" in public and "PRIVATE" not in public
    assert host_gpg(gpg["gnupghome"], "--import", input=public.encode()).returncode == 0
    tar = home.run("run", "work", "--", "tar", "-C", "repo", "-c", ".", input=b"").stdout
    checkout = gpg["gnupghome"].parent / "repo"
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(checkout)
    verify = subprocess.run(
        [
            "git",
            "-c",
            f"safe.directory={checkout}",
            "-c",
            "gpg.program=gpg",
            "-C",
            str(checkout),
            "verify-commit",
            "HEAD",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GNUPGHOME": str(gpg["gnupghome"])},
    )
    assert verify.returncode == 0, verify.stderr
    assert f"using EDDSA key {fpr}" in verify.stderr and "Good signature" in verify.stderr


def test_encrypted_message_is_decrypted_for_the_client(gpg):
    home, fpr = gpg["home"], gpg["fpr"]
    host_gpg(gpg["gnupghome"], "--import", input=home.run("splitgpg", "export", "vault", fpr).stdout.encode())
    enc = host_gpg(gpg["gnupghome"], "--trust-model", "always", "-a", "-e", "-r", fpr, input=b"for the vault's eyes\n")
    assert enc.returncode == 0, enc.stderr
    p = in_work(home, "qlite-gpg -d", stdin=subprocess.PIPE)
    out, err = finish_approving(home, p, enc.stdout)
    assert p.returncode == 0, err
    assert out == b"for the vault's eyes\n"
    # Encrypt in the client, to the vault's key, in a pipe.
    p = in_work(home, f"echo round trip | qlite-gpg -a -e -r {fpr} | qlite-gpg -d")
    out, err = finish_approving(home, p)
    assert p.returncode == 0 and out == b"round trip\n", err


def test_after_the_window_the_next_use_asks_again_and_a_no_fails_clearly(gpg):
    home = gpg["home"]
    time.sleep(WINDOW + 1)  # whatever earlier tests approved has lapsed
    p = in_work(home, "echo one | qlite-gpg --clearsign")
    answer_next_ask(home)
    assert p.communicate(timeout=60)[0].startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    # Within the window: no question.
    p = in_work(home, "echo two | qlite-gpg --clearsign")
    out, _ = p.communicate(timeout=60)
    assert b"BEGIN PGP SIGNATURE" in out
    assert home.json("policy", "ask") == []
    time.sleep(WINDOW + 1)
    p = in_work(home, "echo three | qlite-gpg --clearsign")
    ask = answer_next_ask(home, allow=False)
    assert ask["service"] == "qubes.Gpg"
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and b"refused" in err and b"BEGIN PGP" not in out
    records = home.json("log", "rpc", "-n", "500")
    assert any("auto-accepted" in r.get("reason", "") for r in records)


@pytest.mark.parametrize(
    "args",
    [
        ["--export-secret-keys"],
        ["--export-secret-subkeys"],
        ["--gen-key"],
        ["--quick-gen-key", "x"],
        ["--edit-key", "x"],
        ["--delete-secret-keys", "x"],
        ["--import"],
        ["--homedir", "/tmp"],
        ["--clear"],
        ["--export-secret-k"],
        ["--output", "x", "-s"],
        ["--command-fd", "0"],
    ],
)
def test_forbidden_options_are_refused_by_the_client(gpg, args):
    proc = gpg["home"].run("run", "work", "--", "qlite-gpg", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qlite-gpg: Forbidden option") or "Forbidden option" in proc.stderr


def test_forbidden_options_are_refused_by_the_vault_too(gpg):
    """Bypass the client's own check: talk to the service directly."""
    home = gpg["home"]
    script = (
        "python3 -c \"import json,struct,sys;h=json.dumps({'args':['--export-secret-keys','-a'],'files':{}})"
        ".encode();sys.stdout.buffer.write(struct.pack('>I',len(h))+h)\" "
        "| qrexec-client-vm vault qubes.Gpg"
    )
    p = in_work(home, script)
    out, err = finish_approving(home, p)
    assert p.returncode == 2, (out, err)
    assert b"Forbidden option" in err and b"PRIVATE KEY" not in out


def test_the_client_never_holds_secret_key_material(gpg):
    home, fpr = gpg["home"], gpg["fpr"]
    secret = home.run("run", "vault", "--", "gpg", "--batch", "--export-secret-keys", fpr, input=b"").stdout
    assert len(secret) > 100
    # An unprotected secret-key packet ends with the secret scalar (32 bytes
    # for ed25519) and a 2-byte checksum: that scalar must never be found.
    packet = first_packet(secret, tag=5)
    needle = packet[-34:-2]
    # The client's private volume, on the host...
    volume = subprocess.run(
        ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"qlite-{home.hash}-work-private"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    for root, _dirs, files in os.walk(volume):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            assert needle not in data, path
            assert b"PRIVATE KEY BLOCK" not in data, path
    # ...and its volatile directories, from inside.
    scan = (
        "import os,sys\nneedle=bytes.fromhex(sys.argv[1])\nhits=[]\n"
        "for top in ('/tmp','/var/tmp','/run','/home/user','/rw'):\n"
        "    for r,_,fs in os.walk(top):\n"
        "        for n in fs:\n"
        "            p=os.path.join(r,n)\n"
        "            try:\n"
        "                d=open(p,'rb').read() if os.path.isfile(p) and not os.path.islink(p) else b''\n"
        "            except OSError:\n"
        "                continue\n"
        "            if needle in d or b'PRIVATE KEY BLOCK' in d: hits.append(p)\n"
        "print(hits)\n"
    )
    assert home.run("run", "work", "--", "python3", "-c", scan, needle.hex()).stdout.strip() == "[]"
    keys = home.run("run", "work", "--", "sh", "-c", "find ~/.gnupg -path '*private-keys*' -type f 2>/dev/null | wc -l")
    assert keys.stdout.strip() == "0"


def first_packet(data: bytes, tag: int) -> bytes:
    """The body of the first OpenPGP packet in DATA, which must have TAG."""
    head = data[0]
    assert head & 0x80, "not an OpenPGP packet"
    if head & 0x40:  # new format
        assert head & 0x3F == tag
        first = data[1]
        if first < 192:
            return data[2 : 2 + first]
        if first < 224:
            length = ((first - 192) << 8) + data[2] + 192
            return data[3 : 3 + length]
        length = int.from_bytes(data[2:6], "big")
        return data[6 : 6 + length]
    assert (head >> 2) & 0x0F == tag
    size = {0: 1, 1: 2, 2: 4}[head & 3]
    length = int.from_bytes(data[1 : 1 + size], "big")
    return data[1 + size : 1 + size + length]
