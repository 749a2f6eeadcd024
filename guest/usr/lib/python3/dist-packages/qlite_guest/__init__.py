"""qlite's guest tools: the qube side of qlite's RPC (docs/rpc.md).

Everything here runs inside a qube, on the template's own python3, and uses
the standard library only. Three modules are not in the repository's
guest/ folder: template builds copy them in from qlite (``wire`` from
qlite/rpc/wire.py, ``channel`` from qlite/agent/channel.py and ``frames``,
the codec under both, from qlite/agent/frames.py), so that both sides
share one file each.
"""
