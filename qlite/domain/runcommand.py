"""How a user's command starts in a qube, and how Ctrl-C reaches it. Pure.

**Not found, not executable.** Every runtime says it differently when the
command cannot be run: ``runsc exec`` exits 128 with a long line, catatonit
(a disposable's init) exits 1 with "failed to exec pid1", the VM agent has
its own words. So the command starts through a few lines of the qube's
``/bin/sh`` that look it up first and answer as podman and docker do: exit
127 with "executable file not found in $PATH" (or "no such file or
directory" for a path), 126 for a file that cannot be executed. Otherwise
the shell execs the command, which keeps its pid, its process group and its
exit status.

**Ctrl-C.** A command run in a container qube carries a random token in
its environment (``QLITE_RUN``). To signal it, qlite runs in the same qube,
as the same user, a script that signals every process carrying that token:
the command and what it started, as a terminal's Ctrl-C reaches the whole
foreground job. The host reads nothing back from the qube.
"""

from __future__ import annotations

import secrets
import signal

RUN_TOKEN_ENV = "QLITE_RUN"

EXEC_SHIM = r"""c=$1
case $c in
*/*) p=$c ;;
*)
  p=
  set -f; o=$IFS; IFS=:
  for d in $PATH; do
    if [ -f "${d:-.}/$c" ] && [ -x "${d:-.}/$c" ]; then p=${d:-.}/$c; break; fi
  done
  IFS=$o; set +f
  if [ -z "$p" ]; then printf 'qlite: %s: executable file not found in $PATH\n' "$c" >&2; exit 127; fi ;;
esac
if [ ! -e "$p" ]; then printf 'qlite: %s: no such file or directory\n' "$c" >&2; exit 127; fi
if [ -d "$p" ]; then printf 'qlite: %s: is a directory\n' "$c" >&2; exit 126; fi
if [ ! -x "$p" ]; then printf 'qlite: %s: permission denied (not an executable file)\n' "$c" >&2; exit 126; fi
exec "$@"
"""

# $1: the signal's name, $2: the token. Every process whose environment
# holds QLITE_RUN=<token> gets the signal (grep and kill are in every
# Debian template: grep is essential, kill is the shell's builtin). In a
# disposable the token is in the container's own environment, so the
# container's init and this script carry it too: both are skipped (init
# would pass the signal on a second time; grep is done before kill runs).
SIGNAL_SCRIPT = r"""for e in /proc/[0-9]*/environ; do
  p=${e#/proc/}; p=${p%/environ}
  if [ "$p" != 1 ] && [ "$p" != $$ ] && grep -qzx "QLITE_RUN=$2" "$e" 2>/dev/null; then
    kill -s "$1" "$p" 2>/dev/null
  fi
done
exit 0
"""


def shimmed(argv: list[str]) -> list[str]:
    """ARGV, started through the lookup shim in the qube's /bin/sh."""
    return ["/bin/sh", "-c", EXEC_SHIM, "qlite-run", *argv]


def new_run_token() -> str:
    return secrets.token_hex(12)


def signal_argv(token: str, sig: int) -> list[str]:
    """What to run as root in the qube to send SIG to the run TOKEN names."""
    return ["/bin/sh", "-c", SIGNAL_SCRIPT, "qlite-signal", signal.Signals(sig).name.removeprefix("SIG"), token]
