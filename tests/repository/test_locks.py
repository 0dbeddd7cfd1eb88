"""Repository locks: compatible with restic's in both directions, stale detection, refresh, waiting."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lockstep.errors import RepositoryLocked, StorageError
from lockstep.repository import locks
from lockstep.repository.archiver import Archiver
from lockstep.repository.blobs import BlobType
from lockstep.repository.gojson import format_time_ns, parse_time_ns
from lockstep.repository.locks import RepositoryLock, list_locks, locked, remove_locks
from lockstep.repository.repository import Repository
from lockstep.storage.base import Backend, FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_restic

# A process that opens the repository with the engine, takes a lock, prints its ID, then holds it
# for argv[3] seconds (or until killed) and releases it. argv: location, "exclusive"|"shared", seconds.
LOCK_HOLDER_SCRIPT = """
import sys, time
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend

repository = Repository.open(open_backend(sys.argv[1]), sys.argv[4])
with locked(repository, exclusive=sys.argv[2] == "exclusive") as lock:
    print(lock.lock_id, flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


@contextmanager
def lock_holder(location: str, exclusive: bool, seconds: float) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Another process holding a lockstep lock; yields it and its lock ID once the lock is held."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LOCK_HOLDER_SCRIPT,
            location,
            "exclusive" if exclusive else "shared",
            str(seconds),
            TEST_PASSWORD,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lock_id = process.stdout.readline().strip()
        assert len(lock_id) == 64, f"the holder did not lock: {lock_id!r}"
        yield process, lock_id
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def restic_backup_holding_lock(repository_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`restic backup --stdin` fed through a pipe we keep open, so restic holds its lock until we close it."""
    locks_directory = repository_path / "locks"
    before = set(os.listdir(locks_directory))
    process = subprocess.Popen(
        ["restic", "backup", "--stdin", "--stdin-filename", "slow.txt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={
            **os.environ,
            "RESTIC_REPOSITORY": str(repository_path),
            "RESTIC_PASSWORD": TEST_PASSWORD,
            "RESTIC_CACHE_DIR": "/tmp/lockstep-tests-restic-cache",
        },
    )
    assert process.stdin is not None
    try:
        process.stdin.write(b"the first part of a slow stream\n")
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not (new := set(os.listdir(locks_directory)) - before):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "restic never took its lock"
            time.sleep(0.05)
        (lock_id,) = new
        yield process, lock_id
        process.stdin.write(b"and the end of it\n")
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def repository_path(tmp_path: Path) -> Path:
    return tmp_path / "repository"


@pytest.fixture
def repository(repository_path: Path) -> Iterator[Repository]:
    opened = Repository.init(LocalBackend(repository_path), TEST_PASSWORD)
    yield opened
    opened.close()


def lock_file_names(backend: Backend) -> set[str]:
    return {name for name, _ in backend.list(FileType.LOCK)}


def write_lock(
    repository: Repository,
    *,
    pid: int,
    hostname: str | None = None,
    age_seconds: float = 0.0,
    exclusive: bool = False,
    time_text: str | None = None,
) -> str:
    """Store a lock document as restic would, with any owner and age; returns its ID."""
    document: dict[str, Any] = {
        "time": time_text if time_text is not None else format_time_ns(time.time_ns() - int(age_seconds * 1e9)),
        "exclusive": exclusive,
        "hostname": socket.gethostname() if hostname is None else hostname,
        "username": "someone",
        "pid": pid,
    }
    return repository.save_unpacked(FileType.LOCK, document)


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    return process.pid


# --- compatibility with restic ---------------------------------------------------------------


def test_lockstep_lock_is_listed_by_restic_and_blocks_restic_check(
    repository: Repository, repository_path: Path, restic_binary: str
) -> None:
    with locked(repository) as lock:
        listed = run_restic(str(repository_path), ["list", "locks"])
        assert listed.returncode == 0, listed.err
        assert listed.out.split() == [lock.lock_id]
        check = run_restic(str(repository_path), ["check"])
        assert check.returncode != 0
        assert "locked" in check.err
        assert str(os.getpid()) in check.err  # restic decoded our lock document
    assert lock_file_names(repository.backend) == set()
    check = run_restic(str(repository_path), ["check"])
    assert check.returncode == 0, check.err


def test_restic_lock_blocks_an_exclusive_lock_with_owner_and_age(
    repository: Repository, repository_path: Path, restic_binary: str
) -> None:
    """The engine side of what `lockstep repo forget` meets (tests/cli/test_unlock_cli.py runs the command)."""
    with restic_backup_holding_lock(repository_path) as (restic, restic_lock_id):
        with pytest.raises(RepositoryLocked) as raised, locked(repository, exclusive=True):
            pass
        message = str(raised.value)
        assert raised.value.exit_code == 4  # ExitCode.LOCKED: part of the API
        assert restic_lock_id[:8] in message
        assert f"@{socket.gethostname()}" in message
        assert f"PID {restic.pid}," in message
        assert " s old" in message
        assert "lockstep repo unlock" in message
        # restic's backup lock is shared, so a shared lock coexists with it.
        with locked(repository, exclusive=False):
            assert len(lock_file_names(repository.backend)) == 2
        assert lock_file_names(repository.backend) == {restic_lock_id}
    assert lock_file_names(repository.backend) == set()


def test_restic_unlock_removes_the_lock_of_a_killed_lockstep_process(
    repository: Repository, repository_path: Path, restic_binary: str
) -> None:
    with lock_holder(str(repository_path), exclusive=False, seconds=600) as (holder, lock_id):
        kept = run_restic(str(repository_path), ["unlock"])
        assert kept.returncode == 0, kept.err
        assert lock_file_names(repository.backend) == {lock_id}  # alive: restic keeps it
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert lock_file_names(repository.backend) == {lock_id}  # a crash leaves the lock behind
    (left,) = list_locks(repository)
    assert left.is_stale()
    unlocked = run_restic(str(repository_path), ["unlock"])
    assert unlocked.returncode == 0, unlocked.err
    assert lock_file_names(repository.backend) == set()


def test_restic_unlock_removes_an_old_lockstep_lock_from_another_host(
    repository: Repository, repository_path: Path, restic_binary: str
) -> None:
    fresh = write_lock(repository, pid=4242, hostname="elsewhere.example")
    old = write_lock(repository, pid=4242, hostname="elsewhere.example", age_seconds=31 * 60)
    unlocked = run_restic(str(repository_path), ["unlock"])
    assert unlocked.returncode == 0, unlocked.err
    assert lock_file_names(repository.backend) == {fresh}
    assert old not in lock_file_names(repository.backend)


# --- shared and exclusive ----------------------------------------------------------------------


def test_shared_locks_coexist_and_keep_out_an_exclusive_one(repository: Repository) -> None:
    with locked(repository) as first, locked(repository) as second:
        assert first.lock_id != second.lock_id
        assert lock_file_names(repository.backend) == {first.lock_id, second.lock_id}
        assert [lock.exclusive for lock in list_locks(repository)] == [False, False]
        with pytest.raises(RepositoryLocked), locked(repository, exclusive=True):
            pass
        assert lock_file_names(repository.backend) == {first.lock_id, second.lock_id}
    assert lock_file_names(repository.backend) == set()
    with locked(repository, exclusive=True) as exclusive:
        assert [lock.exclusive for lock in list_locks(repository)] == [True]
        with pytest.raises(RepositoryLocked), locked(repository):
            pass
        assert lock_file_names(repository.backend) == {exclusive.lock_id}


def test_lock_is_released_when_the_block_raises(repository: Repository) -> None:
    with pytest.raises(ZeroDivisionError), locked(repository, exclusive=True):
        assert len(lock_file_names(repository.backend)) == 1
        _ = 1 / 0
    assert lock_file_names(repository.backend) == set()


# --- stale locks -----------------------------------------------------------------------------


def test_lock_of_a_dead_process_on_this_host_is_stale_and_a_live_one_is_not(repository: Repository) -> None:
    dead = write_lock(repository, pid=dead_pid())
    live = write_lock(repository, pid=os.getpid())
    state = {lock.id: lock.is_stale() for lock in list_locks(repository)}
    assert state == {dead: True, live: False}
    assert "(stale)" in next(lock for lock in list_locks(repository) if lock.id == dead).describe()

    removed = remove_locks(repository)
    assert [lock.id for lock in removed] == [dead]
    assert lock_file_names(repository.backend) == {live}


def test_lock_older_than_30_minutes_is_stale_even_if_its_process_lives(repository: Repository) -> None:
    old = write_lock(repository, pid=os.getpid(), age_seconds=31 * 60)
    recent = write_lock(repository, pid=os.getpid(), age_seconds=29 * 60)
    foreign = write_lock(repository, pid=1, hostname="elsewhere.example")  # cannot judge its PID
    state = {lock.id: lock.is_stale() for lock in list_locks(repository)}
    assert state == {old: True, recent: False, foreign: False}
    old_lock = next(lock for lock in list_locks(repository) if lock.id == old)
    assert "31 min old (stale)" in old_lock.describe()


def test_stale_locks_still_block_until_removed(repository: Repository) -> None:
    """As in restic: staleness is for `unlock` to judge, never a reason to walk past a lock."""
    write_lock(repository, pid=dead_pid(), exclusive=True)
    with pytest.raises(RepositoryLocked) as raised, locked(repository):
        pass
    assert "(stale)" in str(raised.value)
    remove_locks(repository)
    with locked(repository):
        pass


def test_lock_with_an_unreadable_time_counts_as_stale(repository: Repository) -> None:
    """A foreign writer's odd time must not crash lock handling; restic reads it as ancient."""
    odd = write_lock(repository, pid=os.getpid(), time_text="yesterday-ish")
    (lock,) = list_locks(repository)
    assert lock.is_stale()
    assert "unknown time" in lock.describe()
    assert [removed.id for removed in remove_locks(repository)] == [odd]


def test_remove_all_removes_live_locks_too(repository: Repository) -> None:
    with locked(repository) as held:
        removed = remove_locks(repository, remove_all=True)
        assert [lock.id for lock in removed] == [held.lock_id]
        assert lock_file_names(repository.backend) == set()


# --- refresh -----------------------------------------------------------------------------------


def test_refresh_writes_a_new_lock_file_and_removes_the_old_one(repository: Repository) -> None:
    with locked(repository) as lock:
        first_id = lock.lock_id
        (first,) = list_locks(repository)
        time.sleep(0.01)
        lock.refresh()
        assert lock.lock_id != first_id
        assert lock_file_names(repository.backend) == {lock.lock_id}
        (second,) = list_locks(repository)
        assert parse_time_ns(second.time) > parse_time_ns(first.time)
        assert (second.pid, second.exclusive) == (os.getpid(), False)
    assert lock_file_names(repository.backend) == set()


def test_lock_refreshes_itself_while_held(repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "REFRESH_EVERY_SECONDS", 0.05)
    with locked(repository, exclusive=True) as lock:
        seen = {lock.lock_id}
        deadline = time.monotonic() + 20
        while len(seen) < 5:
            assert time.monotonic() < deadline, f"only {len(seen)} lock IDs seen"
            # Between writing the new file and removing the old, two exist for a moment; outside
            # a refresh there is exactly one, and it is the lock's current ID.
            with lock._mutex:
                assert lock_file_names(repository.backend) == {lock.lock_id}
                seen.add(lock.lock_id)
            time.sleep(0.02)
    assert lock_file_names(repository.backend) == set()


class FlakyLockStorage:
    """Delegates to a backend, but fails the next `failures` lock writes (a network blip)."""

    def __init__(self, backend: Backend, failures: int) -> None:
        self.backend = backend
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def save(self, file_type: FileType, name: str, data: bytes) -> None:
        if file_type is FileType.LOCK and self.failures > 0:
            self.failures -= 1
            raise StorageError("simulated network failure")
        self.backend.save(file_type, name, data)


def test_a_failed_refresh_is_retried_not_fatal(
    repository: Repository, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    flaky = FlakyLockStorage(repository.backend, failures=0)
    monkeypatch.setattr(repository, "backend", flaky)
    monkeypatch.setattr(locks, "REFRESH_EVERY_SECONDS", 0.05)
    with locked(repository) as lock:
        with lock._mutex:
            first_id = lock.lock_id
            flaky.failures = 2
        deadline = time.monotonic() + 20
        while flaky.failures or lock.lock_id == first_id:
            assert time.monotonic() < deadline, "the lock was never refreshed after the failures"
            time.sleep(0.02)
        assert lock._thread is not None and lock._thread.is_alive()
    assert lock_file_names(flaky.backend) == set()
    assert "Traceback" not in capfd.readouterr().err


# --- waiting -----------------------------------------------------------------------------------


def test_acquire_waits_for_a_lock_released_within_the_wait(repository: Repository) -> None:
    """The whole wait counts: the lock goes away after 3.5 s, between the back-off steps (1, 2, 4 s)."""
    other = write_lock(repository, pid=1, hostname="elsewhere.example", exclusive=True)
    timer = threading.Timer(3.5, repository.backend.remove, (FileType.LOCK, other))
    timer.start()
    started = time.monotonic()
    try:
        with locked(repository, wait_seconds=6) as lock:
            waited = time.monotonic() - started
            assert lock_file_names(repository.backend) == {lock.lock_id}
    finally:
        timer.cancel()
    assert 3.5 <= waited < 8


def test_acquire_gives_up_when_the_wait_is_over(repository: Repository) -> None:
    write_lock(repository, pid=1, hostname="elsewhere.example", exclusive=True)
    started = time.monotonic()
    with pytest.raises(RepositoryLocked) as raised, locked(repository, wait_seconds=1.5):
        pass
    assert 1.5 <= time.monotonic() - started < 4
    assert "exclusive lock" in str(raised.value)
    assert "someone@elsewhere.example PID 1," in str(raised.value)


def test_a_lock_held_by_another_lockstep_process_blocks_until_released(
    repository: Repository, repository_path: Path
) -> None:
    with lock_holder(str(repository_path), exclusive=True, seconds=2) as (holder, holder_lock_id):
        with pytest.raises(RepositoryLocked) as raised, locked(repository):
            pass
        assert f"PID {holder.pid}," in str(raised.value)
        assert holder_lock_id[:8] in str(raised.value)
        lock = RepositoryLock(repository, exclusive=False)
        lock.acquire(wait_seconds=30)
        try:
            assert holder.wait(timeout=30) == 0
        finally:
            lock.release()
    assert lock_file_names(repository.backend) == set()


# --- the re-check in the background (backups) ---------------------------------------------------


def test_deferred_recheck_returns_at_once_and_lets_the_writer_commit(repository: Repository) -> None:
    started = time.monotonic()
    with locked(repository, defer_recheck=True) as lock:
        assert time.monotonic() - started < locks.RECHECK_DELAY_SECONDS
        assert lock_file_names(repository.backend) == {lock.lock_id}
        repository.save_blob(BlobType.DATA, b"some data")
        repository.flush()  # waits for the re-check, which finds no competitor
        assert time.monotonic() - started >= locks.RECHECK_DELAY_SECONDS
        assert len(list(repository.backend.list(FileType.INDEX))) == 1
    assert lock_file_names(repository.backend) == set()


def test_deferred_recheck_still_refuses_a_repository_locked_before(repository: Repository) -> None:
    write_lock(repository, pid=1, hostname="elsewhere.example", exclusive=True)
    with pytest.raises(RepositoryLocked), locked(repository, defer_recheck=True):
        pass


def test_exclusive_lock_found_by_the_deferred_recheck_stops_the_commit(repository: Repository) -> None:
    """A competitor that wrote its exclusive lock just after our first look: the backup has begun
    writing packs, but no index or snapshot may name them, and the backup action removes them."""
    repository.pack_size = 256 * 1024
    with pytest.raises(RepositoryLocked), locked(repository, defer_recheck=True):
        write_lock(repository, pid=1, hostname="elsewhere.example", exclusive=True)
        try:
            Archiver(repository).backup_stream(io.BytesIO(os.urandom(3 << 20)), "db.sql")
        except BaseException:
            repository.discard_unindexed_packs()  # what the backup action does
            raise
    assert list(repository.backend.list(FileType.INDEX)) == []
    assert list(repository.backend.list(FileType.SNAPSHOT)) == []
    assert list(repository.backend.list(FileType.PACK)) == []
    assert len(lock_file_names(repository.backend)) == 1  # only the competitor's


def test_deferred_recheck_with_a_wait_falls_back_to_waiting_first(repository: Repository) -> None:
    started = time.monotonic()
    with locked(repository, wait_seconds=5, defer_recheck=True) as lock:
        assert time.monotonic() - started >= locks.RECHECK_DELAY_SECONDS
        assert lock_file_names(repository.backend) == {lock.lock_id}
