"""The podman engine: podman-py against a podman service that qlite owns.

qlite starts ``podman system service`` itself, on a socket in its home and
with a containers.conf of its own (CONTAINERS_CONF); the host's podman is
extended only by the drop-in of qlite.runtime.hostpodman. Builds and imports run the podman CLI with
the same configuration, because they stream progress and need
``--isolation=chroot`` (runsc cannot run buildah's RUN steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from qlite.engines.base import (
    GONE_RE,
    Attachment,
    ContainerInfo,
    ContainerSpec,
    ImageInfo,
    NetworkInfo,
    Progress,
    Stdio,
    VolumeInfo,
    change_list,
    export_through_container,
    has_labels,
    label_selectors,
)
from qlite.engines.hijack import hijack
from qlite.engines.stream import FrameDecoder, pump, pump_process
from qlite.errors import EngineError, EngineUnavailable
from qlite.paths import Paths
from qlite.progress import file_lock, run_streamed
from qlite.runtime.config import write_runtime_config
from qlite.runtime.probe import RuntimeProbe, probe

if TYPE_CHECKING:  # podman-py loads on the first call to the service
    from podman.api.client import APIClient, APIResponse

IDLE_TIMEOUT_S = 300
START_TIMEOUT_S = 20
# How long a container's conmon may take to record its exit after the sandbox stopped.
CONMON_EXIT_TIMEOUT_S = 10
# How long a container may go on running after its output stream ended.
STREAM_GRACE_S = 5.0
HIJACK_PREFIX = "/v4.0.0/libpod"
# The runtime qlite's containers.conf makes the default for qubes.
QUBE_RUNTIME = "qlite-runsc"
# The users of qlite's templates, by name, as runsc exec takes them.
KNOWN_USERS = {"root": "0:0", "user": "1000:1000"}
USER_RE = re.compile(r"[0-9]{1,9}(:[0-9]{1,9})?")
# A listing that failed because an object went away while it was listed.
VANISHED_RE = re.compile(r"no (such|volume with name|container with|network with)", re.IGNORECASE)
LIST_ATTEMPTS = 5
T = TypeVar("T")


def gone(resp: APIResponse) -> bool:
    """True if a failed removal says that its object no longer exists."""
    return resp.status_code >= 500 and GONE_RE.search(resp.text or "") is not None


# --------------------------------------------------------------------------
# Pure translation of a ContainerSpec into podman's specgen.


def specgen(spec: ContainerSpec) -> dict[str, Any]:
    """The libpod /containers/create body for SPEC."""
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "command": list(spec.command),
        "labels": dict(spec.labels),
        "read_only_filesystem": spec.read_only,
        "init": spec.init,
        "stdin": spec.stdin_open,
        "terminal": spec.tty,
        "mounts": [],
        "volumes": [],
        "rlimits": [],
    }
    if spec.hostname:
        body["hostname"] = spec.hostname
    if spec.dns:
        body["dns_server"] = list(spec.dns)
    if spec.user:
        body["user"] = spec.user
    if spec.workdir:
        body["work_dir"] = spec.workdir
    if spec.env:
        body["env"] = dict(spec.env)
    if spec.runtime:
        body["oci_runtime"] = spec.runtime
    for m in spec.mounts:
        if m.type == "volume":
            opts = ["ro" if m.read_only else "rw", *m.options]
            body["volumes"].append({"Name": m.source, "Dest": m.target, "Options": opts})
        elif m.type == "bind":
            opts = ["rbind", "ro" if m.read_only else "rw", *m.options]
            body["mounts"].append({"destination": m.target, "type": "bind", "source": m.source, "options": opts})
        elif m.type == "tmpfs":
            opts = ["rw", "nosuid", "nodev", *m.options]
            body["mounts"].append({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        else:
            raise ValueError(f"unknown mount type {m.type!r}")
    if spec.network == "none":
        body["netns"] = {"nsmode": "none"}
    else:
        body["netns"] = {"nsmode": "bridge"}
        body["Networks"] = {spec.network: {}}
    limits: dict[str, Any] = {}
    if spec.memory_mib:
        limits["memory"] = {"limit": spec.memory_mib * 1024 * 1024}
    if spec.vcpus:
        period = 100_000
        limits["cpu"] = {"period": period, "quota": spec.vcpus * period}
    if spec.pids_limit:
        limits["pids"] = {"limit": spec.pids_limit}
    if limits:
        body["resource_limits"] = limits
    return body


def label_filters(labels: dict[str, str]) -> str:
    return json.dumps({"label": label_selectors(labels)})


# --------------------------------------------------------------------------
# The service qlite owns.


class PodmanService:
    """Start, find and stop qlite's own ``podman system service``."""

    def __init__(self, paths: Paths, probe_result: RuntimeProbe | None = None) -> None:
        self.paths = paths
        self._probe = probe_result

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.paths.containers_conf)
        env["TMPDIR"] = str(self.tmp_dir)
        return env

    @property
    def tmp_dir(self) -> Path:
        """The service's temporary files (see image_copy_tmp_dir)."""
        return self.paths.run_dir / "tmp"

    def runtime_probe(self) -> RuntimeProbe:
        if self._probe is None:
            self._probe = probe(self.paths.probe_file)
        if self._probe is None:
            raise EngineUnavailable("runsc is not installed: run setup.sh (or apt install runsc)")
        if not self._probe.platform:
            raise EngineUnavailable("runsc cannot start a sandbox on this host: run 'qlite doctor' for details")
        return self._probe

    def alive(self) -> bool:
        return _ping(str(self.paths.podman_sock))

    def pid(self) -> int | None:
        try:
            pid = int(self.paths.podman_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            return None
        if b"service" in cmdline and str(self.paths.podman_sock).encode() in b" ".join(cmdline):
            return pid
        return None

    def ensure(self) -> None:
        """Make sure the service runs with the current generated config."""
        self.paths.ensure()
        if not shutil.which("podman"):
            raise EngineUnavailable("podman is not installed: run setup.sh (or apt install podman)")
        result = self.runtime_probe()
        self.tmp_dir.mkdir(exist_ok=True)
        with file_lock(self.paths.service_lock):
            changed = write_runtime_config(self.paths, result)
            if self.alive() and not changed:
                return
            # A service of ours that answers with an old config, or does not
            # answer at all (hung or stopped), is replaced, never doubled.
            self._stop_locked()
            self._start_locked()

    def _start_locked(self) -> None:
        podman = shutil.which("podman") or "podman"
        sock = self.paths.podman_sock
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        log = open(self.paths.podman_log, "ab")
        try:
            proc = subprocess.Popen(
                [podman, "system", "service", f"--time={IDLE_TIMEOUT_S}", f"unix://{sock}"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        self.paths.podman_pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EngineUnavailable(
                    f"the podman service exited at start (code {proc.returncode}); see {self.paths.podman_log}"
                )
            if _ping(str(sock)):
                return
            time.sleep(0.05)
        raise EngineUnavailable(f"the podman service did not answer within {START_TIMEOUT_S}s")

    def stop(self) -> bool:
        """Stop the service this home started. True if one was running."""
        with file_lock(self.paths.service_lock):
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        with contextlib.suppress(FileNotFoundError):
            self.paths.podman_pidfile.unlink()
        return True

    def cli(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:  # noqa: ANN401 - options for subprocess.run, as they are
        """Run the podman CLI with qlite's configuration (builds, imports)."""
        return subprocess.run(["podman", *args], env=self.env, **kwargs)


class DirectExec(NamedTuple):
    """What ``runsc exec`` into a qube's sandbox needs."""

    wrapper: str  # qlite's runsc wrapper for qubes
    root: str  # the sandbox's runsc state directory
    ids: str  # UID:GID
    cid: str  # the full container ID


def _runsc_root(sandbox_pid: int) -> str | None:
    """The --root that runsc's sandbox process PID was started with."""
    try:
        with open(f"/proc/{sandbox_pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not args or not os.path.basename(args[0]).startswith("runsc"):
        return None
    for i, arg in enumerate(args):
        if arg.startswith("--root="):
            return arg.partition("=")[2]
        if arg == "--root" and i + 1 < len(args):
            return args[i + 1]
    return None


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait up to TIMEOUT for process PID (not our child) to end."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _ping(sock_path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(sock_path)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------
# The engine.


class PodmanEngine:
    """Engine over qlite's podman service (see PodmanService)."""

    name = "podman"
    gives_devices_to_containers = True  # its bind mounts take nodev,nosuid,noexec and rslave
    runs_probed_runsc = True  # the runtimes of containers.conf, written from the probe
    managed_by_qlite = True

    def __init__(self, paths: Paths, service: PodmanService | None = None) -> None:
        self.paths = paths
        self.service = service or PodmanService(paths)
        self._client: Any = None

    # The one place where podman-py and OS errors become qlite errors.
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from podman import errors as perr  # noqa: PLC0415 - podman-py is slow to import
        from requests import exceptions as rexc  # noqa: PLC0415 - requests is slow to import too

        try:
            return fn()
        except (EngineError, EngineUnavailable):
            raise
        except (rexc.ConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise EngineUnavailable(f"cannot reach the podman service ({what}): {exc}") from exc
        except perr.APIError as exc:
            detail = getattr(exc, "explanation", None) or str(exc)
            raise EngineError(f"podman: {what}: {detail}") from exc
        except (perr.PodmanError, rexc.RequestException, OSError) as exc:
            raise EngineError(f"podman: {what}: {exc}") from exc

    @property
    def api(self) -> APIClient:
        if self._client is None:
            self.service.ensure()
            from podman import PodmanClient  # noqa: PLC0415 - podman-py costs ~130 ms; only API calls need it

            self._client = PodmanClient(base_url=f"unix://{self.paths.podman_sock}")
        return self._client.api

    def _json(self, method: str, path: str, what: str, ok404: bool = False, **kw: object) -> Any:  # noqa: ANN401 - the endpoint's decoded JSON, whatever its shape
        def go() -> Any:  # noqa: ANN401 - as _json
            resp = getattr(self.api, method)(path, **kw)
            if ok404 and (resp.status_code == 404 or (method == "delete" and gone(resp))):
                return None
            resp.raise_for_status()
            if resp.status_code == 204 or not resp.content.strip():
                return None
            try:
                return resp.json()
            except ValueError:  # some endpoints answer with plain text ("OK")
                return None

        return self._call(what, go)

    def _list(self, path: str, what: str, params: dict[str, Any]) -> list[dict]:
        """A listing. podman 4.3 fails a whole listing when one object goes
        away while it is being listed ("no volume with name ..."), which
        another qlite command cleaning up can cause at any moment: such a
        listing is simply asked again (bounded)."""
        for attempt in range(LIST_ATTEMPTS):
            try:
                return self._json("get", path, what, params=params) or []
            except EngineError as exc:
                if attempt == LIST_ATTEMPTS - 1 or not VANISHED_RE.search(str(exc)):
                    raise
                time.sleep(0.05)
        return []  # not reached

    def version(self) -> str:
        return self._json("get", "/version", "version")["Version"]

    # -- containers --------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        body = specgen(spec)
        out = self._json("post", "/containers/create", f"create {spec.name}", data=json.dumps(body))
        return out["Id"]

    def init(self, cid: str) -> None:
        self._json("post", f"/containers/{cid}/init", f"init {cid}")

    def start(self, cid: str) -> None:
        self._json("post", f"/containers/{cid}/start", f"start {cid}")

    def stop(self, cid: str, timeout: float) -> None:
        self._json(
            "post",
            f"/containers/{cid}/stop",
            f"stop {cid}",
            params={"timeout": int(timeout)},
            timeout=timeout + 30,
        )

    def kill(self, cid: str, signal: str = "KILL") -> None:
        self._json("post", f"/containers/{cid}/kill", f"kill {cid}", params={"signal": signal})

    def pause(self, cid: str) -> None:
        self._json("post", f"/containers/{cid}/pause", f"pause {cid}")

    def unpause(self, cid: str) -> None:
        self._json("post", f"/containers/{cid}/unpause", f"unpause {cid}")

    def remove_container(self, cid: str, force: bool = True) -> None:
        self._json(
            "delete",
            f"/containers/{cid}",
            f"remove {cid}",
            ok404=True,
            params={"force": force, "v": False, "ignore": True},
        )

    def inspect_container(self, cid: str) -> ContainerInfo | None:
        data = self._json("get", f"/containers/{cid}/json", f"inspect {cid}", ok404=True)
        if data is None:
            return None
        net = data.get("NetworkSettings") or {}
        attachments = {
            name: Attachment(ip=a.get("IPAddress", ""), mac=a.get("MacAddress", ""), gateway=a.get("Gateway", ""))
            for name, a in (net.get("Networks") or {}).items()
        }
        return ContainerInfo(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            state=data["State"]["Status"],
            labels=data["Config"].get("Labels") or {},
            image_id=data.get("Image", ""),
            pid=data["State"].get("Pid", 0),
            runtime=data.get("OCIRuntime", ""),
            netns=net.get("SandboxKey", ""),
            networks=attachments,
        )

    def list_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        data = self._list("/containers/json", "list containers", {"all": True, "filters": label_filters(labels)})
        return [
            ContainerInfo(
                id=c["Id"],
                name=(c.get("Names") or [""])[0],
                state=c.get("State", ""),
                labels=c.get("Labels") or {},
                image_id=c.get("ImageID", ""),
                pid=c.get("Pid", 0),
            )
            for c in data
            if has_labels(c.get("Labels"), labels)
        ]

    def attach_and_start(self, cid: str, stdio: Stdio) -> int:
        """Attach to a created container, start it, pass stdio, return its exit code."""
        sock, rest = self._call(
            "attach",
            lambda: hijack(
                str(self.paths.podman_sock),
                f"{HIJACK_PREFIX}/containers/{cid}/attach?stream=true&stdin=true&stdout=true&stderr=true",
            ),
        )
        with sock:
            self.start(cid)
            resize = self._resizer(f"/containers/{cid}/resize") if stdio.tty else None
            pump(sock, stdio, rest, resize)
        return self._wait_after_stream(cid)

    def _wait_after_stream(self, cid: str) -> int:
        """The exit code, once the output stream has ended. conmon ends the
        stream when the container stops, so a container still running well
        after that has lost its stream: its sandbox was set up again (podman
        re-creates one that died before start) behind the attach. Its
        output would go nowhere, so it is killed and the run fails."""
        result: list[int | BaseException] = []

        def wait() -> None:
            try:
                result.append(self._wait(cid))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(STREAM_GRACE_S)
        if waiter.is_alive():
            with contextlib.suppress(EngineError):
                self.kill(cid)
            waiter.join(STREAM_GRACE_S)
            raise EngineError(
                "the sandbox was restarted under the command and its output was lost; the command was stopped"
            )
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _wait(self, cid: str) -> int:
        code = self._json(
            "post",
            f"/containers/{cid}/wait",
            f"wait {cid}",
            # podman polls the state every 250 ms unless told otherwise
            params={"condition": "stopped", "interval": "10ms"},
            timeout=None,
        )
        return self._recorded_exit(cid) if int(code) == 0 else int(code)

    def _recorded_exit(self, cid: str) -> int:
        """The exit code conmon recorded. podman 4.3's wait can answer 0 as
        soon as runsc reports the sandbox stopped, before conmon has written
        how it ended: a sandbox killed from outside would pass as success.
        conmon exits once it has written the code, so wait (bounded) for
        that conmon to be gone, then read the code podman recorded."""
        state = (self._json("get", f"/containers/{cid}/json", f"inspect {cid}", ok404=True) or {}).get("State", {})
        pid = state.get("ConmonPid") or 0
        if pid > 0:
            _wait_gone(pid, CONMON_EXIT_TIMEOUT_S)
            state = (self._json("get", f"/containers/{cid}/json", f"inspect {cid}", ok404=True) or {}).get("State", {})
        return int(state.get("ExitCode") or 0)

    def exec(
        self,
        cid: str,
        argv: list[str],
        stdio: Stdio,
        user: str = "",
        workdir: str = "",
        env: dict[str, str] | None = None,
    ) -> int:
        direct = None if stdio.tty else self._direct_exec(cid, user)
        if direct is not None:
            return self._runsc_exec(direct, argv, stdio, workdir, env)
        body = {
            "Cmd": argv,
            "AttachStdin": stdio.stdin is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": stdio.tty,
            "User": user,
            "WorkingDir": workdir,
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
        }
        eid = self._json("post", f"/containers/{cid}/exec", f"exec in {cid}", data=json.dumps(body))["Id"]
        sock, rest = self._call(
            "exec start",
            lambda: hijack(
                str(self.paths.podman_sock),
                f"{HIJACK_PREFIX}/exec/{eid}/start",
                {"Detach": False, "Tty": stdio.tty},
            ),
        )
        with sock:
            resize = self._resizer(f"/exec/{eid}/resize") if stdio.tty else None
            pump(sock, stdio, rest, resize)
        for _ in range(200):  # bounded: the exit code lands just after the stream ends
            info = self._json("get", f"/exec/{eid}/json", "exec inspect")
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0)
            time.sleep(0.01)
        raise EngineError(f"exec in {cid} did not report an exit code")

    def _direct_exec(self, cid: str, user: str) -> DirectExec | None:
        """The start of a ``runsc exec`` into running container CID as USER,
        through qlite's own runsc wrapper and the sandbox's runsc root; None
        where only podman's exec will do (another runtime, not running, a
        user name this template does not define).

        podman's exec ends in the same ``runsc exec``, after an exec
        session, a conmon and a round of API calls that cost ~200 ms: what
        an RPC call into a running qube and ``qlite run QUBE`` wait for."""
        ids = KNOWN_USERS.get(user) or (user if USER_RE.fullmatch(user) else None)
        wrapper = self.paths.runsc_wrapper("qube")
        data = self._json("get", f"/containers/{cid}/json", f"inspect {cid}", ok404=True)
        if not ids or data is None or not wrapper.exists():
            return None
        state = data.get("State") or {}
        if data.get("OCIRuntime") != QUBE_RUNTIME or state.get("Status") != "running" or not state.get("Pid"):
            return None
        root = _runsc_root(int(state["Pid"]))
        if root is None:
            return None
        return DirectExec(wrapper=str(wrapper), root=root, ids=ids, cid=data["Id"])

    @staticmethod
    def _runsc_exec(target: DirectExec, argv: list[str], stdio: Stdio, workdir: str, env: dict[str, str] | None) -> int:
        root_user = target.ids.partition(":")[0] == "0"
        env = {"HOME": "/root" if root_user else "/home/user", **(env or {})}
        args = [target.wrapper, f"--root={target.root}", "exec", "--user", target.ids]
        if workdir:
            args += ["--cwd", workdir]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        # In a process group of its own: a terminal's Ctrl-C is qlite's to
        # forward (runsc exec would die of it and leave the command running).
        proc = subprocess.Popen(
            [*args, target.cid, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            process_group=0,
        )
        tail = bytearray()
        try:
            code = pump_process(proc, stdio, tail)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            raise
        if code < 0:  # runsc exec itself was killed by a signal
            return 128 - code
        # A command that cannot be run: runsc exec fails with 128 and says
        # why; answer as a shell (and podman) would.
        if code == 128 and b"in sandbox: failed to load" in tail:
            return 127 if b"no such file or directory" in tail.lower() else 126
        return code

    def _resizer(self, path: str) -> Callable[[int, int], None]:
        def resize(rows: int, cols: int) -> None:
            self._json("post", path, "resize", params={"h": rows, "w": cols})

        return resize

    def logs(self, cid: str) -> Iterator[bytes]:
        def go() -> bytes:
            resp = self.api.get(f"/containers/{cid}/logs", params={"stdout": True, "stderr": True})
            resp.raise_for_status()
            return resp.content

        decoder = FrameDecoder()
        for _stream, payload in decoder.feed(self._call("logs", go)):
            yield payload

    # -- volumes -----------------------------------------------------------

    def create_volume(self, name: str, labels: dict[str, str]) -> VolumeInfo:
        data = self._json(
            "post",
            "/volumes/create",
            f"create volume {name}",
            data=json.dumps({"Name": name, "Label": labels}),
        )
        return VolumeInfo(name=data["Name"], labels=data.get("Labels") or {}, mountpoint=data["Mountpoint"])

    def remove_volume(self, name: str) -> None:
        self._json("delete", f"/volumes/{name}", f"remove volume {name}", ok404=True, params={"force": True})

    def inspect_volume(self, name: str) -> VolumeInfo | None:
        data = self._json("get", f"/volumes/{name}/json", f"inspect volume {name}", ok404=True)
        if data is None:
            return None
        return VolumeInfo(name=data["Name"], labels=data.get("Labels") or {}, mountpoint=data["Mountpoint"])

    def list_volumes(self, labels: dict[str, str]) -> list[VolumeInfo]:
        data = self._list("/volumes/json", "list volumes", {"filters": label_filters(labels)})
        return [
            VolumeInfo(name=v["Name"], labels=v.get("Labels") or {}, mountpoint=v["Mountpoint"])
            for v in data
            if has_labels(v.get("Labels"), labels)
        ]

    # -- networks ----------------------------------------------------------

    def create_network(
        self, name: str, labels: dict[str, str], internal: bool = False, interface: str = ""
    ) -> NetworkInfo:
        # An internal network has no NAT and no default route; aardvark-dns
        # would only answer on the host's side of it, so it is off there.
        body = {"name": name, "driver": "bridge", "labels": labels, "internal": internal, "dns_enabled": not internal}
        if interface:
            body["network_interface"] = interface
        data = self._json("post", "/networks/create", f"create network {name}", data=json.dumps(body))
        return _network_info(data)

    def remove_network(self, name: str) -> None:
        # Never force: podman's force removes every container on the network.
        self._json("delete", f"/networks/{name}", f"remove network {name}", ok404=True)

    def connect_network(self, cid: str, network: str, static_ip: str = "", static_mac: str = "") -> None:
        body: dict[str, Any] = {"container": cid}
        if static_ip:
            body["static_ips"] = [static_ip]
        if static_mac:
            body["static_mac"] = static_mac
        self._json("post", f"/networks/{network}/connect", f"connect {cid} to {network}", data=json.dumps(body))

    def disconnect_network(self, cid: str, network: str) -> None:
        body = {"Container": cid, "Force": True}
        self._json(
            "post",
            f"/networks/{network}/disconnect",
            f"disconnect {cid} from {network}",
            ok404=True,
            data=json.dumps(body),
        )

    def list_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        data = self._list("/networks/json", "list networks", {"filters": label_filters(labels)})
        return [_network_info(n) for n in data if has_labels(n.get("labels"), labels)]

    # -- images ------------------------------------------------------------

    def inspect_image(self, ref: str) -> ImageInfo | None:
        data = self._json("get", f"/images/{ref}/json", f"inspect image {ref}", ok404=True)
        return None if data is None else _image_info(data)

    def list_images(self, reference: str) -> list[ImageInfo]:
        data = (
            self._json(
                "get",
                "/images/json",
                "list images",
                params={"filters": json.dumps({"reference": [reference]})},
            )
            or []
        )
        out = []
        for img in data:
            out.append(
                ImageInfo(
                    id=img["Id"].removeprefix("sha256:"),
                    tags=tuple(img.get("RepoTags") or ()),
                    labels=img.get("Labels") or {},
                    digest=img.get("Digest", ""),
                    size=img.get("Size", 0),
                )
            )
        return out

    def tag_image(self, image_id: str, ref: str) -> None:
        repo, tag = ref.rsplit(":", 1)
        self._json("post", f"/images/{image_id}/tag", f"tag {ref}", params={"repo": repo, "tag": tag})

    def untag_image(self, ref: str) -> None:
        repo, tag = ref.rsplit(":", 1)
        self._json("post", f"/images/{ref}/untag", f"untag {ref}", ok404=True, params={"repo": repo, "tag": tag})

    def remove_image(self, image_id: str) -> None:
        self._json("delete", f"/images/{image_id}", f"remove image {image_id[:12]}", ok404=True)

    def prune_images(self, label: str, value: str | None = None) -> list[str]:
        selector = label if value is None else f"{label}={value}"
        filters = json.dumps({"dangling": ["true"], "label": [selector]})
        data = self._json("post", "/images/prune", "prune images", params={"filters": filters}) or []
        return [d.get("Id", "") for d in data if not d.get("Err")]

    def import_rootfs(self, tar_path: str, ref: str, progress: Progress) -> str:
        self.service.ensure()
        progress(f"importing root filesystem as {ref}")
        proc = self.service.cli(["import", "--quiet", tar_path, ref], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(f"podman import failed: {_last(proc.stderr)}")
        return proc.stdout.strip().removeprefix("sha256:")

    def build_image(
        self,
        containerfile: str,
        context: str,
        ref: str,
        build_args: dict[str, str],
        labels: dict[str, str],
        progress: Progress,
    ) -> str:
        """Build with chroot isolation; our Containerfiles are trusted and
        runsc cannot run buildah's RUN steps."""
        self.service.ensure()
        iidfile = self.paths.run_dir / f"build-{os.getpid()}.iid"
        args = [
            "build",
            "--isolation=chroot",
            "--pull=never",
            "--layers=true",
            "--network=host",
            "-f",
            containerfile,
            "-t",
            ref,
            "--iidfile",
            str(iidfile),
        ]
        for k, v in build_args.items():
            args += ["--build-arg", f"{k}={v}"]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        args.append(context)
        code, last = run_streamed(["podman", *args], progress, self.service.env)
        if code != 0:
            raise EngineError(f"podman build of {ref} failed: {last}")
        try:
            return iidfile.read_text().strip().removeprefix("sha256:")
        finally:
            iidfile.unlink(missing_ok=True)

    def update_image(
        self,
        image_id: str,
        command: list[str],
        ref: str,
        labels: dict[str, str],
        changes: list[str],
        progress: Progress,
        worth_committing: Callable[[list[tuple[str, str]]], bool] | None = None,
    ) -> str | None:
        """Run COMMAND as root in a sandbox on IMAGE_ID with network, then
        commit the result as REF (unless WORTH_COMMITTING says its changes
        are not worth it: None then). The build runtime turns gVisor's own
        overlay off so that writes reach the layer podman commits. The CLI
        is used because podman 4.3's REST API ignores a per-container runtime."""
        self.service.ensure()
        name = f"qlite-{labels.get('qlite.home', 'x')}-{labels.get('qlite.qube', 'x')}-update"
        args = [
            "run",
            "--name",
            name,
            "--runtime",
            "qlite-runsc-build",
            "--pull=never",
            "--user",
            "root",
            "--env",
            "DEBIAN_FRONTEND=noninteractive",
        ]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        args += [image_id, *command]
        self.remove_container(name, force=True)
        try:
            code, last = run_streamed(["podman", *args], progress, self.service.env)
            if code != 0:
                raise EngineError(f"template update failed (exit {code}): {last}")
            if worth_committing is not None:
                found = change_list(self._json("get", f"/containers/{name}/changes", f"changes of {name}"))
                if not worth_committing(found):
                    return None
            return self.commit(name, ref, changes)
        finally:
            self.remove_container(name, force=True)

    def export_image(self, image: str, tar_path: str, labels: dict[str, str]) -> None:
        def chunks(cid: str) -> Iterator[bytes]:
            resp = self.api.get(f"/containers/{cid}/export", stream=True, timeout=900)
            resp.raise_for_status()
            yield from resp.iter_content(1 << 20)

        self._call(f"export {image}", lambda: export_through_container(self, image, tar_path, labels, chunks))

    def commit(self, cid: str, ref: str, changes: list[str]) -> str:
        repo, tag = ref.rsplit(":", 1)
        params: list[tuple[str, Any]] = [("container", cid), ("repo", repo), ("tag", tag), ("pause", False)]
        params += [("changes", c) for c in changes]
        data = self._json("post", "/commit", f"commit {cid}", params=params, timeout=600)
        return data["Id"].removeprefix("sha256:")


def _network_info(data: dict) -> NetworkInfo:
    subnets = tuple(s.get("subnet", "") for s in data.get("subnets") or ())
    gateways = tuple(s.get("gateway", "") for s in data.get("subnets") or () if s.get("gateway"))
    return NetworkInfo(
        name=data["name"],
        labels=data.get("labels") or {},
        subnets=subnets,
        internal=bool(data.get("internal")),
        interface=data.get("network_interface", ""),
        gateways=gateways,
    )


def _image_info(data: dict) -> ImageInfo:
    return ImageInfo(
        id=data["Id"].removeprefix("sha256:"),
        tags=tuple(data.get("RepoTags") or ()),
        labels=(data.get("Config") or {}).get("Labels") or data.get("Labels") or {},
        digest=data.get("Digest", ""),
        size=data.get("Size", 0),
        created=data.get("Created", ""),
    )


def _last(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
