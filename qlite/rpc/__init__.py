"""qrexec-style RPC: the policy engine, the broker and the services."""
