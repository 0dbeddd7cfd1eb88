"""The environment lock against real repositories (local and S3) and real competing processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from lockstep.errors import UsageError
from lockstep.exit_codes import ExitCode
from lockstep.pipeline.environment_lock import (
    EnvironmentLock,
    EnvironmentLocked,
    EnvironmentLockLost,
    LockHolder,
    break_lock,
    current_process_space,
    list_locked_environments,
    lock_scope,
    now_utc,
    read_holder,
    read_old_key_holder,
)
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD

PROJECT = "shop"  # the project whose locks these are (the deployer script's too)

# A deployer in its own process. argv: location, environment, deploy ID, mode, start file ("-" for
# none), wait seconds, stale_after seconds. It prints "won {...}" or "lost <message>" on one line.
# Modes: "hold" keeps the lock until stdin closes; "watch" keeps it until the heartbeat finds it
# lost, then prints "noticed-loss"; "once" releases at once.
DEPLOYER_SCRIPT = r"""
import json, os, sys, time
from lockstep.pipeline.environment_lock import EnvironmentLock, EnvironmentLocked, LockHolder
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend

location, environment, deploy_id, mode, start_file = sys.argv[1:6]
wait, stale_after = float(sys.argv[6]), float(sys.argv[7])
repository = Repository.open(open_backend(location), os.environ["LOCKSTEP_TEST_PASSWORD"])
lock = EnvironmentLock(DocumentStore(repository), "shop", environment, stale_after=stale_after, heartbeat_interval=0.2)
print("ready", flush=True)
while start_file != "-" and not os.path.exists(start_file):
    time.sleep(0.002)
recovered = []
try:
    lock.acquire(LockHolder.for_this_process(deploy_id, environment, message="child"), wait=wait,
                 on_stale=recovered.append)
except EnvironmentLocked as error:
    print("lost " + error.message, flush=True)
    sys.exit(0)
print("won " + json.dumps({"recovered": [holder.deploy_id for holder in recovered]}), flush=True)
if mode == "hold":
    sys.stdin.read()
elif mode == "watch":
    while not lock.lost:
        time.sleep(0.05)
    print("noticed-loss", flush=True)
    sys.exit(0)
lock.release()
print("released", flush=True)
"""


class Deployer:
    """One child deployer process and its output lines (read by a thread: a select() on the pipe
    would miss lines already sitting in the reader's buffer)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:  # until the child exits, then closed here
            for line in self.process.stdout:
                self._lines.put(line.strip())

    def line(self, timeout: float = 60.0) -> str:
        """The next line the child prints; fails the test if none comes within `timeout`."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"deployer {self.process.pid} printed nothing for {timeout} s")

    def finish(self) -> None:
        """Close its stdin (a holder releases) and wait for it to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def kill(self) -> None:
        """kill -9, and reap it so its PID is really gone (a zombie still answers kill 0)."""
        self.process.kill()
        self.process.wait(timeout=60)


StartDeployer = Callable[..., Deployer]


@pytest.fixture
def start_deployer() -> Iterator[StartDeployer]:
    """Start deployer processes; every one still running at the end is killed and reaped."""
    started: list[subprocess.Popen[str]] = []

    def start(
        location: str,
        deploy_id: str,
        *,
        environment: str = "production",
        mode: str = "hold",
        start_file: Path | None = None,
        wait: float = 0.0,
        stale_after: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> Deployer:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                DEPLOYER_SCRIPT,
                location,
                environment,
                deploy_id,
                mode,
                str(start_file) if start_file else "-",
                str(wait),
                str(stale_after),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "LOCKSTEP_TEST_PASSWORD": TEST_PASSWORD},
        )
        started.append(process)
        deployer = Deployer(process)
        assert deployer.line() == "ready"
        return deployer

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
            if process.stdin is not None:
                process.stdin.close()


