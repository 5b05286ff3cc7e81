"""How the framework's one-line messages and tables quote an error and a setting. The lowest layer's
helpers (data is imported by engine/ and analysis/, never the other way), so every message reads alike."""

from __future__ import annotations

from typing import Any


def first_line(err: BaseException) -> str:
    """An error's first non-empty line (its type's name when it has no text)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def as_typed(value: Any) -> str:
    """A setting as it is typed on the command line: 10 (not 10.0), true, null."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
