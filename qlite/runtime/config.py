"""Render qlite's containers.conf and runsc wrappers from runsc-config/."""

from __future__ import annotations

import os
import resource
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
    return Template(" ".join(lines)).substitute(
        PLATFORM=probe.platform, NETWORK=probe.network_flag
    )


def render_all(paths: Paths, probe: RuntimeProbe) -> dict[Path, str]:
    """Pure: every generated file and its content."""
    cfg = paths.runsc_config_dir
    wrapper_tpl = Template((cfg / "runsc-wrapper.in").read_text())
    files: dict[Path, str] = {}
    for mode in MODES:
        flags = render_flags((cfg / "flags" / mode).read_text(), probe)
        files[paths.runsc_wrapper(mode)] = wrapper_tpl.substitute(
            MODE=mode, RUNSC=probe.runsc, FLAGS=flags
        )
    files[paths.containers_conf] = Template((cfg / "containers.conf.in").read_text()).substitute(
        NOFILE=host_limit(resource.RLIMIT_NOFILE, NOFILE_CAP),
        RUN_DIR=str(paths.run_dir),
        WRAPPER_QUBE=str(paths.runsc_wrapper("qube")),
        WRAPPER_BUILD=str(paths.runsc_wrapper("build")),
    )
    return files


def write_runtime_config(paths: Paths, probe: RuntimeProbe) -> bool:
    """Write the generated files; True if anything changed."""
    changed = False
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    for path, content in render_all(paths, probe).items():
        try:
            if path.read_text() == content:
                continue
        except OSError:
            pass
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.chmod(tmp, 0o755 if path.name.startswith("runsc-") else 0o644)
        tmp.replace(path)
        changed = True
    return changed
