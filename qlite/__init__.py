"""qlite: Qubes OS-style compartments on an ordinary Linux laptop."""

__version__ = "0.1.0"
