"""The docker engine: the docker SDK against a Docker daemon that has runsc
registered as a runtime (or any server speaking the Docker API).

Unlike the podman engine, qlite does not own this daemon: it only talks to
the socket it is given. Qubes run under ``QLITE_DOCKER_RUNTIME`` (default
``runsc``); an empty value leaves the choice to the daemon's default runtime.

Podman's Docker-compatible API (served on qlite's own podman socket) is what
the integration tests drive. What podman 4.3.1's compat API does, as measured,
and what this module does about it:

- ``HostConfig.Runtime`` (and the top-level ``Runtime``) is ignored without a
  word: even an unknown name is accepted, the container gets the service's
  default runtime, and inspect reports ``"oci"``. Against qlite's podman
  service, set ``QLITE_DOCKER_RUNTIME=""``; its default runtime is runsc
  already. ``QLITE_DOCKER_BUILD_RUNTIME`` is ignored in the same way, so
  ``update_image`` runs under the default runtime, whose gVisor overlay keeps
  the command's writes out of the committed layer: there, template updates
  need the podman engine.
- Several label filters on volumes match a volume that has *any* of them
  (containers and networks need all). Lists are filtered again here.
- Creating a volume whose name exists returns the existing one, as Docker
  does. Here that is an error, as it is with the podman engine.
- Image import ignores the ``tag`` parameter (the image gets ``:latest``); a
  tag inside ``repo``, which the Docker API allows, works.
- A bare 64-hex id of a missing image gets a 500, not a 404; ``sha256:<id>``
  gets the 404. Ids are sent in that form.
- The SDK sends a Containerfile from outside the context as two ``dockerfile``
  parameters (its name and its text), and podman takes the text for a path.
  The context is packed here instead.
- Builds run RUN steps under the default runtime (runsc), which cannot run
  them; the ``isolation`` parameter means Docker's Windows isolation there and
  does not select chroot. Containerfiles without RUN steps build fine.
- ``exec`` with a TTY makes conmon call ``<runtime> exec --tty``, a flag runsc
  lacks; qlite's runsc wrapper drops it (see runsc-config/runsc-wrapper.in),
  for both engines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

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
from qlite.engines.stream import pump
from qlite.errors import EngineError, EngineUnavailable
from qlite.paths import Paths

if TYPE_CHECKING:  # the SDK loads on the first call (it has no type information: to mypy, Any)
    import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_RUNTIME = "runsc"
TMPFS_BASE_OPTIONS = ("rw", "nosuid", "nodev")
PROPAGATIONS = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
NANO = 1_000_000_000
IMAGE_ID = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


# --------------------------------------------------------------------------
# Pure translation of a ContainerSpec into docker SDK arguments.


@dataclass(frozen=True)
class DockerCreateArgs:
    """Keyword arguments for the SDK's low-level API: ``create_container``
    (without ``host_config``) and ``create_host_config``."""

    container: dict[str, Any]
    host_config: dict[str, Any]


def default_runtime(env: Mapping[str, str] | None = None) -> str:
    """The runtime qubes get when their spec names none; "" means the
    engine's own default."""
    env = os.environ if env is None else env
    return env.get("QLITE_DOCKER_RUNTIME", DEFAULT_RUNTIME).strip()


def create_args(spec: ContainerSpec, runtime: str = DEFAULT_RUNTIME) -> DockerCreateArgs:
    """The create arguments for SPEC; RUNTIME applies when SPEC names none."""
    mounts, tmpfs = _mounts(spec)
    # create_container with stdin_open (and detach left False) also sets
    # StdinOnce: the container's stdin closes when the attached client
    # half-closes, which is how stdin EOF reaches the command.
    container: dict[str, Any] = {
        "name": spec.name,
        "image": image_ref(spec.image),
        "command": list(spec.command) or None,
        "labels": dict(spec.labels),
        "stdin_open": spec.stdin_open,
        "tty": spec.tty,
        "hostname": spec.hostname or None,
        "user": spec.user or None,
        "working_dir": spec.workdir or None,
        "environment": dict(spec.env) or None,
    }
    host: dict[str, Any] = {
        "read_only": spec.read_only,
        "init": spec.init,
        "network_mode": spec.network,  # "none", or a network's name
        "mounts": mounts,
    }
    if tmpfs:
        host["tmpfs"] = tmpfs
    if spec.dns:
        host["dns"] = list(spec.dns)
    if spec.memory_mib:
        host["mem_limit"] = spec.memory_mib * 1024 * 1024
    if spec.vcpus:
        host["nano_cpus"] = spec.vcpus * NANO
    if spec.pids_limit:
        host["pids_limit"] = spec.pids_limit
    chosen = spec.runtime or runtime
    if chosen:
        host["runtime"] = chosen
    return DockerCreateArgs(container=container, host_config=host)


