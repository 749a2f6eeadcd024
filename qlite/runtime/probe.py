"""Probe what runsc can do on this host: its version, the best platform,
and whether gVisor's netstack works on this kernel.

runsc releases before 2024-11 refuse netstack on kernels >= 6.11 ("cannot
run with network enabled in root network namespace"), so this is measured,
not assumed. The probe runs a tiny sandbox on the host's root filesystem
(read-only) inside a fresh network namespace, exactly as podman would.
"""

from __future__ import annotations

import json
import os
import platform as pyplatform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from qlite.errors import QliteError
from qlite.runtime.command import ToolTimedOut, run_tool

PLATFORMS = ("systrap", "ptrace")  # preferred first; kvm is opt-in
PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class RuntimeProbe:
    runsc: str
    version: str
    platform: str
    netstack: bool
    netstack_error: str
    key: str

    @property
    def network_flag(self) -> str:
        return "sandbox" if self.netstack else "host"

    @property
    def netpath(self) -> str:
        """How a networked qube reaches its network (the JSON ``netpath``)."""
        return "netstack" if self.netstack else "host-netns"


def find_runsc() -> str | None:
    return (
        os.environ.get("QLITE_RUNSC")
        or shutil.which("runsc")
        or ("/usr/bin/runsc" if os.path.exists("/usr/bin/runsc") else None)
    )


def probe_key(runsc: str) -> str:
    st = os.stat(runsc)
    return f"{runsc}:{st.st_size}:{int(st.st_mtime)}:{pyplatform.release()}"


def bundle_spec(args: list[str]) -> dict:
    """A minimal OCI spec running ARGS on the host's / mounted read-only."""
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
        },
        "root": {"path": "/", "readonly": True},
        "hostname": "qlite-probe",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
        },
    }


def run_sandbox(runsc: str, flags: list[str], args: list[str]) -> tuple[int, str]:
    """Run ARGS in a throwaway sandbox in a fresh network namespace."""
    with tempfile.TemporaryDirectory(prefix="qlite-probe-") as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(bundle_spec(args)))
        cmd = [
            "unshare",
            "--net",
            runsc,
            "--root",
            str(Path(tmp) / "state"),
            *flags,
            "run",
            "--bundle",
            str(bundle),
            f"qlite-probe-{os.getpid()}",
        ]
        try:
            proc = run_tool(cmd, "probing runsc", PROBE_TIMEOUT_S, check=False)
        except ToolTimedOut:
            return 124, f"timed out after {PROBE_TIMEOUT_S}s"
        except QliteError as exc:  # cannot run at all: as a shell reports it
            return 127, str(exc)
        return proc.returncode, (proc.stderr or proc.stdout).strip()


def runsc_version(runsc: str) -> str:
    try:
        out = run_tool([runsc, "--version"], "asking runsc its version", 10, check=False).stdout
    except QliteError:
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("runsc version ").strip() or "unknown"


def probe(cache: Path | None = None, force: bool = False) -> RuntimeProbe | None:
    """Probe runsc (cached per runsc binary and kernel). None if not installed."""
    runsc = find_runsc()
    if not runsc:
        return None
    key = probe_key(runsc)
    if cache and not force:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return RuntimeProbe(**data)
        except (OSError, ValueError, TypeError):
            pass
    chosen = ""
    for plat in _platform_candidates():
        rc, _ = run_sandbox(runsc, [f"--platform={plat}", "--network=none"], ["/bin/true"])
        if rc == 0:
            chosen = plat
            break
    netstack, err = False, "no working platform"
    if chosen:
        rc, out = run_sandbox(runsc, [f"--platform={chosen}", "--network=sandbox"], ["/bin/true"])
        netstack, err = rc == 0, "" if rc == 0 else _last_line(out)
    result = RuntimeProbe(
        runsc=runsc,
        version=runsc_version(runsc),
        platform=chosen,
        netstack=netstack,
        netstack_error=err,
        key=key,
    )
    if cache and chosen:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result)))
        tmp.replace(cache)
    return result


def _platform_candidates() -> tuple[str, ...]:
    forced = os.environ.get("QLITE_RUNSC_PLATFORM")
    return (forced,) if forced else PLATFORMS


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "failed"