@pytest.fixture
def location(tmp_path: Path) -> str:
    path = tmp_path / "repository"
    Repository.init(LocalBackend(path), TEST_PASSWORD).close()
    return str(path)


@pytest.fixture
def store(location: str) -> Iterator[DocumentStore]:
    repository = Repository.open(open_backend(location), TEST_PASSWORD)
    try:
        yield DocumentStore(repository)
    finally:
        repository.close()


def holder_for(deploy_id: str, environment: str = "production", message: str | None = None) -> LockHolder:
    return LockHolder.for_this_process(deploy_id, environment, operation="deploy", message=message)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def race(
    start_deployer: StartDeployer, location: str, tmp_path: Path, count: int, **options: object
) -> tuple[list[Deployer], list[str]]:
    """Start `count` deployers, release them at once, and return them with their outcome lines."""
    start_file = tmp_path / f"go-{time.monotonic_ns()}"
    deployers = [
        start_deployer(location, f"racer-{number}", start_file=start_file, **options) for number in range(count)
    ]
    start_file.write_text("go")
    return deployers, [deployer.line() for deployer in deployers]


def test_acquire_then_release_leaves_no_lock(store: DocumentStore, location: str) -> None:
    """The holder is readable by others while held (encrypted on disk), and gone after release."""
    lock = EnvironmentLock(store, PROJECT, "production")
    lock.acquire(holder_for("20261122_050000_abc1234", message="ship the distinctive-message"))
    try:
        current = lock.current()
        assert current is not None
        assert current.deploy_id == "20261122_050000_abc1234"
        assert current.pid == os.getpid() and current.host == socket.gethostname()
        assert current.lock_id and current.lock_id == lock.holder.lock_id  # type: ignore[union-attr]
        assert current.process_space and current.process_space == current_process_space()
        raw = (Path(location) / "lockstep" / "projects" / PROJECT / "locks" / "production").read_bytes()
        assert b"distinctive-message" not in raw
        assert lock.is_stale(current) == (False, lock.is_stale(current)[1])
    finally:
        lock.release()
    assert lock.current() is None
    lock.release()  # idempotent
    assert not (Path(location) / "lockstep" / "projects" / PROJECT / "locks" / "production").exists()


def test_context_manager_releases_on_error(store: DocumentStore) -> None:
    """`with lock.acquire(...)` gives the lock back even when the body fails."""
    lock = EnvironmentLock(store, PROJECT, "staging")
    with pytest.raises(RuntimeError), lock.acquire(holder_for("d1", "staging")):
        raise RuntimeError("deploy step failed")
    assert lock.current() is None


def test_second_deploy_is_refused_with_who_and_since(store: DocumentStore) -> None:
    """The refusal names the deploy, user, host, PID, start time, message, and says what to do."""
    first = EnvironmentLock(store, PROJECT, "production")
    first.acquire(holder_for("20261122_050000_abc1234", message="release 2.0"))
    try:
        second = EnvironmentLock(store, PROJECT, "production")
        with pytest.raises(EnvironmentLocked) as refused:
            second.acquire(holder_for("20261122_050500_def5678"))
        error = refused.value
        assert error.exit_code == ExitCode.LOCKED
        assert error.holder is not None and error.holder.deploy_id == "20261122_050000_abc1234"
        for expected in ("20261122_050000_abc1234", socket.gethostname(), f"PID {os.getpid()}", "since", "release 2.0"):
            assert expected in error.message
        assert error.hint is not None
        for expected in ("--lock-wait", "lockstep lock release --env production", "--force"):
            assert expected in error.hint
        started = time.monotonic()
        with pytest.raises(EnvironmentLocked, match=r"waited 0\.5 s"):
            second.acquire(holder_for("20261122_050500_def5678"), wait=0.5)
        assert 0.45 <= time.monotonic() - started < 10
        other_environment = EnvironmentLock(store, PROJECT, "staging")
        other_environment.acquire(holder_for("s1", "staging"))  # environments are independent
        other_environment.release()
    finally:
        first.release()


