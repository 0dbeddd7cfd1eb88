"""Traffic holds: who asked for one, and whether that process still lives.

A hold (pause) makes the traffic switch keep new requests waiting while a data rollback replaces
the databases, so no request meets a release on the wrong schema. A hold names the process that
asked for it: when that process dies (kill -9, a crash mid-rollback) the hold must end, or the site
stays paused with nobody left to resume it. A PID alone can be reused by an unrelated process, so
the owner is the PID together with its start time in clock ticks since boot (/proc/PID/stat).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lockstep.process import process_start_ticks as process_start_ticks  # re-exported: the proxies use it

# Seconds a client is told to wait (Retry-After) when a hold answers 503 instead of holding on.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class HoldOwner:
    """The process a hold belongs to: its PID and start time (None where /proc is missing)."""

    pid: int
    start_ticks: int | None

    @classmethod
    def this_process(cls) -> HoldOwner:
        return cls(os.getpid(), process_start_ticks(os.getpid()))

    def alive(self) -> bool:
        """Whether the owner still runs: the same PID with the same start time, not a zombie."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        try:
            with open(f"/proc/{self.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return self.start_ticks is None  # no /proc: the signal check is all there is
        if fields[0] in ("Z", "X"):
            return False
        return self.start_ticks is None or int(fields[19]) == self.start_ticks

    def to_document(self) -> dict[str, int | None]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_document(cls, document: object) -> HoldOwner:
        if not isinstance(document, dict) or not isinstance(document.get("pid"), int) or document["pid"] <= 0:
            raise ValueError("a hold owner is {pid: N, start_ticks: N | null} with N > 0")
        ticks = document.get("start_ticks")
        return cls(int(document["pid"]), int(ticks) if isinstance(ticks, int) else None)
