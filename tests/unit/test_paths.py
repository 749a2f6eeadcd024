"""Every path in one place; QLITE_HOME relocates all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlite.paths import DEFAULT_HOME, DEFAULT_POLICY_DIR, HOST_LIB_DIR, PODMAN_DROPIN, Paths


def test_from_env_default(monkeypatch):
    monkeypatch.delenv("QLITE_HOME", raising=False)
    p = Paths.from_env()
    assert p.home == DEFAULT_HOME.resolve() and p.is_default_install
    assert p.policy_dir == DEFAULT_POLICY_DIR


@pytest.mark.parametrize("env", [None, "", "/var/lib/qlite", "/var/lib/qlite/", "/var/lib/../lib/qlite", "link"])
def test_the_default_install_is_the_same_however_it_is_named(monkeypatch, tmp_path, env):
    """The daemon is started with QLITE_HOME set even on a default install:
    nothing may depend on whether the variable names the default."""
    if env == "link":
        (tmp_path / "link").symlink_to(DEFAULT_HOME)
        env = str(tmp_path / "link")
    if env is None:
        monkeypatch.delenv("QLITE_HOME", raising=False)
    else:
        monkeypatch.setenv("QLITE_HOME", env)
    p = Paths.from_env()
    assert p.is_default_install
    assert p.policy_dir == DEFAULT_POLICY_DIR
    assert p.home_hash == Paths(DEFAULT_HOME.resolve()).home_hash


def test_any_other_home_uses_its_own_policy_dir(tmp_path):
    assert Paths(tmp_path / "h").policy_dir == tmp_path / "h" / "policy.d"
    assert not Paths(tmp_path / "h").is_default_install


def test_from_env_relocates_everything(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QLITE_HOME", "rel/home")
    p = Paths.from_env()
    assert p.home == (tmp_path / "rel" / "home").resolve() and not p.is_default_install
    for path in (
        p.db,
        p.run_dir,
        p.log_dir,
        p.podman_sock,
        p.podman_pidfile,
        p.podman_log,
        p.containers_conf,
        p.probe_file,
        p.service_lock,
        p.rpc_log,
        p.policy_dir,
    ):
        assert path.is_absolute()
        assert p.home in path.parents
    assert p.podman_sock == p.home / "run" / "podman.sock"
    assert p.rpc_log == p.home / "log" / "rpc.jsonl"
    assert p.policy_dir == p.home / "policy.d"
    # Machine-wide, whatever the home: the host's podman runs every home's
    # containers through the same runtimes.
    assert p.runsc_wrapper("qube") == HOST_LIB_DIR / "runsc-qube"
    assert p.podman_dropin == PODMAN_DROPIN


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("/var/lib/qlite", "/var/lib/qlite", True),
        ("/var/lib/qlite", "/var/lib/qlite2", False),
        ("/tmp/h1", "/tmp/h2", False),
    ],
)
def test_home_hash(a, b, same):
    ha, hb = Paths(Path(a)).home_hash, Paths(Path(b)).home_hash
    assert len(ha) == 10 and int(ha, 16) >= 0
    assert (ha == hb) is same


def test_ensure(tmp_path):
    p = Paths(tmp_path / "h")
    p.ensure()
    assert p.run_dir.is_dir() and p.log_dir.is_dir()
    assert p.home.stat().st_mode & 0o777 == 0o711


def test_shipped_data_exists():
    p = Paths(Path("/nowhere"))
    assert (p.runsc_config_dir / "containers.conf.in").is_file()
    assert (p.runsc_config_dir / "runsc-wrapper.in").is_file()
    assert (p.images_dir / "debian-12" / "Containerfile").is_file()
