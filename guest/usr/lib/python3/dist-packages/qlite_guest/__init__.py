"""qlite's guest tools: the qube side of qlite's RPC (docs/rpc.md).

Everything here runs inside a qube, on the template's own python3, and uses
the standard library only. ``wire`` (the frame codec) is not in the
repository's guest/ folder: template builds copy it in from qlite/rpc/wire.py
so that both sides share one file.
"""
