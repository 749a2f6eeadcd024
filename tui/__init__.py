"""qlite's Textual TUI (``qlite tui``). It talks only to qlite's core API."""
