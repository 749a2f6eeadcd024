"""Policy files on disk: the rules for their names, and the one reader.

``read_policy_path`` is the only function of the policy engine that touches
the filesystem. Everything else in ``qlite.rpc.policy`` is pure.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qlite.paths import Paths

POLICY_SUFFIX = ".policy"
# Qubes' rule: digits, lowercase latin letters, '_', '.' and '-' only, so
# that `ls` in any locale lists the files in the order they are read.
FILE_NAME_RE = re.compile(r"[0-9a-z_.-]+\.policy")
MAX_POLICY_BYTES = 1024 * 1024


def policy_dirs(paths: Paths) -> list[Path]:
    """Where policy files are read from, in order: shipped first; the
    admin's files replace same-named shipped ones."""
    return [paths.shipped_policy_dir, paths.policy_dir]


def is_policy_candidate(name: str) -> bool:
    """Whether a directory entry is a policy file at all (else it is ignored).

    Hidden files and files not ending in ``.policy`` are skipped, so editor
    backups and swap files never break the policy.
    """
    return name.endswith(POLICY_SUFFIX) and not name.startswith(".")


def valid_file_name(name: str) -> bool:
    """Whether a policy candidate's name is allowed (else the policy is broken)."""
    return is_policy_candidate(name) and FILE_NAME_RE.fullmatch(name) is not None


def c_locale_sorted(names: Iterable[str]) -> list[str]:
    """NAMES in the C locale's order: by their bytes, whatever the user's locale."""
    return sorted(names, key=lambda name: name.encode("utf-8", "surrogateescape"))


def read_policy_path(path: str) -> tuple[str, str]:
    """Read one policy file, or list one policy directory.

    For a file: return its text (UTF-8) and its resolved path.
    For a path ending in '/': return the names of the directory's policy
    candidates (see ``is_policy_candidate``), one per line, unsorted and
    unvalidated, and the directory's resolved path.

    Raises OSError or ValueError; the parser turns both into a
    PolicySyntaxError that names the file and line at fault.
    """
    if path.endswith("/"):
        directory = os.path.realpath(path)
        with os.scandir(directory) as entries:
            names = [
                # A newline would split the listing; '?' keeps the name invalid.
                entry.name.replace("\n", "?")
                for entry in entries
                if is_policy_candidate(entry.name) and entry.is_file()
            ]
        return "\n".join(names), directory
    resolved = os.path.realpath(path)
    # O_NONBLOCK: a FIFO planted in the policy directory must not hang the broker.
    fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_POLICY_BYTES:
        raise ValueError(f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        return data.decode("utf-8"), resolved
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start})") from None