def test_environment_names_are_validated(store: DocumentStore) -> None:
    """Names become repository paths: only letters, digits, '-' and '_' are accepted."""
    for bad in ("", "../locks", "a/b", "prod.1", ".hidden", "spa ce"):
        with pytest.raises(UsageError):
            EnvironmentLock(store, PROJECT, bad)
    EnvironmentLock(store, PROJECT, "Prod-2_eu")


def test_projects_sharing_a_repository_have_locks_of_their_own(store: DocumentStore) -> None:
    """Two projects' `production` are two locks: one held does not block the other, and --force
    on one never takes the other's."""
    shop = EnvironmentLock(store, "shop", "production")
    shop.acquire(holder_for("shop-deploy"))
    try:
        blog = EnvironmentLock(store, "blog", "production")
        blog.acquire(holder_for("blog-deploy"), force=True)
        try:
            assert shop.heartbeat() and not shop.lost  # force took nothing of shop's
            held = [read_holder(store, project, "production") for project in ("shop", "blog")]
            assert [(holder.deploy_id, holder.project) for holder in held if holder] == [
                ("shop-deploy", "shop"),
                ("blog-deploy", "blog"),
            ]
            assert list_locked_environments(store, "blog") == ["production"]
            assert break_lock(store, "blog", "production") is not None
            assert shop.heartbeat()
        finally:
            blog.release()
    finally:
        shop.release()
    with pytest.raises(UsageError):
        EnvironmentLock(store, "", "production")


def test_a_project_named_after_any_directory_has_a_lock_of_its_own(store: DocumentStore) -> None:
    """The default project name is the config directory's, which may be anything ("My App",
    "café", ".."): each gets a key of its own inside projects/, and none is refused (a deploy
    refused "not a valid project name" for a directory with a space in its name)."""
    names = ("My App", "café", "..", ".hidden", "../shop", "a/b", "shop")
    assert len({lock_scope(name) for name in names}) == len(names)
    assert all(lock_scope(name).startswith("projects/") and lock_scope(name).count("/") == 2 for name in names)
    locks = [EnvironmentLock(store, name, "production") for name in names]
    try:
        for number, lock in enumerate(locks):
            lock.acquire(holder_for(f"deploy-{number}"))
        for number, name in enumerate(names):
            holder = read_holder(store, name, "production")
            assert holder is not None and holder.deploy_id == f"deploy-{number}" and holder.project == name
    finally:
        for lock in locks:
            lock.release()
    assert all(read_holder(store, name, "production") is None for name in names)


def _old_lockstep_lock(store: DocumentStore, deploy_id: str, pid: int | None = None, age: float = 0.0) -> None:
    """The lock an older lockstep takes: at locks/ENVIRONMENT, its document without a project."""
    moment = now_utc() - timedelta(seconds=age)
    holder = replace(holder_for(deploy_id), lock_id="old-lock-id", acquired_at=moment, heartbeat_at=moment)
    document = holder.to_document()
    del document["project"]
    if pid is not None:
        document["pid"] = pid
    assert store.create("locks/production", document)


def test_a_live_lock_of_an_older_lockstep_is_waited_for_and_never_forced(store: DocumentStore) -> None:
    """Under the old key a lock may be any project's: every project's deploy of that environment
    name waits for it while it lives, --force included, and gives its own lock back meanwhile."""
    _old_lockstep_lock(store, "old-deploy")  # this very process: alive
    for force in (False, True):
        lock = EnvironmentLock(store, PROJECT, "production")
        with pytest.raises(EnvironmentLocked) as refused:
            lock.acquire(holder_for("new-deploy"), wait=0.3, force=force)
        assert "by an older lockstep" in refused.value.message and "old-deploy" in refused.value.message
        assert refused.value.hint is not None and "--force does not take it" in refused.value.hint
        assert "lockstep lock release --env production" in refused.value.hint
        assert lock.current() is None and lock.holder is None  # its own lock given back
    assert read_old_key_holder(store, "production") is not None  # left alone
    assert list_locked_environments(store, PROJECT) == ["production"]
    # Once the older deploy is over, the lock is taken at once.
    store.remove("locks/production")
    lock = EnvironmentLock(store, PROJECT, "production")
    with lock.acquire(holder_for("new-deploy")):
        assert lock.current() is not None


