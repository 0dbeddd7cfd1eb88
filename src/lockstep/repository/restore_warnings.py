"""What a restore could not do, file by file, and the same said once for many files.

Restored by another user, or onto another file system, one problem (no owner, no extended
attribute, a skipped socket) usually hits every file alike: a line per file buries the one
thing the user needs to know, so a problem is kept apart from the path it hit.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.wording import counted

# The restorer's problem for a device node restored by anyone but root (restic skips them too).
ONLY_ROOT_CREATES_DEVICES = "skipped device (only root can create devices)"


@dataclass(frozen=True)
class RestoreWarning:
    """One problem on one path: `problem` names it without the path (the key that groups it),
    `text` is the full sentence for this path alone."""

    problem: str
    text: str
    path: str | None = None

    def __str__(self) -> str:
        return self.text


def summarise_warnings(warnings: list[RestoreWarning]) -> list[str]:
    """One line per distinct problem, in the order first met: the full sentence when it hit one
    path, "PROBLEM on N files (first: PATH)" when it hit more."""
    groups: dict[str, list[RestoreWarning]] = {}
    for warning in warnings:
        groups.setdefault(warning.problem, []).append(warning)
    lines: list[str] = []
    for problem, hits in groups.items():
        if len(hits) == 1 or hits[0].path is None:
            lines.extend(dict.fromkeys(hit.text for hit in hits))
        else:
            lines.append(f"{problem} on {counted(len(hits), 'file')} (first: {hits[0].path})")
    return lines


__all__ = ["ONLY_ROOT_CREATES_DEVICES", "RestoreWarning", "summarise_warnings"]
