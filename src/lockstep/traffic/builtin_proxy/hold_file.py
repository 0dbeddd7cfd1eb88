"""The proxy's hold, kept on disk while it lasts, so a proxy restarted mid-hold resumes it.

A data rollback holds the traffic while it replaces the databases. If the proxy dies then
(kill -9, the OOM killer) and the agent starts it again, a proxy that forgot the hold would
serve at once, possibly the newer release on data being restored. So the hold (its owner's PID
and start time, its deadline on the wall clock) is written, atomically and fsynced, before it
takes effect and removed when it ends; a proxy that starts resumes it under the same rules:
until it is released, past the deadline 503 + Retry-After, and it ends when the owner is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lockstep.traffic.builtin_proxy import HOLD_FILE_NAME
from lockstep.traffic.hold import HoldOwner


@dataclass(frozen=True)
class PersistedHold:
    """A hold as written to disk: times on the wall clock, which (unlike the event loop's
    clock) a new process can compare with."""

    owner: HoldOwner
    timeout: float
    started_at: float  # time.time() when the hold began

    def to_document(self) -> dict[str, object]:
        return {"owner": self.owner.to_document(), "timeout": self.timeout, "started_at": self.started_at}


def write_hold_file(state_directory: Path, hold: PersistedHold) -> None:
    temporary = state_directory / f".{HOLD_FILE_NAME}.{os.getpid()}"
    with temporary.open("w") as handle:
        json.dump(hold.to_document(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, state_directory / HOLD_FILE_NAME)


def read_hold_file(state_directory: Path) -> PersistedHold | None:
    """The persisted hold, or None (also for an unreadable file: a hold nobody can describe
    cannot be resumed, and the owner's rollback still fails or ends on its own)."""
    try:
        document = json.loads((state_directory / HOLD_FILE_NAME).read_text())
        return PersistedHold(
            HoldOwner.from_document(document["owner"]), float(document["timeout"]), float(document["started_at"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_hold_file(state_directory: Path) -> None:
    (state_directory / HOLD_FILE_NAME).unlink(missing_ok=True)
