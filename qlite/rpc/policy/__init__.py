"""The qrexec policy engine: Qubes 4.1+ policy files, parsed and evaluated.

Pure, except for ``files.read_policy_path``, the one function that reads
policy files. The broker loads a ``Policy`` with ``load_policy`` and asks
``evaluate`` about each call against a frozen ``System`` snapshot.
"""

from __future__ import annotations

from qlite.rpc.policy.evaluate import QubeFacts, Request, Resolution, System, answer_ask, evaluate
from qlite.rpc.policy.files import policy_dirs
from qlite.rpc.policy.parser import Policy, Rule, lint, load_policy, parse_policy, unknown_qubes

__all__ = [
    "Policy",
    "QubeFacts",
    "Request",
    "Resolution",
    "Rule",
    "System",
    "answer_ask",
    "evaluate",
    "lint",
    "load_policy",
    "parse_policy",
    "policy_dirs",
    "unknown_qubes",
]
