"""The core API shared by the CLI, the TUI and the daemon."""
