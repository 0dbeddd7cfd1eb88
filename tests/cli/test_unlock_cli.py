"""Locks as users meet them: exit code 4, `repo unlock`, `--lock-wait`, and restic's locks."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_lockstep
from tests.repository.test_locks import (
    dead_pid,
    lock_file_names,
    lock_holder,
    restic_backup_holding_lock,
    write_lock,
)


@pytest.fixture
def repository(repository_env: dict[str, str]) -> Iterator[Repository]:
    """A repository created by the CLI, also opened in this process to hold or plant locks."""
    created = run_lockstep(["repo", "init"], env=repository_env)
    assert created.returncode == 0, created.err
    opened = Repository.open(LocalBackend(repository_env["LOCKSTEP_REPOSITORY"]), TEST_PASSWORD)
    yield opened
    opened.close()


def snapshot_count(environment: dict[str, str]) -> int:
    listed = run_lockstep(["repo", "snapshots", "--json"], env=environment)
    assert listed.returncode == 0, listed.err
    return len(json.loads(listed.out))


def test_unlock_removes_stale_locks_and_keeps_live_ones(repository: Repository, repository_env: dict[str, str]) -> None:
    dead = write_lock(repository, pid=dead_pid())
    old = write_lock(repository, pid=os.getpid(), age_seconds=31 * 60)
    live = write_lock(repository, pid=os.getpid())
    foreign = write_lock(repository, pid=1, hostname="elsewhere.example")

    result = run_lockstep(["repo", "unlock"], env=repository_env)
    assert result.returncode == 0, result.err
    assert lock_file_names(repository.backend) == {live, foreign}
    removed_lines = [line for line in result.out.splitlines() if line.startswith("removed")]
    assert sorted(line.split()[3] for line in removed_lines) == sorted([dead[:8], old[:8]])
    assert all("(stale)" in line for line in removed_lines)
    assert f"still held: shared lock {live[:8]}" in result.out
    assert f"still held: shared lock {foreign[:8]}" in result.out

    again = run_lockstep(["repo", "unlock", "--json"], env=repository_env)
    assert again.returncode == 0, again.err
    document = json.loads(again.out)
    assert document["removed"] == []
    assert len(document["remaining"]) == 2

    everything = run_lockstep(["repo", "unlock", "--remove-all", "--json"], env=repository_env)
    assert everything.returncode == 0, everything.err
    assert sorted(json.loads(everything.out)["removed"]) == sorted([live, foreign])
    assert lock_file_names(repository.backend) == set()


def test_locked_repository_exits_4_and_suggests_unlock(repository: Repository, repository_env: dict[str, str]) -> None:
    with locked(repository, exclusive=True) as lock:
        assert lock.lock_id is not None
        blocked = run_lockstep(["repo", "backup", "--stdin"], env=repository_env, input=b"data\n")
        assert blocked.returncode == 4  # ExitCode.LOCKED: part of the API
        assert "is locked" in blocked.err
        assert f"exclusive lock {lock.lock_id[:8]}" in blocked.err
        assert f"@{socket.gethostname()} PID {os.getpid()}," in blocked.err
        assert "`lockstep repo unlock`" in blocked.err

        as_json = run_lockstep(["repo", "backup", "--stdin", "--json"], env=repository_env, input=b"data\n")
        assert as_json.returncode == ExitCode.LOCKED
        assert json.loads(as_json.out.splitlines()[-1])["exit_code"] == ExitCode.LOCKED
        assert lock_file_names(repository.backend) == {lock.lock_id}  # the failed commands left nothing
    assert snapshot_count(repository_env) == 0


def test_shared_locks_of_two_processes_coexist(repository: Repository, repository_env: dict[str, str]) -> None:
    with locked(repository) as lock:
        backed_up = run_lockstep(["repo", "backup", "--stdin"], env=repository_env, input=b"data\n")
        assert backed_up.returncode == 0, backed_up.err
        assert lock_file_names(repository.backend) == {lock.lock_id}
    assert snapshot_count(repository_env) == 1


def test_lock_wait_waits_for_another_process_to_release(repository: Repository, repository_env: dict[str, str]) -> None:
    location = repository_env["LOCKSTEP_REPOSITORY"]
    with lock_holder(location, exclusive=True, seconds=3) as (holder, holder_lock_id):
        started = time.monotonic()
        waited = run_lockstep(
            ["repo", "backup", "--stdin", "--lock-wait", "30"], env=repository_env, input=b"waited for\n"
        )
        elapsed = time.monotonic() - started
        assert waited.returncode == 0, waited.err
        assert holder.wait(timeout=30) == 0
    assert elapsed >= 2  # it really waited for the holder, which released after 3 s
    assert holder_lock_id not in lock_file_names(repository.backend)
    assert lock_file_names(repository.backend) == set()
    assert snapshot_count(repository_env) == 1


def test_lock_wait_gives_up_with_exit_4(repository: Repository, repository_env: dict[str, str]) -> None:
    with locked(repository, exclusive=True):
        started = time.monotonic()
        blocked = run_lockstep(["repo", "backup", "--stdin", "--lock-wait", "1.5"], env=repository_env, input=b"x")
        assert time.monotonic() - started >= 1.5
        assert blocked.returncode == ExitCode.LOCKED, blocked.err


def test_lock_wait_takes_a_duration_as_deploy_s_does(repository: Repository, repository_env: dict[str, str]) -> None:
    """`deploy --lock-wait 5m` and the lock error's "wait with --lock-wait DURATION" taught a
    duration; the repo commands refused one ("'5m' is not a valid float")."""
    with locked(repository, exclusive=True):
        started = time.monotonic()
        blocked = run_lockstep(["repo", "backup", "--stdin", "--lock-wait", "1s"], env=repository_env, input=b"x")
        assert time.monotonic() - started >= 1
        assert blocked.returncode == ExitCode.LOCKED, blocked.err
    bad = run_lockstep(["repo", "snapshots", "--lock-wait", "soon"], env=repository_env)
    assert bad.returncode == ExitCode.USAGE and "not a duration" in bad.err


def test_restic_lock_blocks_forget_with_owner_pid_and_age(
    repository: Repository, repository_env: dict[str, str], restic_binary: str
) -> None:
    path = Path(repository_env["LOCKSTEP_REPOSITORY"])
    with restic_backup_holding_lock(path) as (restic, restic_lock_id):
        blocked = run_lockstep(["repo", "forget", "--keep-last", "1"], env=repository_env)
        assert blocked.returncode == ExitCode.LOCKED, blocked.err
        assert f"shared lock {restic_lock_id[:8]}" in blocked.err
        assert f"@{socket.gethostname()} PID {restic.pid}," in blocked.err
        assert " s old" in blocked.err
        assert "`lockstep repo unlock`" in blocked.err
    assert snapshot_count(repository_env) == 1  # restic's backup finished undisturbed
    forgotten = run_lockstep(["repo", "forget", "--keep-last", "1"], env=repository_env)
    assert forgotten.returncode == 0, forgotten.err


def test_unlock_remove_all_also_removes_unreadable_lock_files(
    repository: Repository, repository_env: dict[str, str], restic_binary: str
) -> None:
    """A damaged lock file (here a real restic lock with one bit flipped) and an empty one are
    ignored when locks are checked; `unlock --remove-all` used to leave them for ever and say
    nothing was left. restic's `unlock --remove-all` removes them, and so must lockstep's."""
    locks_directory = Path(repository_env["LOCKSTEP_REPOSITORY"]) / "locks"
    with restic_backup_holding_lock(Path(repository_env["LOCKSTEP_REPOSITORY"])):
        # The helper may see restic's temporary file before the rename: wait for the lock itself.
        deadline = time.monotonic() + 30
        while not (names := [name for name in os.listdir(locks_directory) if len(name) == 64]):
            assert time.monotonic() < deadline, "restic's lock never appeared"
            time.sleep(0.05)
        (lock_id,) = names
        content = bytearray((locks_directory / lock_id).read_bytes())
    content[20] ^= 0x10
    assert not (locks_directory / lock_id).exists(), "restic did not remove its lock"
    (locks_directory / lock_id).write_bytes(bytes(content))  # as if restic had been killed
    (locks_directory / ("0" * 64)).write_bytes(b"")

    result = run_lockstep(["repo", "unlock", "--remove-all", "--json"], env=repository_env)
    assert result.returncode == 0, result.err
    assert sorted(json.loads(result.out)["removed"]) == sorted([lock_id, "0" * 64])
    assert os.listdir(locks_directory) == []