def test_a_stale_lock_of_an_older_lockstep_is_passed_over_not_removed(store: DocumentStore) -> None:
    """A dead older deploy's lock does not block (as a stale lock would not), and is left for
    `lockstep lock release`: an older lockstep may be taking it over at that moment."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _old_lockstep_lock(store, "old-dead-deploy", pid=int(dead.stdout))
    lock = EnvironmentLock(store, PROJECT, "production")
    with lock.acquire(holder_for("new-deploy")):
        current = lock.current()
        assert current is not None and current.deploy_id == "new-deploy"
    old = read_old_key_holder(store, "production")
    assert old is not None and old.deploy_id == "old-dead-deploy"
    silent = EnvironmentLock(store, PROJECT, "production", stale_after=5)
    store.remove("locks/production")
    _old_lockstep_lock(store, "old-silent-deploy", age=30)  # alive here, but silent for 30 s
    with silent.acquire(holder_for("new-deploy")):
        pass


def test_waits_until_another_process_releases(
    start_deployer: StartDeployer, store: DocumentStore, location: str
) -> None:
    """With a wait, the second deployer gets the lock as soon as the first process lets go."""
    holder = start_deployer(location, "first")
    assert holder.line().startswith("won")
    threading.Timer(1.0, holder.finish).start()
    lock = EnvironmentLock(store, PROJECT, "production")
    started = time.monotonic()
    lock.acquire(holder_for("second"), wait=60)
    try:
        assert 0.5 < time.monotonic() - started < 60
        current = lock.current()
        assert current is not None and current.deploy_id == "second"
    finally:
        lock.release()


def test_lock_of_a_killed_process_is_recovered_with_a_warning(
    start_deployer: StartDeployer, store: DocumentStore, location: str
) -> None:
    """kill -9 leaves the lock behind; the next deployer on this host sees the PID is dead and takes it."""
    victim = start_deployer(location, "killed-deploy")
    assert victim.line().startswith("won")
    lock = EnvironmentLock(store, PROJECT, "production")
    with pytest.raises(EnvironmentLocked):
        lock.acquire(holder_for("next"))  # alive: refused
    victim_pid = victim.process.pid
    victim.kill()
    left = lock.current()
    assert left is not None and left.pid == victim_pid
    stale, reason = lock.is_stale(left)
    assert stale and f"process {victim_pid} no longer runs" in reason
    warned: list[LockHolder] = []
    lock.acquire(holder_for("next"), on_stale=warned.append)
    try:
        assert [holder.deploy_id for holder in warned] == ["killed-deploy"]
        current = lock.current()
        assert current is not None and current.deploy_id == "next"
    finally:
        lock.release()


def test_dead_pid_counts_only_in_our_own_process_space(store: DocumentStore) -> None:
    """Same host name but another container (PID namespace): a PID missing here proves nothing."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(timeout=60)
    gone = replace(holder_for("container-deploy"), pid=finished.pid)
    lock = EnvironmentLock(store, PROJECT, "production")
    assert lock.is_stale(replace(gone, process_space="another-boot/4026531836"))[0] is False
    assert lock.is_stale(replace(gone, process_space=current_process_space()))[0] is True
    assert lock.is_stale(replace(gone, process_space=""))[0] is True  # written without one: host name decides