def _mounts(spec: ContainerSpec) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Volumes and binds as API Mount objects; tmpfs as HostConfig.Tmpfs,
    because only that form carries arbitrary mount options (mode=, size=)."""
    mounts: list[dict[str, Any]] = []
    tmpfs: dict[str, str] = {}
    for m in spec.mounts:
        if m.type == "tmpfs":
            tmpfs[m.target] = ",".join((*TMPFS_BASE_OPTIONS, *m.options))
            continue
        if m.type not in ("volume", "bind"):
            raise ValueError(f"unknown mount type {m.type!r}")
        mount: dict[str, Any] = {"Type": m.type, "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
        for opt in m.options:
            if opt in ("ro", "rw"):
                mount["ReadOnly"] = opt == "ro"
            elif m.type == "bind" and opt in PROPAGATIONS:
                mount["BindOptions"] = {"Propagation": opt}
            elif m.type == "volume" and opt == "nocopy":
                mount["VolumeOptions"] = {"NoCopy": True}
            else:
                # The Mount API has no place for it; dropping it silently
                # would change what the qube can do.
                raise ValueError(f"{m.type} mount option {opt!r} is not supported by the docker engine")
        mounts.append(mount)
    return mounts, tmpfs


def image_ref(ref: str) -> str:
    """REF, with a bare image id made explicit. Podman's compat API answers a
    bare 64-hex id of a missing image with a 500 instead of a 404."""
    return f"sha256:{ref}" if IMAGE_ID.fullmatch(ref) else ref


def label_filters(labels: dict[str, str]) -> dict[str, list[str]]:
    return {"label": label_selectors(labels)}


# --------------------------------------------------------------------------
# The engine.


class DockerEngine:
    """Engine over a Docker API socket, through the docker SDK."""

    name = "docker"
    gives_devices_to_containers = False  # the Docker API takes no mount flags for a bind
    runs_probed_runsc = False  # the daemon's runsc is configured by its owner
    managed_by_qlite = False  # someone else's daemon, at DOCKER_HOST

    def __init__(self, paths: Paths, base_url: str | None) -> None:
        self.paths = paths
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.runtime = default_runtime()
        self._client: Any = None

    # The one place where docker SDK, requests and OS errors become qlite errors.
    def _call(self, what: str, fn: Callable[[], T], ok404: bool = False) -> T | None:
        from docker import errors as derr  # noqa: PLC0415 - the SDK is slow to import
        from requests import exceptions as rexc  # noqa: PLC0415 - requests is slow to import too

        unreachable = (rexc.ConnectionError, ConnectionError)
        try:
            return fn()
        except (EngineError, EngineUnavailable):
            raise
        except derr.NotFound as exc:
            if ok404:
                return None
            raise EngineError(f"docker: {what}: {exc.explanation or exc}") from exc
        except derr.APIError as exc:
            if ok404 and GONE_RE.search(str(exc.explanation or exc)):
                return None
            raise EngineError(f"docker: {what}: {exc.explanation or exc}") from exc
        except unreachable as exc:
            raise EngineUnavailable(self._unreachable(what, exc)) from exc
        except (derr.DockerException, rexc.RequestException, OSError) as exc:
            # The SDK wraps a failed connection while it asks for the API version.
            if isinstance(exc.__cause__, unreachable):
                raise EngineUnavailable(self._unreachable(what, exc.__cause__)) from exc
            raise EngineError(f"docker: {what}: {exc}") from exc

    def _unreachable(self, what: str, exc: BaseException) -> str:
        return (
            f"cannot reach the Docker engine at {self.base_url} ({what}): {exc}; "
            "is it running? QLITE_DOCKER_HOST selects its socket"
        )

    def _must(self, what: str, fn: Callable[[], T]) -> T:
        """_call for results that cannot be absent."""
        return self._call(what, fn)  # type: ignore[return-value]

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:

            def connect() -> docker.APIClient:
                import docker  # noqa: PLC0415 - the docker SDK costs ~135 ms; loaded on first use

                # "auto" asks the server for its API version: Docker 29
                # refuses old ones, podman 4.3 answers 1.41.
                return docker.APIClient(base_url=self.base_url, version="auto")

            self._client = self._must("connect", connect)
        return self._client

    def version(self) -> str:
        return self._must("version", lambda: self.api.version()["Version"])

    # -- containers --------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        args = create_args(spec, self.runtime)

        def go() -> str:
            host_config = self.api.create_host_config(**args.host_config)
            return self.api.create_container(host_config=host_config, **args.container)["Id"]

        return self._must(f"create {spec.name}", go)

    def init(self, cid: str) -> None:
        # The Docker API has no "init": namespaces appear only at start.
        raise EngineError(
            "the docker engine cannot set up a container before it starts; "
            "qubes behind a gateway qube need the podman engine"
        )

    def start(self, cid: str) -> None:
        self._call(f"start {cid}", lambda: self.api.start(cid))

    def stop(self, cid: str, timeout: float) -> None:
        self._call(f"stop {cid}", lambda: self.api.stop(cid, timeout=int(timeout)))

    def kill(self, cid: str, signal: str = "KILL") -> None:
        self._call(f"kill {cid}", lambda: self.api.kill(cid, signal=signal))

    def pause(self, cid: str) -> None:
        self._call(f"pause {cid}", lambda: self.api.pause(cid))

    def unpause(self, cid: str) -> None:
        self._call(f"unpause {cid}", lambda: self.api.unpause(cid))

    def remove_container(self, cid: str, force: bool = True) -> None:
        self._call(f"remove {cid}", lambda: self.api.remove_container(cid, v=False, force=force), ok404=True)

    def inspect_container(self, cid: str) -> ContainerInfo | None:
        data = self._call(f"inspect {cid}", lambda: self.api.inspect_container(cid), ok404=True)
        if data is None:
            return None
        state = data.get("State") or {}
        net = data.get("NetworkSettings") or {}
        attachments = {
            name: Attachment(ip=a.get("IPAddress", ""), mac=a.get("MacAddress", ""), gateway=a.get("Gateway", ""))
            for name, a in (net.get("Networks") or {}).items()
        }
        return ContainerInfo(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            state=state.get("Status", ""),
            labels=(data.get("Config") or {}).get("Labels") or {},
            image_id=data.get("Image", "").removeprefix("sha256:"),
            pid=state.get("Pid") or 0,
            runtime=(data.get("HostConfig") or {}).get("Runtime", ""),
            netns=net.get("SandboxKey", ""),
            networks=attachments,
        )

    def list_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        data = self._must("list containers", lambda: self.api.containers(all=True, filters=label_filters(labels))) or []
        return [
            ContainerInfo(
                id=c["Id"],
                name=(c.get("Names") or [""])[0].lstrip("/"),
                state=c.get("State", ""),
                labels=c.get("Labels") or {},
                image_id=c.get("ImageID", "").removeprefix("sha256:"),
            )
            for c in data
            if has_labels(c.get("Labels"), labels)
        ]

    def attach_and_start(self, cid: str, stdio: Stdio) -> int:
        """Attach to a created container, start it, pass stdio, return its exit code."""
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        sockio = self._must("attach", lambda: self.api.attach_socket(cid, params=params))
        with _hijacked(sockio) as (sock, initial):
            self.start(cid)
            resize = self._resizer("resize", lambda h, w: self.api.resize(cid, height=h, width=w))
            pump(sock, stdio, initial, resize if stdio.tty else None)
        # The SDK's own timeout would cut a long-running command short.
        result = self._must(f"wait {cid}", lambda: self.api.wait(cid, timeout=None))
        return int(result["StatusCode"])

    def exec(
        self,
        cid: str,
        argv: list[str],
        stdio: Stdio,
        user: str = "",
        workdir: str = "",
        env: dict[str, str] | None = None,
    ) -> int:
        def create() -> str:
            return self.api.exec_create(
                cid,
                argv,
                stdout=True,
                stderr=True,
                stdin=stdio.stdin is not None,
                tty=stdio.tty,
                user=user,
                workdir=workdir or None,
                environment=env or None,
            )["Id"]

        eid = self._must(f"exec in {cid}", create)
        sockio = self._must("exec start", lambda: self.api.exec_start(eid, tty=stdio.tty, socket=True))
        with _hijacked(sockio) as (sock, initial):
            resize = self._resizer("exec resize", lambda h, w: self.api.exec_resize(eid, height=h, width=w))
            pump(sock, stdio, initial, resize if stdio.tty else None)
        for _ in range(200):  # bounded: the exit code lands just after the stream ends
            info = self._must("exec inspect", lambda: self.api.exec_inspect(eid))
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0)
            time.sleep(0.01)
        raise EngineError(f"exec in {cid} did not report an exit code")

    def _resizer(self, what: str, fn: Callable[[int, int], None]) -> Callable[[int, int], None]:
        def resize(rows: int, cols: int) -> None:
            self._call(what, lambda: fn(rows, cols))

        return resize

    def logs(self, cid: str) -> Iterator[bytes]:
        # The SDK demultiplexes stdout and stderr itself (unless it is a TTY).
        data = self._must("logs", lambda: self.api.logs(cid, stdout=True, stderr=True, stream=False))
        if data:
            yield data

    # -- volumes -----------------------------------------------------------

    def create_volume(self, name: str, labels: dict[str, str]) -> VolumeInfo:
        # The Docker API hands back an existing volume of that name, data and
        # all; a new qube must never inherit a stray volume's contents.
        if self.inspect_volume(name) is not None:
            raise EngineError(f"docker: create volume {name}: a volume of that name already exists")
        data = self._must(f"create volume {name}", lambda: self.api.create_volume(name, labels=labels))
        return _volume_info(data)

    def remove_volume(self, name: str) -> None:
        self._call(f"remove volume {name}", lambda: self.api.remove_volume(name, force=True), ok404=True)

    def inspect_volume(self, name: str) -> VolumeInfo | None:
        data = self._call(f"inspect volume {name}", lambda: self.api.inspect_volume(name), ok404=True)
        return None if data is None else _volume_info(data)

    def list_volumes(self, labels: dict[str, str]) -> list[VolumeInfo]:
        data = self._must("list volumes", lambda: self.api.volumes(filters=label_filters(labels)))
        found = (data or {}).get("Volumes") or ()
        return [_volume_info(v) for v in found if has_labels(v.get("Labels"), labels)]

    # -- networks ----------------------------------------------------------

    def create_network(
        self, name: str, labels: dict[str, str], internal: bool = False, interface: str = ""
    ) -> NetworkInfo:
        options = {"com.docker.network.bridge.name": interface} if interface else None

        def go() -> dict:
            out = self.api.create_network(name, driver="bridge", labels=labels, internal=internal, options=options)
            return self.api.inspect_network(out["Id"])

        return _network_info(self._must(f"create network {name}", go))

    def remove_network(self, name: str) -> None:
        self._call(f"remove network {name}", lambda: self.api.remove_network(name), ok404=True)

    def connect_network(self, cid: str, network: str, static_ip: str = "", static_mac: str = "") -> None:
        # The SDK has no way to pass a MAC address here; clients may then
        # need a moment to learn a restarted gateway's new one.
        self._call(
            f"connect {cid} to {network}",
            lambda: self.api.connect_container_to_network(cid, network, ipv4_address=static_ip or None),
        )

    def disconnect_network(self, cid: str, network: str) -> None:
        self._call(
            f"disconnect {cid} from {network}",
            lambda: self.api.disconnect_container_from_network(cid, network, force=True),
            ok404=True,
        )

    def list_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        data = self._must("list networks", lambda: self.api.networks(filters=label_filters(labels)))
        return [_network_info(n) for n in data or () if has_labels(n.get("Labels"), labels)]

    # -- images ------------------------------------------------------------

    def inspect_image(self, ref: str) -> ImageInfo | None:
        data = self._call(f"inspect image {ref}", lambda: self.api.inspect_image(image_ref(ref)), ok404=True)
        return None if data is None else _image_info(data, (data.get("Config") or {}).get("Labels"))

    def list_images(self, reference: str) -> list[ImageInfo]:
        data = self._must("list images", lambda: self.api.images(filters={"reference": [reference]})) or []
        return [_image_info(img, img.get("Labels")) for img in data]

    def tag_image(self, image_id: str, ref: str) -> None:
        repo, tag = ref.rsplit(":", 1)
        self._call(f"tag {ref}", lambda: self.api.tag(image_ref(image_id), repo, tag))

    def untag_image(self, ref: str) -> None:
        """The Docker API has no untag: deleting a reference by name removes
        that tag, and the image too once no other tag, child image or
        container holds on to it."""
        self._call(f"untag {ref}", lambda: self.api.remove_image(ref), ok404=True)

    def remove_image(self, image_id: str) -> None:
        self._call(f"remove image {image_id[:12]}", lambda: self.api.remove_image(image_ref(image_id)), ok404=True)

    def prune_images(self, label: str, value: str | None = None) -> list[str]:
        selector = label if value is None else f"{label}={value}"
        out = self._must("prune images", lambda: self.api.prune_images(filters={"dangling": True, "label": [selector]}))
        return [d.get("Deleted", "") for d in (out or {}).get("ImagesDeleted") or () if d.get("Deleted")]

    def import_rootfs(self, tar_path: str, ref: str, progress: Progress) -> str:
        progress(f"importing root filesystem as {ref}")
        # The tag goes inside repo: the API allows it, and podman's compat
        # API ignores a separate tag parameter.
        out = self._must(f"import {ref}", lambda: self.api.import_image(src=tar_path, repository=ref))
        for line in str(out or "").splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("error"):
                    raise EngineError(f"docker import of {ref} failed: {msg['error']}")
        info = self.inspect_image(ref)
        if info is None:
            raise EngineError(f"docker import of {ref} reported success but the image is missing")
        return info.id

    def build_image(
        self,
        containerfile: str,
        context: str,
        ref: str,
        build_args: dict[str, str],
        labels: dict[str, str],
        progress: Progress,
    ) -> str:
        """Build with the daemon's builder, streaming its log to PROGRESS.
        CONTAINERFILE may lie outside CONTEXT (the guest-tools one does)."""

        def go() -> str:
            image_id = ""
            tar, name = _build_context(containerfile, context)
            with tar:
                for msg in self.api.build(
                    fileobj=tar,
                    custom_context=True,
                    dockerfile=name,
                    tag=ref,
                    buildargs=build_args,
                    labels=labels,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                ):
                    if msg.get("error"):
                        raise EngineError(f"docker build of {ref} failed: {_last(msg['error'])}")
                    for line in str(msg.get("stream") or msg.get("status") or "").splitlines():
                        if line.strip():
                            progress(line.rstrip())
                    image_id = (msg.get("aux") or {}).get("ID") or image_id
            return image_id

        image_id = self._must(f"build {ref}", go)
        if not image_id:  # older daemons only print "Successfully built"
            info = self.inspect_image(ref)
            if info is None:
                raise EngineError(f"docker build of {ref} finished but the image is missing")
            image_id = info.id
        return image_id.removeprefix("sha256:")

    def export_image(self, image: str, tar_path: str, labels: dict[str, str]) -> None:
        self._must(f"export {image}", lambda: export_through_container(self, image, tar_path, labels, self.api.export))

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
        are not worth it: None then). QLITE_DOCKER_BUILD_RUNTIME names a
        runtime whose writes reach the committed layer (runsc with --overlay2=none)."""
        name = f"qlite-{labels.get('qlite.home', 'x')}-{labels.get('qlite.qube', 'x')}-update"
        spec = ContainerSpec(
            name=name,
            image=image_id,
            command=tuple(command),
            labels=dict(labels),
            user="root",
            env={"DEBIAN_FRONTEND": "noninteractive"},
            read_only=False,
            network="bridge",
            init=False,
            runtime=os.environ.get("QLITE_DOCKER_BUILD_RUNTIME", "").strip(),
        )
        self.remove_container(name, force=True)
        try:
            cid = self.create_container(spec)
            self.start(cid)
            tail = self._must(
                "update output",
                lambda: _follow(self.api.logs(cid, stdout=True, stderr=True, stream=True, follow=True), progress),
            )
            code = int(self._must(f"wait {cid}", lambda: self.api.wait(cid, timeout=None))["StatusCode"])
            if code != 0:
                raise EngineError(f"template update failed (exit {code}): {_last(chr(10).join(tail))}")
            if worth_committing is not None:
                found = change_list(self._must(f"changes of {cid}", lambda: self.api.diff(cid)))
                if not worth_committing(found):
                    return None
            return self.commit(cid, ref, changes)
        finally:
            self.remove_container(name, force=True)

    def commit(self, cid: str, ref: str, changes: list[str]) -> str:
        repo, tag = ref.rsplit(":", 1)
        data = self._must(
            f"commit {cid}", lambda: self.api.commit(cid, repository=repo, tag=tag, changes=changes, pause=False)
        )
        return data["Id"].removeprefix("sha256:")


