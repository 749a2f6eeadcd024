"""Base root filesystems for templates, made with mmdebstrap.

A template whose folder has a ``rootfs.conf`` starts from a Debian rootfs
built here, never from a registry image. The mirror is the one the host's
apt already uses, so no mirror host name lives in the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qlite.engines.base import Progress
from qlite.errors import EngineError, InvalidValue
from qlite.progress import run_streamed

DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class RootfsConfig:
    suite: str
    variant: str = "minbase"
    components: tuple[str, ...] = ("main",)
    include: tuple[str, ...] = ()


def parse_rootfs_conf(text: str) -> RootfsConfig:
    """Parse ``key = value`` lines; '#' starts a comment."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidValue(f"rootfs.conf:{number}: expected 'key = value'")
        values[key.strip()] = value.strip()
    unknown = set(values) - {"suite", "variant", "components", "include"}
    if unknown:
        raise InvalidValue(f"rootfs.conf: unknown key {sorted(unknown)[0]!r}")
    for key in ("suite", "variant", "components"):
        if key in values and not values[key]:
            raise InvalidValue(f"rootfs.conf: {key!r} is empty")
    if not values.get("suite"):
        raise InvalidValue("rootfs.conf: 'suite' is required")
    return RootfsConfig(
        suite=values["suite"],
        variant=values.get("variant", "minbase"),
        components=tuple(values.get("components", "main").split()),
        include=tuple(p for p in re.split(r"[\s,]+", values.get("include", "")) if p),
    )


def host_debian_uris(
    sources_dir: Path = Path("/etc/apt/sources.list.d"), sources_list: Path = Path("/etc/apt/sources.list")
) -> dict[str, str]:
    """Map suite -> URI from the host's apt entries (deb822 and one-line)."""
    found: dict[str, str] = {}
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = _deb822(stanza)
            if "deb" not in fields.get("Types", "").split():
                continue
            if fields.get("Enabled", "yes").strip().lower() == "no":
                continue
            uris = fields.get("URIs", "").split()
            for suite in fields.get("Suites", "").split():
                if uris:
                    found.setdefault(suite, uris[0])
    if sources_list.is_file():
        for line in sources_list.read_text(errors="replace").splitlines():
            parts = [p for p in re.sub(r"\[[^\]]*\]", "", line).split() if p]
            if len(parts) >= 3 and parts[0] == "deb":
                found.setdefault(parts[2], parts[1])
    return found


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        fields[key] = value.strip()
    return fields


def mirror_lines(cfg: RootfsConfig, uris: dict[str, str]) -> list[str]:
    """One-line apt sources for mmdebstrap: the suite, its -updates and its
    -security entries, from the host's mirrors where it has them."""
    comps = " ".join(cfg.components)
    main = uris.get(cfg.suite, DEFAULT_MIRROR)
    lines = [f"deb {main} {cfg.suite} {comps}"]
    lines.append(f"deb {uris.get(cfg.suite + '-updates', main)} {cfg.suite}-updates {comps}")
    security = uris.get(f"{cfg.suite}-security")
    if security:
        lines.append(f"deb {security} {cfg.suite}-security {comps}")
    return lines


def mmdebstrap_command(cfg: RootfsConfig, target: str, uris: dict[str, str]) -> list[str]:
    cmd = ["mmdebstrap", f"--variant={cfg.variant}", "--format=tar"]
    if cfg.include:
        cmd.append("--include=" + ",".join(cfg.include))
    cmd += [cfg.suite, target, *mirror_lines(cfg, uris)]
    return cmd


def build_rootfs(cfg: RootfsConfig, target: Path, progress: Progress) -> None:
    cmd = mmdebstrap_command(cfg, str(target), host_debian_uris())
    progress(f"mmdebstrap {cfg.variant} {cfg.suite} (+{len(cfg.include)} packages)")
    try:
        code, last = run_streamed(cmd, progress)
    except FileNotFoundError:
        raise EngineError("mmdebstrap is not installed: run setup.sh (or apt install mmdebstrap)") from None
    if code != 0:
        raise EngineError(f"mmdebstrap failed: {last}")