def test_silent_holder_on_another_host_goes_stale_after_stale_after(store: DocumentStore) -> None:
    """A holder elsewhere whose PID we cannot check is stale only once its heartbeat is too old."""
    long_ago = now_utc() - timedelta(seconds=30)
    elsewhere = replace(
        holder_for("remote-deploy"), host="another-host.example", pid=1, acquired_at=long_ago, heartbeat_at=long_ago
    )
    remote = {**elsewhere.to_document(), "lock_id": "remote-lock-id"}
    assert store.create(f"projects/{PROJECT}/locks/production", remote)
    patient = EnvironmentLock(store, PROJECT, "production", stale_after=120)
    with pytest.raises(EnvironmentLocked, match="remote-deploy"):
        patient.acquire(holder_for("mine"))
    current = patient.current()
    assert current is not None
    assert patient.is_stale(current)[0] is False
    impatient = EnvironmentLock(store, PROJECT, "production", stale_after=5)
    stale, reason = impatient.is_stale(current)
    assert stale and "no heartbeat for 30 s" in reason
    warned: list[LockHolder] = []
    impatient.acquire(holder_for("mine"), on_stale=warned.append)
    try:
        assert [holder.deploy_id for holder in warned] == ["remote-deploy"]
    finally:
        impatient.release()


def test_heartbeat_keeps_a_live_lock_fresh_and_a_frozen_one_goes_stale(
    start_deployer: StartDeployer, store: DocumentStore, location: str
) -> None:
    """Heartbeats keep the holder alive past stale_after; once it freezes (SIGSTOP) it goes stale
    though its PID exists, is taken over, and the holder notices the loss when it wakes."""
    holder = start_deployer(location, "frozen-deploy", mode="watch")
    assert holder.line().startswith("won")
    lock = EnvironmentLock(store, PROJECT, "production", stale_after=3.0)
    first_look = lock.current()
    assert first_look is not None
    wait_until(
        lambda: (lock.current() or first_look).heartbeat_at > first_look.heartbeat_at + timedelta(seconds=3.2),
        what="heartbeats to carry the lock past stale_after",
    )
    with pytest.raises(EnvironmentLocked):
        lock.acquire(holder_for("mine"))  # still beating: not stale
    os.kill(holder.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: lock.is_stale(lock.current() or first_look)[0], what="the frozen holder to go stale")
        warned: list[LockHolder] = []
        lock.acquire(holder_for("mine"), on_stale=warned.append)
        assert [holder.deploy_id for holder in warned] == ["frozen-deploy"]
    finally:
        os.kill(holder.process.pid, signal.SIGCONT)
    try:
        assert holder.line() == "noticed-loss"
        current = lock.current()
        assert current is not None and current.deploy_id == "mine"  # its last heartbeat did not overwrite ours
        assert lock.heartbeat() and not lock.lost
    finally:
        lock.release()


def test_force_takes_a_live_lock_and_the_holder_finds_out(store: DocumentStore) -> None:
    """force takes a live lock; the old holder's heartbeat sees it, `lost` turns true, and its
    release leaves the new holder's lock alone."""
    victim = EnvironmentLock(store, PROJECT, "production", heartbeat_interval=0.05)
    victim.acquire(holder_for("victim"))
    forcer = EnvironmentLock(store, PROJECT, "production")
    try:
        forcer.acquire(holder_for("forcer"), force=True)
        wait_until(lambda: victim.lost, what="the heartbeat to notice the lost lock")
        with pytest.raises(EnvironmentLockLost, match="forcer"):
            victim.ensure_held()
        victim.release()
        current = forcer.current()
        assert current is not None and current.deploy_id == "forcer"
        forcer.ensure_held()
        assert not forcer.lost
    finally:
        forcer.release()
        victim.release()
    assert forcer.current() is None


