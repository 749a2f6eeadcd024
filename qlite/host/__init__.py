"""The host's side effects that Context hands out as seams: mounts, the
kernel's network state (nftables, links), and the daemon's control socket.
Each is a leaf: it imports nothing of qlite's but errors, paths and tools."""
