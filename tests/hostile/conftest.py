"""The hostile-qube suite: root inside a real qube attacks qlite's own
host-side code, one escape per test.

Every test gets a host canary: a directory outside every qube and outside
the home, holding a file, a subdirectory and a link. A test passes only if
the escape failed *and* the canary is exactly as it was (names, types,
modes, owners, contents, times), and nothing is mounted on or below it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SECRET = "host-canary-secret-7f3c"


@dataclass
class Canary:
    path: Path

    @property
    def secret(self) -> Path:
        return self.path / "secret"

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for root, dirs, files in os.walk(self.path):
            for name in sorted(dirs + files):
                p = Path(root) / name
                st = p.lstat()
                content = ""
                if stat.S_ISREG(st.st_mode):
                    content = hashlib.sha256(p.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(p)
                out[str(p.relative_to(self.path))] = (
                    stat.S_IFMT(st.st_mode),
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                    content,
                    st.st_mtime_ns,
                )
        st = self.path.lstat()
        out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, "", st.st_mtime_ns)
        return out

    def mounts(self) -> list[str]:
        text = Path("/proc/self/mountinfo").read_text()
        return [ln for ln in text.splitlines() if str(self.path) in ln]


@pytest.fixture
def canary():
    base = Path(tempfile.mkdtemp(prefix="qlite-canary-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    c = Canary(base)
    c.secret.write_text(SECRET + "\n")
    os.chmod(c.secret, 0o600)
    (base / "sub").mkdir(mode=0o700)
    (base / "sub" / "file").write_text("inner\n")
    (base / "link").symlink_to("secret")
    before = c.snapshot()
    try:
        yield c
        assert c.mounts() == [], f"something is mounted on the canary: {c.mounts()}"
        assert c.snapshot() == before, "the host canary changed"
    finally:
        for line in c.mounts():
            subprocess.run(["umount", "-l", line.split()[4]], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def as_root(home, qube: str, script: str, check: bool = False, timeout: float = 120):
    """SCRIPT run by root inside QUBE (the attacker)."""
    return home.run("run", "-u", "root", qube, "--", "sh", "-c", textwrap.dedent(script), check=check, timeout=timeout)


def as_user(home, qube: str, script: str, check: bool = False, timeout: float = 120):
    return home.run("run", qube, "--", "sh", "-c", textwrap.dedent(script), check=check, timeout=timeout)


def restart(home, qube: str) -> subprocess.CompletedProcess:
    """Shut QUBE down and start it again: the host lays out its volume then."""
    home.run("shutdown", "--wait", qube)
    return home.run("start", qube, check=False)


def volume_dir(home, qube: str) -> Path:
    out = subprocess.run(
        ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"qlite-{home.hash}-{qube}-private"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


@pytest.fixture
def attacker(home):
    """A fresh qube for one attack, removed (with --force) afterwards; its
    removal must work whatever the attack left in it."""
    name = f"atk{int(time.monotonic() * 1000) % 100000}"
    home.run("create", name, "--label", "red")
    home.run("start", name)
    yield name
    home.run("kill", name, check=False)
    proc = home.run("remove", "--force", name, check=False)
    assert proc.returncode == 0, f"removing the attacked qube failed: {proc.stderr}"