def _build_context(containerfile: str, context: str) -> tuple[IO[bytes], str]:
    """The build context as a tar, and the Containerfile's name inside it.
    The SDK can add an outside Containerfile by itself, but then sends its
    name and its text as two "dockerfile" parameters, and podman 4.3 takes
    the text for a path. So the context is packed here, with the SDK's tar."""
    from docker import utils as dutils  # noqa: PLC0415 - the SDK is slow to import; only builds need it

    root = os.path.abspath(context)
    rel = os.path.relpath(os.path.abspath(containerfile), root)
    ignore = os.path.join(root, ".dockerignore")
    exclude: list[str] = []
    if os.path.exists(ignore):
        with open(ignore) as f:
            exclude = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    if rel.startswith(".."):
        name = ".qlite-containerfile"
        with open(containerfile) as f:
            return dutils.tar(root, exclude=exclude, dockerfile=(name, f.read())), name
    return dutils.tar(root, exclude=exclude, dockerfile=(rel, None)), rel


@contextlib.contextmanager
def _hijacked(sockio: Any) -> Iterator[tuple[socket.socket, bytes]]:  # noqa: ANN401 - as in _buffered
    """The raw socket under the SDK's SocketIO, and the bytes the HTTP parser
    already read past the response headers (pump must deliver them first)."""
    sock: socket.socket = sockio._sock
    try:
        sock.settimeout(None)  # the SDK's 60 s request timeout must not end a session
        yield sock, _buffered(sockio, sock)
    finally:
        # The socket's fd stays open until its SocketIO is closed too.
        with contextlib.suppress(OSError):
            sockio.close()
        sock.close()


