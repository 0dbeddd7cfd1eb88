"""The proxy's durable state: which upstream port is active (and, while one lasts, the hold:
hold_file.py).

Written (atomically, fsynced) before a switch takes effect, so a proxy restarted after a crash
or a reboot resumes the upstream it last switched to, never an older one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lockstep.traffic.builtin_proxy import STATE_FILE_NAME


def write_upstream_file(state_directory: Path, port: int) -> None:
    """Persist the active upstream atomically, so a restarted proxy resumes it."""
    temporary = state_directory / f".{STATE_FILE_NAME}.{os.getpid()}"
    with temporary.open("w") as handle:
        json.dump({"active_port": port}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, state_directory / STATE_FILE_NAME)


def read_upstream_file(state_directory: Path) -> int | None:
    try:
        port = json.loads((state_directory / STATE_FILE_NAME).read_text())["active_port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) else None
