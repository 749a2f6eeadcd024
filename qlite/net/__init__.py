"""Per-qube networks, gateway qubes and the Qubes firewall on nftables."""
