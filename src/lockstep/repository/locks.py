"""Repository locks, compatible with restic's (§11).

Any number of shared locks (backup, restore, check without changes) may coexist; an exclusive
lock (forget, prune) needs the repository to itself. A lock is refreshed every five minutes
by writing a new lock file and removing the old one; a lock not refreshed for 30 minutes, or
held by a dead process on this host, is stale. Stale locks still block until `unlock`.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockstep.errors import IntegrityError, LockstepError, RepositoryLocked
from lockstep.fault_injection import wait_point
from lockstep.process import process_alive
from lockstep.repository.gojson import format_time_ns, parse_time_ns
from lockstep.repository.identity import current_user
from lockstep.storage.base import FileMissing, FileType

if TYPE_CHECKING:
    from lockstep.repository.repository import Repository

STALE_AFTER_SECONDS = 30 * 60
REFRESH_EVERY_SECONDS = 5 * 60
RECHECK_DELAY_SECONDS = 0.2


@dataclass(frozen=True)
class LockInfo:
    """One lock file's content, with its storage ID."""

    id: str
    time: str
    exclusive: bool
    hostname: str
    username: str
    pid: int
    unreadable: bool = False  # damaged or empty: only `unlock --remove-all` lists these

    @property
    def age_seconds(self) -> float:
        """Seconds since the lock was written. A time that cannot be read counts as infinitely
        old (restic reads a missing time as Go's zero time, which is stale too)."""
        try:
            written_ns = parse_time_ns(self.time)
        except ValueError:
            return math.inf
        return max(0.0, time.time() - written_ns / 1e9)

    def is_stale(self) -> bool:
        """Older than 30 minutes, or held by a process of this host that no longer runs (a
        zombie included: restic's kill(pid, 0) alone would see it, but it never releases)."""
        if self.age_seconds > STALE_AFTER_SECONDS:
            return True
        if self.hostname == socket.gethostname() and self.pid > 0:
            return not process_alive(self.pid)
        return False

    def describe(self) -> str:
        if self.unreadable:
            return f"unreadable lock file {self.id[:8]}"
        kind = "exclusive" if self.exclusive else "shared"
        state = " (stale)" if self.is_stale() else ""
        return (
            f"{kind} lock {self.id[:8]} held by {self.username or '?'}@{self.hostname or '?'} "
            f"PID {self.pid}, {_human_age(self.age_seconds)} old{state}"
        )


def _human_age(seconds: float) -> str:
    if math.isinf(seconds):
        return "an unknown time"
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.1f} h"


def _lock_document(exclusive: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "time": format_time_ns(time.time_ns()),
        "exclusive": exclusive,
        "hostname": socket.gethostname(),
    }
    username = current_user()
    if username:
        document["username"] = username
    document["pid"] = os.getpid()
    if os.getuid():
        document["uid"] = os.getuid()
    if os.getgid():
        document["gid"] = os.getgid()
    return document


def list_locks(repository: Repository) -> list[LockInfo]:
    """Every readable lock in the repository; empty or vanished lock files are skipped."""
    locks = []
    for name, size in repository.backend.list(FileType.LOCK):
        if size == 0:
            continue
        try:
            document = repository.load_unpacked(FileType.LOCK, name)
        except FileMissing:
            continue
        except IntegrityError:
            continue
        locks.append(
            LockInfo(
                id=name,
                time=str(document.get("time", "")),
                exclusive=bool(document.get("exclusive", False)),
                hostname=str(document.get("hostname", "")),
                username=str(document.get("username", "")),
                pid=int(document.get("pid") or 0),
            )
        )
    return locks


def _conflicts(locks: list[LockInfo], exclusive: bool, own_id: str | None) -> list[LockInfo]:
    others = [lock for lock in locks if lock.id != own_id]
    if exclusive:
        return others
    return [lock for lock in others if lock.exclusive]


