"""Pure translation of a qube into the engine objects it needs: names,
labels and the ContainerSpec. Every engine object carries the Contracts'
labels so that reconciliation finds everything qlite owns and nothing else."""

from __future__ import annotations

from qlite.domain.model import DEFAULT_PIDS_LIMIT, Qube, parse_memory_limit
from qlite.engines.base import ContainerSpec, Mount

PRIVATE_MOUNT = "/rw"
HOME = "/home/user"  # /home is a link to /rw/home in every template, resolved inside the sandbox
PRIVATE_HOME = "/rw/home/user"
USER_UID = 1000
# Volatile directories: they live in tmpfs and vanish at shutdown.
VOLATILE = {"/tmp": "mode=1777", "/var/tmp": "mode=1777", "/run": "mode=755", "/var/log": "mode=755"}
IDLE_COMMAND = ("sleep", "infinity")  # a VM qube's network holder
RPC_MOUNT = "/run/qlite"  # holds rpc.sock, the qube's own socket to the broker
AGENT_SOCKET = "agent.sock"  # beside rpc.sock: the daemon's socket for the qube's agent
AGENT_LABEL = "qlite.agent"
# A container qube's main process: the guest agent, connected to the daemon.
# The C one (guest-src/qlite-agent.c): idle in gVisor, a Python agent costs
# a qube ~18 MiB more than sleep does; the C one nothing measurable.
AGENT_COMMAND = ("/usr/lib/qlite/qlite-agent", "--serve", f"{RPC_MOUNT}/{AGENT_SOCKET}")
REMOVABLE_MOUNT = "/mnt/removable"  # attached devices' filesystems appear below it


def exec_place(user: str) -> tuple[str, dict[str, str]]:
    """Where a command run as USER starts, and the environment that names
    it: the home (PWD keeps the name /home/user, which getcwd(3) reports as
    /rw/home/user through the template's link), or / for root."""
    return (HOME, {"PWD": HOME}) if user != "root" else ("/", {})


def container_name(home_hash: str, qube: str) -> str:
    return f"qlite-{home_hash}-{qube}"


def volume_name(home_hash: str, qube: str) -> str:
    return f"qlite-{home_hash}-{qube}-private"


def network_name(home_hash: str, qube: str) -> str:
    return f"qlite-{home_hash}-{qube}"


def engine_labels(home_hash: str, qube: str, kind: str, owner: str | None = None) -> dict[str, str]:
    labels = {"qlite.qube": qube, "qlite.kind": kind, "qlite.home": home_hash}
    if owner:
        labels["qlite.owner"] = owner
    return labels


def container_kind(qube: Qube) -> str:
    return "disp" if qube.is_disposable else "app"


def qube_container_spec(
    qube: Qube,
    *,
    home_hash: str,
    image: str,
    network: str,
    dns: tuple[str, ...] = (),
    rpc_source: str = "",
    devices_source: str = "",
    command: tuple[str, ...] = IDLE_COMMAND,
    user: str = "root",
    env: dict[str, str] | None = None,
    stdin_open: bool = False,
    tty: bool = False,
) -> ContainerSpec:
    """The container for QUBE: the template image read-only, the private
    volume at /rw (/home is the template's link into it), tmpfs for the
    volatile directories, and the qube's own RPC directory (RPC_SOURCE on
    the host) at /run/qlite.

    No bind source lies where the qube can write: the host never resolves a
    path inside the qube's volume for podman, and the RPC directory is bound
    read-only, so the qube can neither replace its socket nor plant a link
    for the host to follow there."""
    mounts = [Mount(type="volume", source=volume_name(home_hash, qube.name), target=PRIVATE_MOUNT)]
    mounts += [Mount(type="tmpfs", target=path, options=(opt,)) for path, opt in VOLATILE.items()]
    if rpc_source:
        mounts.append(Mount(type="bind", source=rpc_source, target=RPC_MOUNT, read_only=True))
    if devices_source:
        # rslave: filesystems the host mounts there later appear in the qube.
        # gVisor applies its own mount's flags, not those of the host mounts
        # below, so nodev, nosuid and noexec are set here, for every device.
        mounts.append(
            Mount(
                type="bind",
                source=devices_source,
                target=REMOVABLE_MOUNT,
                options=("rslave", "nodev", "nosuid", "noexec"),
            )
        )
    # The private volume's own path: podman then leaves the working
    # directory to the runtime instead of resolving it on the host through
    # the template's /home link. PWD keeps the shell's name for it.
    workdir = PRIVATE_HOME if user != "root" else "/"
    pwd = exec_place(user)[1]
    labels = engine_labels(home_hash, qube.name, container_kind(qube), qube.owner)
    if tuple(command) == AGENT_COMMAND:
        labels[AGENT_LABEL] = "1"  # the daemon holds a link to this one's agent
    return ContainerSpec(
        name=container_name(home_hash, qube.name),
        image=image,
        command=tuple(command),
        labels=labels,
        hostname=qube.name,
        user=user,
        workdir=workdir,
        env={"QLITE_QUBE": qube.name, **pwd, **(env or {})},
        read_only=True,
        mounts=tuple(mounts),
        network=network,
        dns=dns,
        memory_mib=parse_memory_limit(qube),
        vcpus=qube.vcpus,
        pids_limit=DEFAULT_PIDS_LIMIT,
        init=True,
        stdin_open=stdin_open,
        tty=tty,
    )
