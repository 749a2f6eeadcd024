"""Render qlite's containers.conf, the runsc wrappers and the host's
podman drop-in from runsc-config/."""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
from pathlib import Path
from string import Template

from qlite.paths import Paths
from qlite.runtime.probe import RuntimeProbe

MODES = ("qube", "build")
# Cap what we ask for: enough for any qube, never above the host's hard limit.
NOFILE_CAP = 1048576


def host_limit(which: int, cap: int) -> int:
    _soft, hard = resource.getrlimit(which)
    if hard == resource.RLIM_INFINITY:
        return cap
    return min(hard, cap)


def render_flags(template_text: str, probe: RuntimeProbe) -> str:
    """The flag line of a runsc-config/flags file, with the probe filled in."""
    stripped = (ln.strip() for ln in template_text.splitlines())
    lines = [ln for ln in stripped if ln and not ln.startswith("#")]
    return Template(" ".join(lines)).substitute(PLATFORM=probe.platform, NETWORK=probe.network_flag)


def render_all(paths: Paths, probe: RuntimeProbe) -> dict[Path, str]:
    """Pure: every generated file and its content."""
    cfg = paths.runsc_config_dir
    wrapper_tpl = Template((cfg / "runsc-wrapper.in").read_text())
    files: dict[Path, str] = {}
    for mode in MODES:
        flags = render_flags((cfg / "flags" / mode).read_text(), probe)
        files[paths.runsc_wrapper(mode)] = wrapper_tpl.substitute(MODE=mode, RUNSC=probe.runsc, FLAGS=flags)
    files[paths.containers_conf] = Template((cfg / "containers.conf.in").read_text()).substitute(
        NOFILE=host_limit(resource.RLIMIT_NOFILE, NOFILE_CAP),
        RUN_DIR=str(paths.run_dir),
        WRAPPER_QUBE=str(paths.runsc_wrapper("qube")),
        WRAPPER_BUILD=str(paths.runsc_wrapper("build")),
    )
    return files


def render_dropin(paths: Paths, network: bool) -> str:
    """Pure: the host's podman drop-in. It registers qlite's runtimes and,
    with NETWORK, makes netavark the host's network backend (the one qlite's
    own service uses), so both see the same networks."""
    return Template((paths.runsc_config_dir / "50-qlite.conf.in").read_text()).substitute(
        NETWORK="" if network else "# ",
        WRAPPER_QUBE=str(paths.runsc_wrapper("qube")),
        WRAPPER_BUILD=str(paths.runsc_wrapper("build")),
    )


def write_file(path: Path, content: str, mode: int) -> bool:
    """Replace PATH with CONTENT atomically; False if it already held it.
    Several homes may write a machine-wide file at once: each writes its own
    temporary file, and the last rename wins with identical content."""
    try:
        if path.read_text() == content:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return True


def write_runtime_config(paths: Paths, probe: RuntimeProbe) -> bool:
    """Write the generated files; True if anything changed."""
    changed = False
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    for path, content in render_all(paths, probe).items():
        changed |= write_file(path, content, 0o755 if path.name.startswith("runsc-") else 0o644)
    return changed
