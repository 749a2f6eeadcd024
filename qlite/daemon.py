"""``qlite daemon``: the RPC broker and its ask queue, the preloaded
disposables' pool keeper, and the device watcher with the reactions to
drives that come and go, for one qlite home.

The CLI starts it on demand (qlite/host/daemonctl.py); a systemd unit can
run ``qlite daemon run`` instead. It holds run/daemon.lock while it lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time

from qlite.aem.manager import AemManager
from qlite.core.lifecycle import Lifecycle
from qlite.core.poolkeeper import PoolKeeper
from qlite.core.qubes import QubeManager
from qlite.core.templates import TemplateManager
from qlite.devices.watcher import DeviceWatcher
from qlite.domain.context import Context
from qlite.errors import QliteError
from qlite.paths import Paths
from qlite.rpc.broker import DEFAULT_ASK_TIMEOUT_S, Broker
from qlite.served import server as fork_server


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
    ctx = Context(paths)
    am = AemManager(ctx, TemplateManager(ctx))
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


def device_event(ctx: Context, action: str, name: str) -> None:
    """A drive came or went (or events were lost: "resync"): undo what it
    had, stop the qubes paired with a drive that was yanked, and start,
    fresh, the halted qubes paired with one that appeared."""
    qm = QubeManager(ctx)
    devices = qm.devices
    if action == "resync":
        removed, added = devices.gone(), sorted(d.name for d in devices.devices())
    elif action == "remove":
        removed, added = [name], []
    elif action in ("add", "change"):
        removed, added = [], [name]
    else:
        return
    for dev in removed:
        stopped = devices.on_removed(dev)
        for qube in stopped:
            with contextlib.suppress(QliteError):
                qm.kill(qube)
        if stopped:
            log(
                f"{dev} was removed without eject: stopped {', '.join(stopped)}; "
                "writes not yet on the drive may be lost"
            )
    for dev in added:
        started = []
        for qube in devices.on_added(dev):
            try:
                qm.start(qube)
                started.append(qube)
            except QliteError as exc:
                devices.log_start_failed(dev, qube, str(exc))
        if started:
            log(f"{dev} appeared: started {', '.join(started)}")


def run(paths: Paths) -> int:
    paths.ensure()
    lock = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another qlite daemon already runs for this home")
        return 1
    paths.daemon_pidfile.write_text(str(os.getpid()))
    # Forked before any thread starts; it must not keep our lock.
    served = fork_server.start(paths, close=(lock,))
    broker = Broker(paths, Lifecycle, ask_timeout=ask_timeout(), log=log)

    def stop(_signum: int, _frame: object) -> None:
        broker.stopping.set()
        with contextlib.suppress(OSError):
            os.write(broker._wake_w, b"x")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving {paths.home} (ask timeout {broker.ask_timeout:.0f}s)")
    aem_at_start(paths)
    PoolKeeper(paths, log).start()
    try:

        def on_event(action: str, name: str) -> None:
            ctx = Context(paths)
            ctx.on_warning = lambda m: log(f"devices: {m}")
            try:
                device_event(ctx, action, name)
            finally:
                ctx.store.close()

        DeviceWatcher(on_event, log).start()
    except Exception as exc:  # noqa: BLE001 - RPC must go on without device events
        log(f"device watcher not started: {exc}")
    try:
        broker.serve()
    finally:
        fork_server.stop(paths, served)
        with contextlib.suppress(OSError):
            paths.daemon_pidfile.unlink()
        os.close(lock)
        log("stopped")
    return 0
