"""Screens of the qlite TUI."""
