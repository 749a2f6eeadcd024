"""``qlite daemon``: the RPC broker and its ask queue, and the device
watcher, for one qlite home.

The CLI starts it on demand (qlite/rpc/daemonctl.py); a systemd unit can
run ``qlite daemon run`` instead. It holds run/daemon.lock while it lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time

from qlite.paths import Paths
from qlite.rpc.broker import DEFAULT_ASK_TIMEOUT_S, Broker


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} qlite daemon[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def ask_timeout() -> float:
    try:
        value = float(os.environ.get("QLITE_ASK_TIMEOUT", DEFAULT_ASK_TIMEOUT_S))
    except ValueError:
        return DEFAULT_ASK_TIMEOUT_S
    return value if value > 0 else DEFAULT_ASK_TIMEOUT_S


def aem_at_start(paths: Paths) -> None:
    """With anti-evil-maid enforced and a TPM seal, check the measurements
    as the daemon starts, and say in its log what the user must do."""
    from qlite.aem.manager import AemManager  # noqa: PLC0415
    from qlite.core.context import Context  # noqa: PLC0415
    from qlite.errors import QliteError  # noqa: PLC0415

    am = AemManager(Context(paths))
    try:
        if not am.enforced() or not am.sealed_path.exists() or am._load().get("mode") != "tpm":
            return
        result = am.verify()
    except QliteError as exc:
        log(f"anti-evil-maid: could not verify: {exc}; qubes stay held")
        return
    if result.ok:
        log("anti-evil-maid: measurements match; qubes are held until you confirm with 'qlite aem verify'")
    else:
        names = ", ".join(n for n, _o, _c in result.changes) or result.detail
        log(f"anti-evil-maid: VERIFICATION FAILED ({names}); qubes stay held")


def run(paths: Paths) -> int:
    paths.ensure()
    lock = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another qlite daemon already runs for this home")
        return 1
    paths.daemon_pidfile.write_text(str(os.getpid()))
    broker = Broker(paths, ask_timeout=ask_timeout(), log=log)

    def stop(_signum: int, _frame: object) -> None:
        broker.stopping.set()
        with contextlib.suppress(OSError):
            os.write(broker._wake_w, b"x")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving {paths.home} (ask timeout {broker.ask_timeout:.0f}s)")
    aem_at_start(paths)
    from qlite.core.preload import PoolKeeper  # noqa: PLC0415

    PoolKeeper(paths, log).start()
    try:
        from qlite.devices.watcher import DeviceWatcher  # noqa: PLC0415

        DeviceWatcher(paths, log).start()
    except Exception as exc:  # noqa: BLE001 - RPC must go on without device events
        log(f"device watcher not started: {exc}")
    try:
        broker.serve()
    finally:
        with contextlib.suppress(OSError):
            paths.daemon_pidfile.unlink()
        os.close(lock)
        log("stopped")
    return 0
