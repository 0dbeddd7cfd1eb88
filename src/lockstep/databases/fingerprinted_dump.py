"""A dump running beside a session that reads the same snapshot, fingerprinted as it streams.

PostgreSQL (an exported snapshot) and MariaDB (a consistent-snapshot transaction begun under a
brief read lock) get there in different ways, but from then on both are alike: a dump tool
streams, a session holds the snapshot open, the snapshot's row counts and checksums are computed
on a thread from the start, and the session may end only once the dump and the fingerprint are
both done. That protocol lives here once; each engine says how to fingerprint, how to interrupt
a fingerprint, and how to close its session.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import IO

from lockstep.databases.base import DatabaseInfo
from lockstep.process import StreamingProcess


class FingerprintedDump(ABC):
    """A caller that streams the dump first and asks `consistent_info()` afterwards waits only
    for the slower of the two (`fingerprints_while_dumping` tells it so).

    Subclasses set up their session before calling `__init__`, which starts the fingerprint.
    """

    fingerprints_while_dumping = True

    def __init__(self, process: StreamingProcess, thread_name: str) -> None:
        self._process = process
        self.command = process.command
        self.stdout: IO[bytes] = process.stdout
        self._info: DatabaseInfo | None = None
        self._error: BaseException | None = None
        self._fingerprinting = threading.Thread(target=self._run_fingerprint, name=thread_name, daemon=True)
        self._fingerprinting.start()

    def consistent_info(self) -> DatabaseInfo:
        """Counts and checksums from the dump's own snapshot (waits for them if needed)."""
        self._fingerprinting.join()
        if self._error is not None:
            raise self._explain(self._error)
        assert self._info is not None
        return self._info

    def finish(self) -> None:
        """Wait for the dump and the fingerprint; the session ends only when both are done."""
        try:
            self._process.finish()
        except BaseException:
            self._stop_fingerprint()
            raise
        finally:
            self._fingerprinting.join()
            self._close_session()

    def kill(self) -> None:
        try:
            self._process.kill()
        finally:
            self._stop_fingerprint()
            self._close_session()

    def _run_fingerprint(self) -> None:
        try:
            self._info = self._fingerprint()
        except BaseException as error:  # handed to consistent_info(), in the caller's thread
            self._error = error

    def _explain(self, error: BaseException) -> BaseException:
        """What to raise for a failed fingerprint; an engine may turn its driver's errors into
        a clear `SourceError`."""
        return error

    @abstractmethod
    def _fingerprint(self) -> DatabaseInfo:
        """Row counts and checksums, read in the session's snapshot (runs on the thread)."""

    @abstractmethod
    def _stop_fingerprint(self) -> None:
        """Interrupt a fingerprint still running (the dump failed) and wait for its thread."""

    @abstractmethod
    def _close_session(self) -> None:
        """End the session and with it the snapshot; may be called more than once."""