def test_break_lock_refuses_a_lock_other_than_the_one_shown(store: DocumentStore) -> None:
    """Release after confirmation removes only the lock the user saw, never one taken meanwhile."""
    lock = EnvironmentLock(store, PROJECT, "production")
    lock.acquire(holder_for("current"))
    with pytest.raises(EnvironmentLocked, match="changed meanwhile"):
        break_lock(store, PROJECT, "production", expected_lock_id="some-older-lock")
    removed = break_lock(store, PROJECT, "production", expected_lock_id=lock.holder.lock_id)  # type: ignore[union-attr]
    assert removed is not None and removed.deploy_id == "current"
    assert not lock.heartbeat() and lock.lost
    assert break_lock(store, PROJECT, "production") is None
    lock.release()


def test_only_one_of_several_processes_takes_a_free_lock(
    start_deployer: StartDeployer, location: str, tmp_path: Path
) -> None:
    """Six processes started together: exactly one wins, the others are told who holds it."""
    _deployers, outcomes = race(start_deployer, location, tmp_path, 6)
    winners = [index for index, outcome in enumerate(outcomes) if outcome.startswith("won")]
    assert len(winners) == 1, outcomes
    winner_id = f"racer-{winners[0]}"
    assert all(winner_id in outcome for outcome in outcomes if outcome.startswith("lost")), outcomes


def test_only_one_of_several_processes_recovers_a_stale_lock(
    start_deployer: StartDeployer, location: str, tmp_path: Path, store: DocumentStore
) -> None:
    """Six processes find the same dead holder's lock at once: exactly one takes it over, and the
    lock ends up theirs (no one removed the winner's fresh lock thinking it was the stale one)."""
    for round_number in range(3):
        victim = start_deployer(location, f"dead-{round_number}")
        assert victim.line().startswith("won")
        victim.kill()
        deployers, outcomes = race(start_deployer, location, tmp_path, 6)
        winners = [index for index, outcome in enumerate(outcomes) if outcome.startswith("won")]
        assert len(winners) == 1, outcomes
        current = EnvironmentLock(store, PROJECT, "production").current()
        assert current is not None and current.deploy_id == f"racer-{winners[0]}"
        for deployer in deployers:
            deployer.kill()  # the winner dies too: next round recovers from it
        assert list(store.list(f"projects/{PROJECT}/lock-takeovers/production")) == []


def test_s3_acquire_refuse_race_and_release(
    s3_env: dict[str, str], start_deployer: StartDeployer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 (moto server), create-if-absent makes the lock exclusive across processes too."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    s3_location = s3_env["LOCKSTEP_REPOSITORY"]
    repository = Repository.init(open_backend(s3_location), TEST_PASSWORD)
    try:
        store = DocumentStore(repository)
        deployers, outcomes = race(start_deployer, s3_location, tmp_path, 4, env=s3_env)
        winners = [index for index, outcome in enumerate(outcomes) if outcome.startswith("won")]
        assert len(winners) == 1, outcomes
        lock = EnvironmentLock(store, PROJECT, "production")
        with pytest.raises(EnvironmentLocked, match=f"racer-{winners[0]}"):
            lock.acquire(holder_for("mine"))
        dead = f"racer-{winners[0]}"
        deployers[winners[0]].kill()
        deployers, outcomes = race(start_deployer, s3_location, tmp_path, 4, env=s3_env)
        winners = [index for index, outcome in enumerate(outcomes) if outcome.startswith("won")]
        assert len(winners) == 1, outcomes
        # The winner recovered the dead lock, or found it just removed by a claimant who then lost.
        assert json.loads(outcomes[winners[0]].removeprefix("won "))["recovered"] in ([dead], [])
        held = lock.current()
        assert held is not None and held.pid == deployers[winners[0]].process.pid
        deployers[winners[0]].finish()
        lock.acquire(holder_for("mine"), wait=30)
        assert lock.heartbeat()
        current = lock.current()
        assert current is not None and current.deploy_id == "mine"
        assert json.dumps(current.to_document())
        lock.release()
        assert lock.current() is None
    finally:
        repository.close()
