"""Anti-evil-maid with a real swtpm (started here, on a socket this test
owns), real tpm2-tools, the real engine's template images and copies of
measured binaries (never the host's own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SECRET = "the cat is called Mungo\n"


@pytest.fixture(scope="module")
def swtpm(home):
    state = home.path / "swtpm"
    state.mkdir()
    sock = state / "tpm.sock"
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--flags",
            "startup-clear",
            "--server",
            f"type=unixio,path={sock}",
            "--ctrl",
            f"type=unixio,path={sock}.ctrl",
        ],  # where the TCTI looks for it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists(), "swtpm did not start"
    yield f"swtpm:path={sock}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def aem(home, swtpm):
    """The home measures a copy of runsc; the TPM is the test's swtpm."""
    binaries = home.path / "measured"
    binaries.mkdir()
    shutil.copy2(shutil.which("runsc"), binaries / "runsc")
    (home.path / "aem").mkdir(exist_ok=True)
    (home.path / "aem" / "components.json").write_text(json.dumps({"binary:runsc": str(binaries / "runsc")}))
    (home.path / "policy.d").mkdir(exist_ok=True)
    (home.path / "secret.txt").write_text(SECRET)
    home.run("create", "work", "--label", "blue", "--netvm", "none")
    return home


def with_tpm(swtpm: str) -> dict[str, str]:
    return {"QLITE_TPM_TCTI": swtpm}


def verify(home, env, *extra: str):
    return home.run("aem", "verify", *extra, check=False, env=env)


def changed_components(proc) -> list[str]:
    return [ln.split()[1].rstrip(":") for ln in proc.stderr.splitlines() if ln.startswith("CHANGED ")]


