"""Container and VM engines. Only this package imports podman-py, the docker
SDK or qemu.qmp; everything else sees the dataclasses in ``base``."""