def _buffered(sockio: Any, sock: socket.socket) -> bytes:  # noqa: ANN401 - the SDK's socket, of a class per transport
    reader = getattr(getattr(getattr(getattr(sockio, "_response", None), "raw", None), "_fp", None), "fp", None)
    if reader is None:
        return b""
    # Non-blocking, so that peek returns what is buffered without waiting.
    sock.setblocking(False)
    try:
        peeked = reader.peek()
        return reader.read(len(peeked)) if peeked else b""
    except (OSError, ValueError):
        return b""
    finally:
        sock.setblocking(True)


def _follow(chunks: Iterator[bytes], progress: Progress) -> list[str]:
    """Feed a log stream to PROGRESS line by line; return the last lines."""
    tail: list[str] = []
    buf = b""

    def emit(raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        del tail[:-20]
        progress(line)

    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            emit(raw)
    if buf:
        emit(buf)
    return tail


def _volume_info(data: dict) -> VolumeInfo:
    return VolumeInfo(name=data["Name"], labels=data.get("Labels") or {}, mountpoint=data.get("Mountpoint", ""))


def _network_info(data: dict) -> NetworkInfo:
    configs = (data.get("IPAM") or {}).get("Config") or ()
    return NetworkInfo(
        name=data["Name"],
        labels=data.get("Labels") or {},
        subnets=tuple(c["Subnet"] for c in configs if c.get("Subnet")),
        internal=bool(data.get("Internal")),
        interface=(data.get("Options") or {}).get("com.docker.network.bridge.name", ""),
        gateways=tuple(c["Gateway"] for c in configs if c.get("Gateway")),
    )


def _image_info(data: dict, labels: dict | None) -> ImageInfo:
    digests = data.get("RepoDigests") or ()
    created = data.get("Created", "")
    return ImageInfo(
        id=data["Id"].removeprefix("sha256:"),
        tags=tuple(data.get("RepoTags") or ()),
        labels=labels or {},
        digest=digests[0].partition("@")[2] if digests else "",
        size=data.get("Size") or 0,
        created=str(created),
    )


def _last(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
