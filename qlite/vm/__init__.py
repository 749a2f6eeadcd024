"""VM mode: qubes as QEMU hardware VMs booted from their template."""
