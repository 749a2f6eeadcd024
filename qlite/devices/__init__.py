"""Removable block devices: identities, attachment to qubes, pairing."""
