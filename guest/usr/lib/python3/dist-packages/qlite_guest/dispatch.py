"""/usr/lib/qlite/qubes-rpc-dispatch SERVICE [ARG]: what the broker runs in
the target qube. It finds the service's executable as Qubes' agent does
(SERVICE+ARG in every directory, then SERVICE in every directory) and
execs it with stdio and environment untouched; the argument, if any, is
also passed as argv[1], as in Qubes."""

from __future__ import annotations

import os
import stat
import sys

from qlite_guest.names import argument_problem, service_problem

DIRS_ENV = "QLITE_RPC_DIRS"
DEFAULT_DIRS = ("/run/qubes-rpc", "/usr/local/etc/qubes-rpc", "/etc/qubes-rpc")
EXIT_NO_SERVICE = 127


def service_dirs(env: dict[str, str] | os._Environ = os.environ) -> list[str]:
    raw = env.get(DIRS_ENV)
    return [d for d in raw.split(":") if d] if raw else list(DEFAULT_DIRS)


def _executable(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


def find_service(service: str, argument: str, dirs: list[str]) -> str | None:
    names = [f"{service}+{argument}", service] if argument else [service]
    for name in names:
        for directory in dirs:
            path = os.path.join(directory, name)
            if _executable(path):
                return path
    return None


def main(argv: list[str], env: dict[str, str] | os._Environ = os.environ) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: qubes-rpc-dispatch SERVICE [ARG]", file=sys.stderr)
        return EXIT_NO_SERVICE
    service, argument = argv[0], (argv[1] if len(argv) > 1 else "")
    problem = service_problem(service) or argument_problem(argument)
    if problem:
        print(f"qubes-rpc-dispatch: {problem}", file=sys.stderr)
        return EXIT_NO_SERVICE
    dirs = service_dirs(env)
    path = find_service(service, argument, dirs)
    if path is None:
        full = service + (f"+{argument}" if argument else "")
        print(f"qubes-rpc-dispatch: no such service {full} (looked in {':'.join(dirs)})", file=sys.stderr)
        return EXIT_NO_SERVICE
    try:
        os.execv(path, [path, *([argument] if argument else [])])
    except OSError as exc:
        print(f"qubes-rpc-dispatch: cannot run {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_NO_SERVICE
    return EXIT_NO_SERVICE  # not reached
