"""Anti-evil-maid: a measured launch of qlite, a sealed secret, checked templates."""