class RepositoryLock:
    """A held lock that refreshes itself in a background thread until released."""

    def __init__(self, repository: Repository, exclusive: bool) -> None:
        self.repository = repository
        self.exclusive = exclusive
        self.lock_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._recheck: _DeferredRecheck | None = None

    def acquire(self, wait_seconds: float = 0.0, defer_recheck: bool = False) -> None:
        """Write our lock, then look again; back off and retry until `wait_seconds` pass.

        With `defer_recheck` (writers whose work stays invisible until they commit, such as a
        backup: its packs are unreferenced until the index names them), the second look happens
        on a background thread instead of stalling the caller for RECHECK_DELAY_SECONDS. The
        repository then refuses to write an index or snapshot until that look has found no
        competing lock, and a conflict found makes the writer abort (and remove its packs), as
        it would have refused to start. Only without a wait: a conflict cannot be waited out
        once the work has begun."""
        if defer_recheck and wait_seconds <= 0:
            conflicts = _conflicts(list_locks(self.repository), self.exclusive, None)
            if conflicts:
                raise self._locked_error(conflicts)
            self.lock_id = self.repository.save_unpacked(FileType.LOCK, _lock_document(self.exclusive))
            self._recheck = _DeferredRecheck(self)
            self.repository.add_commit_guard(self._recheck.confirm)
            self._start_refresh()
            return
        deadline = time.monotonic() + wait_seconds
        delay = 1.0
        while True:
            conflicts = _conflicts(list_locks(self.repository), self.exclusive, None)
            if not conflicts:
                self.lock_id = self.repository.save_unpacked(FileType.LOCK, _lock_document(self.exclusive))
                time.sleep(RECHECK_DELAY_SECONDS)
                conflicts = _conflicts(list_locks(self.repository), self.exclusive, self.lock_id)
                if not conflicts:
                    break
                self.repository.backend.remove(FileType.LOCK, self.lock_id)
                self.lock_id = None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._locked_error(conflicts)
            # Never sleep past the deadline, and look once more when it comes: the whole wait counts.
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 30.0)
        self._start_refresh()

    def _locked_error(self, conflicts: list[LockInfo]) -> RepositoryLocked:
        return RepositoryLocked(
            f"the repository at {self.repository.backend.location} is locked: "
            + "; ".join(lock.describe() for lock in conflicts[:3]),
            "wait for it to finish; if the lock is stale, remove it with `lockstep repo unlock`",
        )

    def _start_refresh(self) -> None:
        self._thread = threading.Thread(target=self._refresh_loop, name="lockstep-lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY_SECONDS):
            # A failed refresh is tried again next time, as restic does: the lock only goes
            # stale after 30 minutes without one, while a dead thread would never refresh again.
            with suppress(LockstepError, OSError):
                self.refresh()

    def refresh(self) -> None:
        """Write a fresh lock file, then delete the old one (as restic does)."""
        with self._mutex:
            if self.lock_id is None:
                return
            old_id = self.lock_id
            self.lock_id = self.repository.save_unpacked(FileType.LOCK, _lock_document(self.exclusive))
            self.repository.backend.remove(FileType.LOCK, old_id)

    def release(self) -> None:
        self._stop.set()
        if self._recheck is not None:
            self.repository.remove_commit_guard(self._recheck.confirm)
            self._recheck.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._mutex:
            if self.lock_id is not None:
                self.repository.backend.remove(FileType.LOCK, self.lock_id)
                self.lock_id = None


class _DeferredRecheck:
    """The second look for competing locks, RECHECK_DELAY_SECONDS after ours was written, on a
    thread; `confirm` is the repository's commit guard."""

    def __init__(self, lock: RepositoryLock) -> None:
        self._lock = lock
        self._cancelled = threading.Event()
        self._conflicts: list[LockInfo] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lockstep-lock-recheck", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cancelled.wait(RECHECK_DELAY_SECONDS):
            return
        wait_point("lock recheck")  # tests: a competitor locks the repository just before this look
        try:
            self._conflicts = _conflicts(list_locks(self._lock.repository), self._lock.exclusive, self._lock.lock_id)
        except BaseException as error:  # handed to the writer by confirm()
            self._error = error

    def confirm(self, wait: bool) -> None:
        """Raise RepositoryLocked if the second look found a competing lock. With `wait`, first
        wait for the look (before a commit); without, only report a result already known."""
        if wait:
            self._thread.join()
        elif self._thread.is_alive():
            return
        if self._error is not None:
            raise self._error
        if self._conflicts:
            raise self._lock._locked_error(self._conflicts)

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()


@contextmanager
def locked(
    repository: Repository, exclusive: bool = False, wait_seconds: float = 0.0, defer_recheck: bool = False
) -> Iterator[RepositoryLock]:
    """Hold a repository lock for the duration of a `with` block (see RepositoryLock.acquire
    for `defer_recheck`).

    A lock that cannot be removed at the end (the storage went away) is a warning, as in
    restic: it must not hide why the block failed, nor turn work already committed into a
    failure. The lock left behind goes stale and `lockstep repo unlock` removes it."""
    lock = RepositoryLock(repository, exclusive)
    lock.acquire(wait_seconds, defer_recheck=defer_recheck)
    try:
        yield lock
    finally:
        lock_id = lock.lock_id
        try:
            lock.release()
        except (LockstepError, OSError) as error:
            reason = error.message if isinstance(error, LockstepError) else str(error)
            repository.warn(
                f"could not remove lock {(lock_id or '?')[:8]} ({reason}); "
                "it blocks other commands until `lockstep repo unlock` removes it"
            )


def remove_locks(repository: Repository, remove_all: bool = False) -> list[LockInfo]:
    """Delete stale locks (or every lock file with remove_all, unreadable ones included, as
    `restic unlock --remove-all` does); returns what was removed."""
    removed = []
    readable = list_locks(repository)
    for lock in readable:
        if remove_all or lock.is_stale():
            repository.backend.remove(FileType.LOCK, lock.id)
            removed.append(lock)
    if remove_all:
        # A damaged or empty lock file is skipped when locks are checked, so it never blocks,
        # but "remove every lock" must not leave it behind for ever either.
        known = {lock.id for lock in readable}
        for name, _ in list(repository.backend.list(FileType.LOCK)):
            if name not in known:
                repository.backend.remove(FileType.LOCK, name)
                removed.append(LockInfo(name, "", False, "", "", 0, unreadable=True))
    return removed
