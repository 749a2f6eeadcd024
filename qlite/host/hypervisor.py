"""The processes of a VM qube and the control of its QEMU: the Hypervisor
seam (qlite.domain.context.Hypervisor).

A VM qube runs as a supervisor process (qlite.vm.supervisor) that owns
QEMU. qlite starts the supervisor and waits for its one-line answer on a
pipe; the supervisor starts QEMU so that QEMU dies with it. QMP goes
through qlite.engines.qemu, the one module that imports qemu.qmp.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from qlite.engines.qemu import Qmp

REAP_TIMEOUT_S = 30
PR_SET_PDEATHSIG = 1


class SupervisorBoot:
    """A supervisor that has been started and has not answered yet."""

    def __init__(self, proc: subprocess.Popen, ready_r: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._ready_r = ready_r

    def answer(self) -> str:
        """ "ok", or "error WHY"; "" if it died without a word. The
        supervisor bounds the wait (its boot timeout). After a failure the
        supervisor is reaped."""
        with os.fdopen(self._ready_r) as ready:
            answer = ready.readline().strip()
        if answer != "ok":
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=REAP_TIMEOUT_S)
        return answer


class QemuHost:
    def control(self, qmp_socket: Path, qube: str) -> Qmp:
        return Qmp(qmp_socket, qube)

    def start_supervisor(self, module: str, config: Path, log: Path) -> SupervisorBoot:
        """Run ``python -m MODULE CONFIG READY_FD`` in a session of its own,
        its output appended to LOG."""
        ready_r, ready_w = os.pipe()
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module, str(config), str(ready_w)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    pass_fds=(ready_w,),
                    start_new_session=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return SupervisorBoot(proc, ready_r)


def _die_with_parent() -> None:
    """In QEMU's child, before exec: SIGKILL when the supervisor dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start_qemu(argv: list[str], console: Path) -> subprocess.Popen:
    """Start QEMU (ARGV), its output appended to CONSOLE. It dies with the
    calling process, so that no QEMU outlives its supervisor."""
    with open(console, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=_die_with_parent, close_fds=True
        )
