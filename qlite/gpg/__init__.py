"""Split GPG: keys in an offline vault qube, used by other qubes over RPC."""
