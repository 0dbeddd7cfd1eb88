"""Small helpers for user-facing wording shared by the CLI and the actions."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`1 table`, `2 tables`: a number with its noun in the singular for exactly one."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {plural if plural is not None else noun + 's'}"


__all__ = ["counted"]
