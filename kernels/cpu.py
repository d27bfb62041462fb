"""Native CPU backend (placeholder until the C library lands)."""

from __future__ import annotations


def is_available() -> bool:
    """True if the native CPU library is built and loads."""
    return False
