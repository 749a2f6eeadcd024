"""``qlite`` commands served by the daemon: a thin client (the console
script) and the fork server it talks to, which has the CLI imported."""
