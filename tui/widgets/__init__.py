"""Widgets of the qlite TUI."""
