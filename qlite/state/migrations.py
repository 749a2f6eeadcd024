"""Versioned schema migrations. Version N is MIGRATIONS[N-1]; never edit a
released entry, append a new one."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: qubes, their tags and features, templates and their revisions, prefs.
    """
    CREATE TABLE qubes (
        name                 TEXT PRIMARY KEY,
        class                TEXT NOT NULL,
        label                TEXT NOT NULL,
        template             TEXT,
        netvm                TEXT,            -- NULL: follow default_netvm; '': none
        provides_network     INTEGER NOT NULL DEFAULT 0,
        memory               INTEGER NOT NULL,
        maxmem               INTEGER NOT NULL DEFAULT 0,
        vcpus                INTEGER NOT NULL,
        autostart            INTEGER NOT NULL DEFAULT 0,
        default_dispvm       TEXT,            -- NULL: follow the global pref
        template_for_dispvms INTEGER NOT NULL DEFAULT 0,
        default_user         TEXT NOT NULL DEFAULT 'user',
        include_in_backups   INTEGER NOT NULL DEFAULT 1,
        mode                 TEXT NOT NULL DEFAULT 'container',
        owner                TEXT,            -- disposables: "pid:start_time"
        created_at           REAL NOT NULL
    );
    CREATE TABLE tags (
        qube TEXT NOT NULL REFERENCES qubes(name) ON DELETE CASCADE ON UPDATE CASCADE,
        tag  TEXT NOT NULL,
        PRIMARY KEY (qube, tag)
    );
    -- features may also belong to dom0, which has no row in qubes.
    CREATE TABLE features (
        qube  TEXT NOT NULL,
        key   TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (qube, key)
    );
    CREATE TABLE templates (
        name        TEXT PRIMARY KEY,
        current_rev INTEGER,
        created_at  REAL NOT NULL
    );
    CREATE TABLE template_revisions (
        template   TEXT NOT NULL REFERENCES templates(name) ON DELETE CASCADE,
        rev        INTEGER NOT NULL,
        image_id   TEXT NOT NULL,
        origin     TEXT NOT NULL,             -- build | update | adopted
        created_at REAL NOT NULL,
        PRIMARY KEY (template, rev)
    );
    CREATE TABLE global_prefs (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: per-qube firewall rules (a JSON list; no row means the default).
    """
    CREATE TABLE firewall (
        qube  TEXT PRIMARY KEY REFERENCES qubes(name) ON DELETE CASCADE ON UPDATE CASCADE,
        rules TEXT NOT NULL
    );
    """,
    # 3: block devices: persistent assignments (and pairings), and who has what now.
    """
    CREATE TABLE device_assignments (
        qube      TEXT NOT NULL REFERENCES qubes(name) ON DELETE CASCADE ON UPDATE CASCADE,
        ident     TEXT NOT NULL,             -- uuid:U | serial:S | dev:NAME
        read_only INTEGER NOT NULL DEFAULT 0,
        required  INTEGER NOT NULL DEFAULT 0,  -- the qube does not start without it
        paired    INTEGER NOT NULL DEFAULT 0,  -- runs only while it is present
        PRIMARY KEY (qube, ident)
    );
    CREATE TABLE device_attachments (
        device      TEXT PRIMARY KEY,          -- kernel name: one qube at a time
        qube        TEXT NOT NULL,
        ident       TEXT NOT NULL,
        read_only   INTEGER NOT NULL,
        how         TEXT NOT NULL,             -- mount (container) | block (VM)
        target      TEXT NOT NULL,             -- host mount point, or QEMU node name
        attached_at REAL NOT NULL
    );
    """,
    # 4: a create, clone or remove in progress: the "pid:start_time" of the
    # process doing it. If that process dies, reconcile finishes the job (a
    # create or clone is rolled back; a remove is completed).
    """
    ALTER TABLE qubes ADD COLUMN pending TEXT;
    """,
    # 5: every qube's identity, as in Qubes 4.2+. Names come back (dispNNNN,
    # a qube re-created under an old name); what is remembered about a
    # qube (approvals, grants) is keyed by its uuid, which never does.
    """
    ALTER TABLE qubes ADD COLUMN uuid TEXT;
    UPDATE qubes SET uuid = lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
        || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1)
        || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)));
    CREATE UNIQUE INDEX qubes_uuid ON qubes(uuid);
    """,
]
