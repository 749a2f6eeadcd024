#!/usr/bin/python3 -SE
"""qrexec-client-vm TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]: call a qlite RPC service.

/usr/bin/qrexec-client-vm is the C client (guest-src/qrexec-client.c); it
runs this one for what it does not handle itself (a local program, --help,
bad names)."""
import os
import sys

# -S (no site: a faster start) leaves dist-packages out. The guest tools'
# own is found from this file's real location, so that a tree laid out
# elsewhere (the tests) uses its own copy; a copy of this file elsewhere
# still finds the template's.
sys.path += [os.path.join(os.path.dirname(os.path.realpath(__file__)), "../python3/dist-packages"),
             "/usr/lib/python3/dist-packages"]

from qlite_guest.client import main

sys.exit(main(sys.argv[1:]))
