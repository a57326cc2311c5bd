"""How the service's SQLite connections turn stored TEXT into str (``connection.text_factory``)."""

from __future__ import annotations


def lenient_text(data: bytes) -> str:
    """Stored text as str even when it is not UTF-8 (a hand edit, another tool): bad bytes escaped.

    A read must never fail on stored data; valid UTF-8 reads unchanged.
    """
    return data.decode("utf-8", "backslashreplace")