def flip_byte(path: Path, offset: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_seal_and_verify_round_trip_through_the_tpm(aem, swtpm):
    env = with_tpm(swtpm)
    aem.run("aem", "seal", "--secret-file", str(aem.path / "secret.txt"), env=env)
    ok = verify(aem, env)
    assert ok.returncode == 0 and ok.stdout == SECRET
    # The TPM's PCR 23 holds exactly the chain qlite computes.
    log = json.loads(aem.run("aem", "log", "--json", env=env).stdout)
    assert [m["name"] for m in log["measurements"]][:6] == [
        "qlite",
        "binary:runsc",
        "binary:podman",
        "binary:qemu",
        "runsc-config",
        "policy",
    ]
    assert "template:debian-12" in [m["name"] for m in log["measurements"]]
    pcr = subprocess.run(
        ["tpm2_pcrread", "sha256:23"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TPM2TOOLS_TCTI": swtpm},
        check=True,
    ).stdout
    assert log["chain"].lower() in pcr.lower().replace("0x", "")


def test_a_flipped_byte_in_a_measured_binary_is_named(aem, swtpm):
    env = with_tpm(swtpm)
    runsc = aem.path / "measured" / "runsc"
    original = runsc.read_bytes()
    flip_byte(runsc)
    try:
        bad = verify(aem, env)
        assert bad.returncode == 1 and SECRET.strip() not in bad.stdout
        assert changed_components(bad) == ["binary:runsc"]
    finally:
        runsc.write_bytes(original)
    assert verify(aem, env).stdout == SECRET


def test_an_edited_policy_is_named(aem, swtpm):
    env = with_tpm(swtpm)
    policy = aem.path / "policy.d" / "50-evil.policy"
    policy.write_text("qubes.VMShell * @anyvm @anyvm allow\n")
    try:
        bad = verify(aem, env)
        assert bad.returncode == 1 and changed_components(bad) == ["policy"]
    finally:
        policy.unlink()
    assert verify(aem, env).returncode == 0


def test_a_template_image_replaced_outside_qlite_is_named_and_refused(aem, swtpm):
    env = with_tpm(swtpm)
    tpl = aem.json("template", "list")[0]
    tag = f"localhost/qlite-home-{aem.hash}/{tpl['name']}:{tpl['current_revision']}"
    original = tpl["image_id"]
    images = subprocess.run(
        ["podman", "images", "--no-trunc", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    other = next(i.removeprefix("sha256:") for i in images if i.removeprefix("sha256:") != original)
    subprocess.run(["podman", "tag", other, tag], check=True, capture_output=True, timeout=60)
    try:
        bad = verify(aem, env)
        assert bad.returncode == 1 and changed_components(bad) == [f"template:{tpl['name']}"]
        refused = aem.run("start", "work", check=False)
        assert refused.returncode != 0 and "replaced outside qlite" in refused.stderr
        assert next(r for r in aem.json("ls") if r["name"] == "work")["state"] == "Halted"
    finally:
        subprocess.run(["podman", "tag", original, tag], check=True, capture_output=True, timeout=60)
    assert verify(aem, env).returncode == 0
    aem.run("start", "work")
    aem.run("shutdown", "work")


def test_reseal_after_a_legitimate_update(aem, swtpm):
    env = with_tpm(swtpm)
    runsc = aem.path / "measured" / "runsc"
    original = runsc.read_bytes()
    flip_byte(runsc, 8192)  # "an update"
    try:
        assert verify(aem, env).returncode == 1
        no = aem.run("aem", "reseal", check=False, env=env)  # not at a terminal, no --yes
        assert no.returncode != 0
        aem.run("aem", "reseal", "--yes", env=env)
        assert verify(aem, env).stdout == SECRET
    finally:
        runsc.write_bytes(original)
    assert changed_components(verify(aem, env)) == ["binary:runsc"]
    aem.run("aem", "reseal", "--yes", env=env)
    assert verify(aem, env).stdout == SECRET


def test_enforcement_holds_qubes_until_the_user_confirms(aem, swtpm):
    env = with_tpm(swtpm)
    aem.run("aem", "enforce", env=env)
    try:
        (aem.path / "run" / "aem-verified").unlink(missing_ok=True)
        held = aem.run("start", "work", check=False, env=env)
        assert held.returncode != 0 and "qlite aem verify" in held.stderr
        disp = aem.run("run", "--disposable", "--", "true", check=False, env=env)
        assert disp.returncode != 0 and "anti-evil-maid" in disp.stderr
        assert verify(aem, env, "--yes").returncode == 0
        aem.run("start", "work", env=env)
        aem.run("shutdown", "work", env=env)
    finally:
        aem.run("aem", "relax", env=env)


def test_without_a_tpm_a_passphrase_seals_and_a_wrong_one_is_refused(aem, tmp_path):
    env = {"QLITE_TPM_TCTI": "none"}
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("incorrect horse\n")
    nopass = aem.run("aem", "seal", "--secret-file", str(aem.path / "secret.txt"), check=False, env=env)
    assert nopass.returncode != 0 and "passphrase" in nopass.stderr
    sealed = aem.run(
        "aem",
        "seal",
        "--secret-file",
        str(aem.path / "secret.txt"),
        "--passphrase-file",
        str(tmp_path / "pass"),
        env=env,
    )
    assert "weaker than a TPM" in sealed.stderr
    assert verify(aem, env, "--passphrase-file", str(tmp_path / "pass")).stdout == SECRET
    wrong = verify(aem, env, "--passphrase-file", str(tmp_path / "wrong"))
    assert wrong.returncode == 126 and "wrong passphrase" in wrong.stderr and SECRET.strip() not in wrong.stdout
    runsc = aem.path / "measured" / "runsc"
    original = runsc.read_bytes()
    flip_byte(runsc)
    try:
        bad = verify(aem, env, "--passphrase-file", str(tmp_path / "pass"))
        assert bad.returncode == 1 and changed_components(bad) == ["binary:runsc"]
    finally:
        runsc.write_bytes(original)
