"""Templates: OCI images built from ``images/<name>/``, with revisions.

A build layers three steps: a Debian rootfs from mmdebstrap (when the
template has a ``rootfs.conf``), the template's own Containerfile, and the
guest-tools Containerfile at the top of the repository. Each result is
tagged ``localhost/qlite/<name>:<N>`` with N increasing across the shared
image store, and this home's store records which image each revision is.

The image store is shared by every qlite home, so an image that another
home already built from the same definition is adopted, not rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qlite.core import guest
from qlite.core.rootfs import build_rootfs, parse_rootfs_conf
from qlite.domain.context import Context
from qlite.domain.model import Template, TemplateRevision
from qlite.domain.names import validate_name
from qlite.domain.prefs import GlobalPrefs
from qlite.domain.spec import engine_labels
from qlite.engines.base import ImageInfo, Progress
from qlite.errors import AlreadyExists, EngineError, InUse, NotFound, StateError, TemplateNotFound
from qlite.paths import IMAGE_LOCK
from qlite.progress import file_lock
from qlite.state.owners import current_owner
from qlite.vm.disks import prune_root_disks

REPO = "localhost/qlite"
CACHE_REPO = "localhost/qlite-cache"
# Every home tags each revision it records with a tag of its own. The image
# store is shared, so these tags are the reference counts: an image leaves
# the store only when no home holds it any more.
HOME_REPO_PREFIX = "localhost/qlite-home-"
REVISIONS_TO_KEEP = 2  # the current one and the one before it
DEFAULT_UPDATE = "export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get -y upgrade && apt-get clean"


# The guest-tools layer's version (LABEL qlite.guest-tools in the top-level
# Containerfile) that qubes need: 2 made /home a link into /rw; 3 has the
# agent that container qubes run as their main process; 4 has it in C.
GUEST_TOOLS = 4


def guest_tools_version(info: ImageInfo) -> int:
    text = info.labels.get("qlite.guest-tools", "0")
    return int(text) if text.isdigit() else 0


def image_ref(template: str, rev: int) -> str:
    return f"{REPO}/{template}:{rev}"


def home_ref(home_hash: str, template: str, rev: int) -> str:
    return f"{HOME_REPO_PREFIX}{home_hash}/{template}:{rev}"


def tag_revision(tag: str, template: str) -> int | None:
    """N from a tag ``localhost/qlite/<template>:<N>``, else None."""
    prefix = f"{REPO}/{template}:"
    if tag.startswith(prefix) and tag[len(prefix) :].isdigit():
        return int(tag[len(prefix) :])
    return None


# What an update run changes whether or not it upgraded anything: apt's
# package lists, caches and locks, logs and scratch space, and /etc itself
# (the runtime mounts hosts, hostname and resolv.conf there).
UPDATE_NOISE_DIRS = ("/var/lib/apt/lists", "/var/cache/apt", "/var/log", "/tmp", "/var/tmp", "/run")
UPDATE_NOISE_PATHS = frozenset(
    {"/etc", "/var/lib/dpkg/lock", "/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/triggers/Lock"}
)


def meaningful_changes(changes: list[tuple[str, str]]) -> list[str]:
    """The paths an update changed that make a new revision worth having:
    not apt's bookkeeping (see UPDATE_NOISE_*), and not a directory whose
    only change is an entry listed on its own. Empty: nothing to upgrade. Pure."""
    paths = [path.rstrip("/") or "/" for _kind, path in changes]
    out = []
    for (kind, _), path in zip(changes, paths, strict=True):
        if path in UPDATE_NOISE_PATHS or any(path == d or path.startswith(d + "/") for d in UPDATE_NOISE_DIRS):
            continue
        if kind == "C" and any(other.startswith(path.rstrip("/") + "/") for other in paths):
            continue
        out.append(path)
    return out


def fingerprint(files: list[tuple[str, bytes]]) -> str:
    """Stable digest of a template definition (names and contents)."""
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@dataclass
class TemplateInfo:
    name: str
    current_rev: int | None
    image_id: str
    revisions: list[int]
    users: list[str]
    origin: str

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "class": "TemplateVM",
            "current_revision": self.current_rev,
            "image": image_ref(self.name, self.current_rev) if self.current_rev else None,
            "image_id": self.image_id,
            "revisions": self.revisions,
            "users": self.users,
            "origin": self.origin,
        }


class TemplateManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store

    # -- store -------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self.store.query_one("SELECT 1 FROM templates WHERE name=?", (name,)) is not None

    def get(self, name: str) -> Template:
        row = self.store.query_one("SELECT * FROM templates WHERE name=?", (name,))
        if row is None:
            raise TemplateNotFound(f"no such template: {name!r} (see 'qlite template list')")
        revs = [
            TemplateRevision(rev=r["rev"], image_id=r["image_id"], origin=r["origin"], created_at=r["created_at"])
            for r in self.store.query("SELECT * FROM template_revisions WHERE template=? ORDER BY rev", (name,))
        ]
        return Template(name=name, current_rev=row["current_rev"], revisions=revs)

    def current_image(self, name: str) -> str:
        current = self.get(name).current
        if current is None:
            raise StateError(f"template {name!r} has no built revision: run 'qlite template build {name}'")
        return current.image_id

    def _resolved(self, name: str) -> ImageInfo | None:
        current = self.get(name).current
        if current is None:
            return None
        return self.ctx.engine.inspect_image(home_ref(self.ctx.home_hash, name, current.rev))

    def resolved_image(self, name: str) -> str | None:
        """The image this home's tag of NAME's current revision points at now."""
        info = self._resolved(name)
        return info.id if info else None

    def images(self) -> list[tuple[str, str | None]]:
        return [(t.name, self.resolved_image(t.name)) for t in sorted(self.list(), key=lambda t: t.name)]

    def verified_image(self, name: str) -> str:
        """The current image of NAME, if it is still the one qlite recorded
        when it built, updated or adopted it, and carries the guest tools
        this qlite needs."""
        recorded = self.current_image(name)
        info = self._resolved(name)
        found = info.id if info else None
        if found != recorded:
            raise StateError(
                f"template {name}: its image was replaced outside qlite (recorded {recorded[:12]}, "
                f"now {found[:12] if found else 'missing'}); if you did that, approve it with "
                f"'qlite template approve {name}'"
            )
        assert info is not None
        if guest_tools_version(info) < GUEST_TOOLS:
            # Older guest tools have /home/user as a directory, which qlite
            # used to bind from the host: a path the qube could redirect.
            raise StateError(
                f"template {name} was built with older guest tools: rebuild it with 'qlite template build {name}'"
            )
        return recorded

    def approve(self, name: str) -> str:
        """Accept the image NAME's current revision now resolves to."""
        t = self.get(name)
        found = self.resolved_image(name)
        if t.current is None or found is None:
            raise NotFound(f"template {name} has no image to approve: rebuild it with 'qlite template build'")
        self.store.execute(
            "UPDATE template_revisions SET image_id=? WHERE template=? AND rev=?", (found, name, t.current_rev)
        )
        return found

    def users(self, name: str) -> list[str]:
        return sorted(q.name for q in self.ctx.qube_store.list() if q.template == name and not q.is_disposable)

    def info(self, t: Template) -> TemplateInfo:
        current = t.current
        return TemplateInfo(
            name=t.name,
            current_rev=t.current_rev,
            image_id=current.image_id if current else "",
            revisions=[r.rev for r in t.revisions],
            users=self.users(t.name),
            origin=current.origin if current else "",
        )

    def _record(self, name: str, rev: int, image_id: str, origin: str) -> TemplateRevision:
        self.ctx.engine.tag_image(image_id, home_ref(self.ctx.home_hash, name, rev))
        now = self.ctx.clock.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO templates(name, current_rev, created_at) VALUES(?, NULL, ?) ON CONFLICT(name) DO NOTHING",
                (name, now),
            )
            conn.execute(
                "INSERT INTO template_revisions(template, rev, image_id, origin, created_at) VALUES(?,?,?,?,?)",
                (name, rev, image_id, origin, now),
            )
            conn.execute("UPDATE templates SET current_rev=? WHERE name=?", (rev, name))
        return TemplateRevision(rev=rev, image_id=image_id, origin=origin, created_at=now)

    # -- definitions ----------------------------------------------------------

    def definition_dir(self, name: str) -> Path:
        validate_name(name)
        d = self.ctx.paths.images_dir / name
        if not (d / "Containerfile").is_file():
            raise TemplateNotFound(f"no template definition {d}/Containerfile")
        return d

    def available(self) -> list[str]:
        d = self.ctx.paths.images_dir
        return sorted(p.parent.name for p in d.glob("*/Containerfile")) if d.is_dir() else []

    def definition_fingerprint(self, name: str) -> str:
        files = _tree_files(self.definition_dir(name), f"images/{name}")
        files += [(f"guest/{rel}", src.read_bytes()) for rel, src in guest.guest_files(self.ctx.paths.guest_dir)]
        files.append(("Containerfile", self.ctx.paths.guest_containerfile.read_bytes()))
        return fingerprint(files)

    # -- build ------------------------------------------------------------------

    def build(self, name: str, progress: Progress, force: bool = False) -> tuple[TemplateRevision, bool]:
        """Build (or adopt) NAME from its definition. Returns the revision and
        whether anything new was recorded. A template whose current revision
        already matches its definition is left alone unless FORCE."""
        defdir = self.definition_dir(name)
        if self.ctx.qube_store.exists(name):
            raise AlreadyExists(f"a qube named {name!r} already exists")
        fp = self.definition_fingerprint(name)
        engine = self.ctx.engine
        with _image_lock():
            if self.exists(name) and not force:
                current = self.get(name).current
                if current is not None:
                    img = engine.inspect_image(current.image_id)
                    if img is not None and img.labels.get("qlite.build") == fp:
                        # Homes made before home tags existed get theirs here.
                        engine.tag_image(current.image_id, home_ref(self.ctx.home_hash, name, current.rev))
                        progress(f"template {name} is up to date (revision {current.rev})")
                        return current, False
            images = engine.list_images(f"{REPO}/{name}")
            adopted = None if force else self._adoptable(name, fp, images)
            if adopted is not None:
                rev, image = adopted
                progress(f"using the existing image {image_ref(name, rev)} ({image.id[:12]})")
                revision = self._record(name, rev, image.id, "adopted")
            else:
                rev = self._next_rev(name, images)
                image_id = self._build_image(name, defdir, fp, image_ref(name, rev), progress)
                revision = self._record(name, rev, image_id, "build")
        self._prune(name)  # keep the new revision and the one before it
        return revision, True

    def _adoptable(self, name: str, fp: str, images: list[ImageInfo]) -> tuple[int, ImageInfo] | None:
        best = None
        for img in images:
            if img.labels.get("qlite.build") != fp or img.labels.get("qlite.origin") != "build":
                continue
            for tag in img.tags:
                rev = tag_revision(tag, name)
                if rev is not None and (best is None or rev > best[0]):
                    best = (rev, img)
        if best is not None and self.exists(name):
            if any(r.rev == best[0] for r in self.get(name).revisions):
                return None
        return best

    def _next_rev(self, name: str, images: list[ImageInfo]) -> int:
        revs = [tag_revision(t, name) for img in images for t in img.tags]
        used = [r for r in revs if r is not None]
        if self.exists(name):
            used += [r.rev for r in self.get(name).revisions]
        return max(used, default=0) + 1

    def _build_image(self, name: str, defdir: Path, fp: str, ref: str, progress: Progress) -> str:
        engine = self.ctx.engine
        base_args: dict[str, str] = {}
        conf = defdir / "rootfs.conf"
        if conf.is_file():
            cfg = parse_rootfs_conf(conf.read_text())
            digest = hashlib.sha256(conf.read_bytes()).hexdigest()[:16]
            rootfs_ref = f"{CACHE_REPO}/rootfs-{name}:{digest}"
            if engine.inspect_image(rootfs_ref) is None:
                with tempfile.TemporaryDirectory(prefix="qlite-rootfs-", dir=_tmp_dir()) as tmp:
                    tar = Path(tmp) / "rootfs.tar"
                    build_rootfs(cfg, tar, progress)
                    engine.import_rootfs(str(tar), rootfs_ref, progress)
                # Older cached rootfs of this template are no longer wanted
                # (templates built on them keep their layers).
                for img in engine.list_images(f"{CACHE_REPO}/rootfs-{name}"):
                    for tag in img.tags:
                        if tag != rootfs_ref and tag.startswith(f"{CACHE_REPO}/rootfs-{name}:"):
                            engine.untag_image(tag)
            else:
                progress(f"reusing the cached root filesystem {rootfs_ref}")
            base_args["BASE"] = rootfs_ref
        stage_ref = f"{CACHE_REPO}/stage-{name}:{fp[:16]}"
        progress(f"building {name} from {defdir}/Containerfile")
        engine.build_image(str(defdir / "Containerfile"), str(defdir), stage_ref, base_args, {}, progress)
        progress("adding the qlite guest tools")
        labels = {"qlite.template": name, "qlite.build": fp, "qlite.origin": "build"}
        with tempfile.TemporaryDirectory(prefix="qlite-guest-") as context:
            guest.assemble(self.ctx.paths.guest_dir, Path(context))
            image_id = engine.build_image(
                str(self.ctx.paths.guest_containerfile),
                context,
                ref,
                {"BASE": stage_ref},
                labels,
                progress,
            )
        engine.untag_image(stage_ref)
        progress(f"built {ref} ({image_id[:12]})")
        return image_id

    # -- update, revert, remove -------------------------------------------------

    def update(self, name: str, progress: Progress) -> TemplateRevision:
        """Upgrade the template's packages in a sandbox and commit a new
        revision; the current one, unchanged, when there was nothing to
        upgrade (the update changed nothing but apt's own bookkeeping)."""
        t = self.get(name)
        current = t.current
        if current is None:
            raise StateError(f"template {name!r} has no built revision to update")
        engine = self.ctx.engine
        img = engine.inspect_image(current.image_id)
        if img is None:
            raise StateError(f"the image of {name!r} revision {current.rev} is missing; rebuild it")
        command = img.labels.get("qlite.update") or DEFAULT_UPDATE
        labels = engine_labels(self.ctx.home_hash, name, "template", current_owner())
        with _image_lock():
            rev = self._next_rev(name, engine.list_images(f"{REPO}/{name}"))
            ref = image_ref(name, rev)
            progress(f"updating {name} (revision {current.rev})")
            image_id = engine.update_image(
                current.image_id,
                ["/bin/sh", "-c", command],
                ref,
                labels,
                # The update container's labels would otherwise stay in the image.
                [
                    "LABEL qlite.origin=update",
                    f"LABEL qlite.parent={current.image_id}",
                    "LABEL qlite.home= qlite.owner= qlite.kind= qlite.qube=",
                ],
                progress,
                worth_committing=lambda changes: bool(meaningful_changes(changes)),
            )
            if image_id is None:
                progress(f"template {name} is up to date (revision {current.rev})")
                return current
            revision = self._record(name, rev, image_id, "update")
        self._prune(name)
        progress(f"{name} is now at revision {rev}; qubes use it from their next start")
        return revision

    def revert(self, name: str) -> TemplateRevision:
        """Go back one revision; the newer one is discarded."""
        t = self.get(name)
        older = [r for r in t.revisions if t.current_rev is not None and r.rev < t.current_rev]
        if not older:
            raise StateError(f"template {name!r} has no earlier revision to revert to")
        target = older[-1]
        if self.ctx.engine.inspect_image(target.image_id) is None:
            raise StateError(f"the image of {name!r} revision {target.rev} is missing; cannot revert")
        dropped = [r for r in t.revisions if r.rev > target.rev]
        with self.store.transaction() as conn:
            conn.execute("UPDATE templates SET current_rev=? WHERE name=?", (target.rev, name))
            for r in dropped:
                conn.execute("DELETE FROM template_revisions WHERE template=? AND rev=?", (name, r.rev))
        for r in dropped:
            self._drop_image(name, r)
        self.collect_garbage(name)
        return target

    def remove(self, name: str) -> None:
        t = self.get(name)
        users = self.users(name)
        if GlobalPrefs(self.store).get("default_template") == name:
            users.append("global default_template")
        if users:
            raise InUse(f"template {name!r} is still used by: {', '.join(users)}")
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM templates WHERE name=?", (name,))
        for r in t.revisions:
            self._drop_image(name, r)
        self.collect_garbage(name)

    def _prune(self, name: str) -> None:
        t = self.get(name)
        keep = {r.rev for r in t.revisions[-REVISIONS_TO_KEEP:]} | {t.current_rev}
        for r in t.revisions:
            if r.rev not in keep:
                self.store.execute("DELETE FROM template_revisions WHERE template=? AND rev=?", (name, r.rev))
                self._drop_image(name, r)
        self.collect_garbage(name)

    def _drop_image(self, name: str, r: TemplateRevision) -> None:
        """Release this home's hold on a revision's image. The shared tag
        goes, and the image with it, once no other home holds it; an image
        a container still runs stays until collect_garbage finds it unused."""
        engine = self.ctx.engine
        engine.untag_image(home_ref(self.ctx.home_hash, name, r.rev))
        img = engine.inspect_image(r.image_id)
        if img is None or any(t.startswith(HOME_REPO_PREFIX) for t in img.tags):
            return
        engine.untag_image(image_ref(name, r.rev))
        with contextlib.suppress(EngineError):  # in use: left for collect_garbage
            engine.remove_image(r.image_id)

    def collect_garbage(self, name: str | None = None) -> list[str]:
        """Remove template images that no home tags and no container uses,
        and the VM root disks of images no revision here uses."""
        prune_root_disks(self.ctx.paths, {r.image_id for t in self.list() for r in t.revisions})
        return self.ctx.engine.prune_images("qlite.template", name)

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[Template]:
        return [self.get(r["name"]) for r in self.store.query("SELECT name FROM templates ORDER BY name")]


def _tree_files(root: Path, prefix: str) -> list[tuple[str, bytes]]:
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out.append((f"{prefix}/{path.relative_to(root)}", path.read_bytes()))
    return out


def _tmp_dir() -> str:
    # mmdebstrap writes ~200 MB; prefer disk over a small tmpfs /tmp.
    for d in ("/var/tmp", tempfile.gettempdir()):
        if os.access(d, os.W_OK):
            return d
    return tempfile.gettempdir()


def _image_lock() -> contextlib.AbstractContextManager[None]:
    """Serialises revision numbering across every home sharing the store."""
    path = IMAGE_LOCK if os.access(IMAGE_LOCK.parent, os.W_OK) else Path(tempfile.gettempdir()) / IMAGE_LOCK.name
    return file_lock(path)
