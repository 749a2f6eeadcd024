"""The runsc runtime: probing what works on this host and generating the
wrappers and containers.conf that qlite's podman service uses."""
