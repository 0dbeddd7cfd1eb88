"""Who is writing: the user name recorded in snapshots, key files and locks, as restic records it."""

from __future__ import annotations

import getpass


def current_user() -> str:
    """The login name, or "" when the system cannot say (no passwd entry, no environment)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
